"""Latent arithmetic on an encoded skull: the class posterior on μ, the shift by γ·DEV (or the k-NN DEV), the
refinement of z against the input's intact bone and the uncertainty of decodes sampled around z.

Each is a function of the model bundle (or its network) and the encoding; decoding and running on the device are
passed in, so that these functions share the completer's precision, device and out-of-memory fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..extraction.implant import decoded_implant_region
from ..model.bundle import ModelBundle
from ..model.networks import AggregatedVAE
from ..preprocessing.geometry import to_input_grid
from .results import EncodedSkull

Decoder = Callable[[torch.Tensor], np.ndarray]  # z (n, latent) → bone probability (n, *grid), float32
OnDevice = Callable[..., Any]  # runs a function of tensors on the completer's device (SkullCompleter._on_device)

UNCERTAINTY_SEED = 20220929  # fixed: the same input gives the same uncertainty map


def class_probabilities(model: AggregatedVAE, bundle: ModelBundle, latent: np.ndarray,
                        device: torch.device) -> dict[str, float]:
    """Posterior over the bundle's classes: the softmax of its class head on μ when it has one, else
    from squared distances to the class centroids (unit-variance Gaussians)."""
    names = bundle.class_names
    if model.classifier is not None:
        with torch.inference_mode():
            logits = model.classify(torch.from_numpy(np.asarray(latent, np.float32))[None].to(device))
        scores = logits[0].double().cpu().numpy()
    else:
        centroids = bundle.centroids
        scores = -0.5 * np.array([np.sum((latent - centroids[n]) ** 2) for n in names], dtype=np.float64)
    weights = np.exp(scores - scores.max())
    return {n: float(w) for n, w in zip(names, weights / weights.sum(), strict=True)}


def shifted_latent(bundle: ModelBundle, encoded: EncodedSkull, defect_type: str, gamma: float, method: str,
                   options: dict) -> torch.Tensor:
    """μ + γ·DEV of the class; with the "knn" method (and paired latents in the bundle) the DEV of the nearest
    training cases instead of the class mean."""
    mu = encoded.mu
    if method == "knn" and bundle.paired_latents:
        k = int(options.get("knn_k", 5))
        direction = torch.from_numpy(knn_dev(bundle, mu[0].numpy(), defect_type, k))
    else:
        direction = torch.from_numpy(bundle.dev[defect_type])
    return mu + gamma * direction[None]


def knn_dev(bundle: ModelBundle, latent: np.ndarray, defect_type: str, k: int) -> np.ndarray:
    """Mean complete-minus-defective latent difference of the k nearest paired training cases of this type."""
    table = bundle.paired_latents
    same_type = table["type_index"] == bundle.defect_classes.index(defect_type)
    if not same_type.any():
        return bundle.dev[defect_type]
    defective, deltas = table["defective"][same_type], table["delta"][same_type]
    nearest = np.argsort(np.sum((defective - latent) ** 2, axis=1))[:k]
    return deltas[nearest].mean(axis=0).astype(np.float32)


def refined_latent(model: AggregatedVAE, encoded: EncodedSkull, z0: torch.Tensor, options: dict, decode: Decoder,
                   on_device: OnDevice) -> torch.Tensor:
    """Gradient steps on z so the decoded skull matches the input's intact bone.

    The region where the first decode adds bone (the presumed defect) is left free; elsewhere the
    decoded skull is pulled onto the input. A Gaussian prior on z keeps the latent plausible.
    """
    steps = int(options.get("refine_steps", 30))
    learning_rate = float(options.get("refine_lr", 0.05))
    prior_weight = float(options.get("refine_prior_weight", 1e-3))
    spacing = encoded.mapping.grid.spacing_mm
    free = decoded_implant_region(decode(z0)[0], encoded.model_input, spacing, encoded.near_bone())
    weight = torch.from_numpy((~free).astype(np.float32))[None]
    target = torch.from_numpy(encoded.model_input)[None]

    def run(latent: torch.Tensor, weights: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        latent = latent.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([latent], lr=learning_rate)
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            logits = model.decode(latent)
            log_p = torch.log_softmax(logits.float(), dim=1)
            # Weighted cross-entropy against the input's bone fraction.
            loss_map = -(goal * log_p[:, 1] + (1 - goal) * log_p[:, 0])
            loss = (weights * loss_map).sum() / weights.sum().clamp_min(1.0)
            loss = loss + prior_weight * 0.5 * (latent**2).sum()
            loss.backward()
            optimiser.step()
        return latent.detach().cpu()

    with torch.enable_grad():
        return on_device(run, z0, weight, target)


def uncertainty_map(encoded: EncodedSkull, z: torch.Tensor, samples: int, decode: Decoder) -> np.ndarray:
    """Voxelwise disagreement of decodes from the encoder's posterior: 4·p·(1−p), p = bone vote share."""
    generator = torch.Generator().manual_seed(UNCERTAINTY_SEED)
    std = torch.exp(0.5 * encoded.logvar)
    votes = np.zeros(encoded.mapping.grid.shape, np.float32)
    for _ in range(samples):
        noise = torch.randn(std.shape, generator=generator)
        votes += decode(z + noise * std)[0] > 0.5
    share = votes / samples
    disagreement = 4.0 * share * (1.0 - share)
    block, lo = to_input_grid(disagreement, encoded.mapping)
    full = np.zeros(encoded.mapping.input_shape, np.float32, order="F")
    hi = lo + np.asarray(block.shape)
    full[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = block
    return full
