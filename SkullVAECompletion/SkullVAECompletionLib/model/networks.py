"""Network definitions shared by inference and ``training/``.

Stage 1 is MONAI's ``VarAutoEncoder`` (trained with a large β). Stage 2 is a *decoupled decoder*
trained on the frozen stage-1 encoder's latents. :class:`AggregatedVAE` joins the stage-1 encoder
with the stage-2 decoder; it is what the model bundle stores and what completion runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from monai.networks.nets import VarAutoEncoder
from torch import nn

from ..errors import BundleError, build_config

NUM_CLASSES = 2  # background, bone


@dataclass(frozen=True)
class NetworkConfig:
    """Hyper-parameters of the stage-1 VAE and the decoupled decoder.

    The defaults are the paper's configuration (256×256×128 grid, six stride-2 levels).
    """

    grid: tuple[int, int, int] = (256, 256, 128)
    latent_size: int = 32
    channels: tuple[int, ...] = (32, 64, 64, 128, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2, 2, 2)
    num_res_units: int = 0
    norm: str = "BATCH"
    decoder_norm: str | None = None  # the paper's decoder has ReLU only; "BATCH" trains faster on small data
    num_classes: int = 0  # > 0: a linear defect-class head on μ (trained with stage 1; detection at inference)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if len(self.grid) != 3:
            raise BundleError(f"network grid must have 3 sizes, got {self.grid}")
        if len(self.channels) != len(self.strides):
            raise BundleError(
                f"network config: {len(self.channels)} channels but {len(self.strides)} strides; "
                "give one stride per level"
            )
        factor = math.prod(self.strides)
        if any(g % factor for g in self.grid):
            raise BundleError(
                f"network grid {self.grid} is not divisible by the total stride {factor}; "
                "choose a grid that is a multiple of it"
            )

    @property
    def bottleneck_shape(self) -> tuple[int, int, int]:
        factor = math.prod(self.strides)
        return tuple(g // factor for g in self.grid)  # type: ignore[return-value]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        return build_config(cls, data, "network config")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grid"] = list(self.grid)
        data["channels"] = list(self.channels)
        data["strides"] = list(self.strides)
        return data


def build_stage1_vae(config: NetworkConfig) -> VarAutoEncoder:
    """The stage-1 β-VAE; ``forward`` returns ``(logits, mu, logvar, z)``."""
    return VarAutoEncoder(
        spatial_dims=3,
        in_shape=(1, *config.grid),
        out_channels=NUM_CLASSES,
        latent_size=config.latent_size,
        channels=config.channels,
        strides=config.strides,
        num_res_units=config.num_res_units,
        norm=config.norm,
        use_sigmoid=False,  # raw logits: the losses apply softmax themselves
    )


class DecoupledDecoder(nn.Module):
    """z → 2-class logits: Linear, reshape, then one stride-s transposed convolution per encoder level."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.bottleneck_shape = config.bottleneck_shape
        top = config.channels[-1]
        self.linear = nn.Linear(config.latent_size, top * math.prod(self.bottleneck_shape))
        # Channels mirror the encoder: 256→128→128→64→64→32→2 for the paper's config.
        outs = [*reversed(config.channels[:-1]), NUM_CLASSES]
        ins = [top, *outs[:-1]]
        blocks: list[nn.Module] = []
        for index, (cin, cout, stride) in enumerate(zip(ins, outs, reversed(config.strides), strict=True)):
            # kernel = 2·stride, padding = stride/2 gives an exact ×stride upsampling for even strides.
            kernel, padding = (2 * stride, stride // 2) if stride > 1 else (3, 1)
            blocks.append(nn.ConvTranspose3d(cin, cout, kernel, stride=stride, padding=padding))
            if index < len(outs) - 1:
                if config.decoder_norm:
                    blocks.append(_norm_layer(config.decoder_norm, cout))
                blocks.append(nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.linear(z))
        x = x.view(z.shape[0], self.config.channels[-1], *self.bottleneck_shape)
        return self.blocks(x)


def _norm_layer(name: str, channels: int) -> nn.Module:
    name = name.upper()
    if name == "BATCH":
        return nn.BatchNorm3d(channels)
    if name == "INSTANCE":
        return nn.InstanceNorm3d(channels, affine=True)
    raise BundleError(f"unknown decoder_norm {name!r}; use 'BATCH', 'INSTANCE' or null")


class AggregatedVAE(nn.Module):
    """Stage-1 encoder (its μ, logvar) + the decoupled stage-2 decoder.

    The stage-1 decoder is kept too, so evaluation can compare "stage 1 alone" with the aggregate.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.vae = build_stage1_vae(config)
        self.decoder = DecoupledDecoder(config)
        # A linear head keeps the classes linearly separable in μ, which is what a centroid difference needs.
        self.classifier = nn.Linear(config.latent_size, config.num_classes) if config.num_classes else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Occupancy (B, 1, *grid) in [0, 1] → (μ, log σ²), each (B, latent_size)."""
        return self.vae.encode_forward(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, latent_size) → logits (B, 2, *grid) with the decoupled decoder."""
        return self.decoder(z)

    def decode_stage1(self, z: torch.Tensor) -> torch.Tensor:
        """Latent → logits with the stage-1 VAE's own decoder (for comparisons)."""
        return self.vae.decode_forward(z, use_sigmoid=False)

    def classify(self, mu: torch.Tensor) -> torch.Tensor:
        """Defect-class logits (B, num_classes) of latent means; needs ``num_classes > 0``."""
        if self.classifier is None:
            raise BundleError("this network has no defect-class head (num_classes = 0)")
        return self.classifier(mu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(x)
        return self.decode(mu)


def bone_probability(logits: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the bone class, (B, *grid)."""
    return torch.softmax(logits.float(), dim=1)[:, 1]
