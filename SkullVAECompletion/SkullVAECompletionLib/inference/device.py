"""Where and in which precision the model runs: the device choice and the float16 autocast with its check against
float32 (precision "auto")."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ..errors import DeviceError
from ..model.networks import AggregatedVAE, bone_probability
from ..options import DEVICE_CHOICES


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without CUDA raises :class:`DeviceError`."""
    if device not in DEVICE_CHOICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        build = "a CPU-only build" if torch.version.cuda is None else f"a CUDA {torch.version.cuda} build"
        raise DeviceError(
            f"CUDA was requested but no CUDA device is available (PyTorch {torch.__version__} is {build}); "
            "choose device 'auto' or 'cpu'"
        )
    return torch.device("cuda" if device in ("auto", "cuda") and cuda else "cpu")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """float16 autocast on ``device`` for precision "float16"; float32 (no autocast) otherwise."""
    if precision == "float16":
        with torch.autocast(device_type=device.type, dtype=torch.float16):
            yield
    else:
        yield


def half_precision_agreement(model: AggregatedVAE, x: torch.Tensor, mu: torch.Tensor,
                             on_device: Callable[..., Any]) -> float:
    """Dice of the bone decoded in float16 (encoded in float16 too) against float32's, for the skull ``x`` with μ
    ``mu``; 1 when neither has bone. ``on_device`` runs it where the model is (SkullCompleter._on_device)."""
    from ..metrics import dice  # noqa: PLC0415

    def run(inputs: torch.Tensor, latent: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            reference = bone_probability(model.decode(latent)).float().cpu().numpy()[0] > 0.5
            # The device the inputs were moved to: on_device may have fallen back to the CPU.
            with autocast(inputs.device, "float16"):
                half_mu, _ = model.encode(inputs)
                half = bone_probability(model.decode(half_mu)).float().cpu().numpy()[0] > 0.5
        return reference, half

    reference, half = on_device(run, x, mu)
    return dice(half, reference) if reference.any() or half.any() else 1.0
