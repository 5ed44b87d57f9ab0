"""Losses, one-epoch loops and latent aggregation of the two-stage (aggregated) β-VAE.

Shared by ``training/train.py`` (the full pipeline) and the test-suite's tiny models, so both train
exactly the same way. Networks come from :mod:`SkullVAECompletionLib.networks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.losses import DiceLoss

from SkullVAECompletionLib.bundle import DEFECT_TYPES
from SkullVAECompletionLib.networks import AggregatedVAE

_dice = DiceLoss(softmax=True, batch=True)


def two_class_target(occupancy: torch.Tensor) -> torch.Tensor:
    """(B, 1, *grid) bone fraction → (B, 2, *grid) soft one-hot (background, bone)."""
    return torch.cat([1.0 - occupancy, occupancy], dim=1)


def dice_loss(logits: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
    return _dice(logits.float(), two_class_target(occupancy.float()))


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) ‖ N(0, I)), summed over latent dimensions, averaged over the batch."""
    return (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)).mean()


def _optimise(loss: torch.Tensor, optimiser: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Backward + step; with a GradScaler (CUDA mixed precision) the loss is scaled and steps may be skipped."""
    optimiser.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimiser.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimiser)
    scaler.update()


def _autocast(device_type: str | None) -> torch.autocast:
    # float16 autocast only where a GradScaler runs too (CUDA); a disabled context elsewhere.
    return torch.autocast(device_type or "cpu", dtype=torch.float16, enabled=device_type == "cuda")


@dataclass
class StepLosses:
    dice: float
    kld: float
    total: float


def stage1_step(
    model: AggregatedVAE,
    batch: torch.Tensor,
    optimiser: torch.optim.Optimizer,
    beta: float,
    dice_weight: float = 80.0,
    scaler: torch.amp.GradScaler | None = None,
    amp_device: str | None = None,
) -> StepLosses:
    """One optimisation step of the stage-1 β-VAE: dice_weight · Dice + β · KLD.

    ``model`` only needs a ``vae`` attribute (so a DistributedDataParallel-wrapped VAE can be passed).
    ``amp_device="cuda"`` runs the forward pass under float16 autocast (use with ``scaler``).
    """
    with _autocast(amp_device):
        logits, mu, logvar, _ = model.vae(batch)
    dice = dice_loss(logits, batch)
    kld = kl_divergence(mu.float(), logvar.float())
    total = dice_weight * dice + beta * kld
    _optimise(total, optimiser, scaler)
    return StepLosses(dice.item(), kld.item(), total.item())


def stage2_step(
    model: AggregatedVAE,
    batch: torch.Tensor,
    optimiser: torch.optim.Optimizer,
    sample_latent: bool = True,
    scaler: torch.amp.GradScaler | None = None,
    amp_device: str | None = None,
) -> StepLosses:
    """One step of the decoupled decoder on the frozen stage-1 encoder (Dice only).

    The reference samples z from the posterior; sampling also regularises the decoder around μ.
    """
    with torch.no_grad():
        mu, logvar = model.encode(batch)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample_latent else mu
    with _autocast(amp_device):
        logits = model.decode(z)
    dice = dice_loss(logits, batch)
    _optimise(dice, optimiser, scaler)
    return StepLosses(dice.item(), 0.0, dice.item())


def freeze_encoder(model: AggregatedVAE) -> list[torch.nn.Parameter]:
    """Freeze stage 1 (eval mode keeps its batch-norm statistics) and return the decoder's parameters."""
    model.vae.eval()
    for parameter in model.vae.parameters():
        parameter.requires_grad_(False)
    return list(model.decoder.parameters())


@torch.no_grad()
def encode_volumes(model: AggregatedVAE, volumes: Iterable[torch.Tensor]) -> np.ndarray:
    """μ of each (1, *grid) or (B, 1, *grid) volume, stacked to (N, latent)."""
    model.eval()
    latents = []
    for volume in volumes:
        batch = volume if volume.dim() == 5 else volume[None]
        latents.append(model.encode(batch.float())[0].cpu().numpy())
    return np.concatenate(latents, axis=0)


def class_centroids(latents: np.ndarray, labels: Sequence[str]) -> dict[str, np.ndarray]:
    labels = np.asarray(labels)
    return {name: latents[labels == name].mean(axis=0) for name in dict.fromkeys(labels.tolist())}


def deviation_vectors(centroids: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """DEV_type = centroid(complete) − centroid(type), for each defect type present."""
    return {t: centroids["complete"] - centroids[t] for t in DEFECT_TYPES if t in centroids}
