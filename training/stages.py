"""Losses, one-epoch loops and latent aggregation of the two-stage (aggregated) β-VAE.

Shared by ``training/train.py`` (the full pipeline) and the test-suite's tiny models, so both train
exactly the same way. Networks come from :mod:`SkullVAECompletionLib.model.networks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from SkullVAECompletionLib.inference.regions import COMPLETE
from SkullVAECompletionLib.model.networks import AggregatedVAE

_dice = DiceLoss(softmax=True, batch=True)


def two_class_target(occupancy: torch.Tensor) -> torch.Tensor:
    """(B, 1, *grid) bone fraction → (B, 2, *grid) soft one-hot (background, bone)."""
    return torch.cat([1.0 - occupancy, occupancy], dim=1)


def dice_loss(logits: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
    return _dice(logits.float(), two_class_target(occupancy.float()))


def defect_band(implant: torch.Tensor) -> torch.Tensor:
    """The defect and a one-voxel rim around it, (B, 1, *grid) in [0, 1]: where the hole must be reproduced."""
    return F.max_pool3d(implant.float(), kernel_size=3, stride=1, padding=1)


def masked_cross_entropy(logits: torch.Tensor, occupancy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the soft two-class target, averaged over the voxels of ``mask`` (0 if empty).

    Dice over the whole skull hardly notices a missing patch of bone, so a model trained on Dice alone
    fills the hole (and the latent never has to carry it); this term makes the defect count.
    """
    log_p = torch.log_softmax(logits.float(), dim=1)
    cross_entropy = -(two_class_target(occupancy.float()) * log_p).sum(dim=1, keepdim=True)
    weight = mask.float()
    return (cross_entropy * weight).sum() / weight.sum().clamp_min(1.0)


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
    defect: float = 0.0  # cross-entropy on the defect band
    classification: float = 0.0  # defect-class cross-entropy of the head on μ
    shift: float = 0.0  # stage 2: Dice of decode(μ + DEV) against the complete skull


@dataclass
class Batch:
    """A training batch: the model input, its defect (implant) and complete skull, and the class indices."""

    input: torch.Tensor  # (B, 1, *grid) bone fraction
    implant: torch.Tensor | None = None  # (B, 1, *grid); zeros for complete skulls
    complete: torch.Tensor | None = None  # (B, 1, *grid)
    class_index: torch.Tensor | None = None  # (B,) int64

    def to(self, device: torch.device) -> Batch:
        tensors = (self.input, self.implant, self.complete, self.class_index)
        return Batch(*(None if t is None else t.to(device, non_blocking=True) for t in tensors))


def as_batch(batch: torch.Tensor | Batch) -> Batch:
    return batch if isinstance(batch, Batch) else Batch(batch)


@dataclass(frozen=True)
class Stage1Weights:
    """Loss weights of stage 1: dice_weight · Dice + β · KLD + defect · CE(band) + classification · CE(class)."""

    beta: float
    dice_weight: float = 80.0
    defect_weight: float = 0.0
    class_weight: float = 0.0


def stage1_step(
    model: AggregatedVAE,
    batch: torch.Tensor | Batch,
    optimiser: torch.optim.Optimizer,
    weights: Stage1Weights,
    scaler: torch.amp.GradScaler | None = None,
    amp_device: str | None = None,
) -> StepLosses:
    """One optimisation step of the stage-1 β-VAE.

    ``model`` needs a ``vae`` attribute (a DistributedDataParallel-wrapped VAE can be passed) and, when
    ``weights.class_weight > 0``, a ``classifier``. ``amp_device="cuda"`` runs the forward pass under
    float16 autocast (use with ``scaler``).
    """
    batch = as_batch(batch)
    x = batch.input
    with _autocast(amp_device):
        logits, mu, logvar, _ = model.vae(x)
    dice = dice_loss(logits, x)
    kld = kl_divergence(mu.float(), logvar.float())
    total = weights.dice_weight * dice + weights.beta * kld
    defect = classification = torch.zeros(())
    if weights.defect_weight and batch.implant is not None:
        defect = masked_cross_entropy(logits, x, defect_band(batch.implant))
        total = total + weights.defect_weight * defect
    if weights.class_weight and batch.class_index is not None:
        classification = F.cross_entropy(model.classifier(mu.float()), batch.class_index)
        total = total + weights.class_weight * classification
    _optimise(total, optimiser, scaler)
    return StepLosses(dice.item(), kld.item(), total.item(), defect.item(), classification.item())


def stage2_step(
    model: AggregatedVAE,
    batch: torch.Tensor | Batch,
    optimiser: torch.optim.Optimizer,
    sample_latent: bool = True,
    scaler: torch.amp.GradScaler | None = None,
    amp_device: str | None = None,
    defect_weight: float = 0.0,
    shift_weight: float = 0.0,
    dev_table: torch.Tensor | None = None,
    shift_defect_weight: float | None = None,
) -> StepLosses:
    """One step of the decoupled decoder on the frozen stage-1 encoder.

    Dice (+ ``defect_weight`` · CE on the defect band) of decode(z) against the input, so the decode
    at γ = 0 reproduces the hole; with ``shift_weight`` and ``dev_table`` (DEV per class index, rows
    of zeros for the complete class) also the same loss of decode(μ + DEV_class) against the complete
    skull, so the shift of the completion (γ = 1) is what the decoder has learnt to complete.
    """
    batch = as_batch(batch)
    x = batch.input
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample_latent else mu
    band = defect_band(batch.implant) if batch.implant is not None and defect_weight else None
    with _autocast(amp_device):
        logits = model.decode(z)
    dice = dice_loss(logits, x)
    total = dice
    defect = shift = torch.zeros(())
    if band is not None:
        defect = masked_cross_entropy(logits, x, band)
        total = total + defect_weight * defect
    if shift_weight and dev_table is not None and batch.complete is not None and batch.class_index is not None:
        with _autocast(amp_device):
            shifted = model.decode(mu + dev_table[batch.class_index])
        shift = dice_loss(shifted, batch.complete)
        if band is not None:
            weight = defect_weight if shift_defect_weight is None else shift_defect_weight
            shift = shift + weight * masked_cross_entropy(shifted, batch.complete, band)
        total = total + shift_weight * shift
    _optimise(total, optimiser, scaler)
    return StepLosses(dice.item(), 0.0, total.item(), defect.item(), 0.0, shift.item())


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
    """DEV_class = centroid(complete) − centroid(class), for each defect class present."""
    return {name: centroids[COMPLETE] - c for name, c in centroids.items() if name != COMPLETE}


def dev_table(dev: dict[str, np.ndarray], class_names: Sequence[str], latent_size: int) -> torch.Tensor:
    """DEV per class index (zeros for the complete class and classes without a DEV), (C, latent)."""
    rows = [np.asarray(dev.get(name, np.zeros(latent_size)), np.float32) for name in class_names]
    return torch.from_numpy(np.stack(rows))
