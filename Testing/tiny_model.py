"""A tiny aggregated β-VAE trained in seconds on synthetic shells, saved as a real model bundle.

The engine, CLI and Slicer tests run on it so they need neither the bundled model nor a GPU.
It uses the same training steps as ``training/`` (``training.stages``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from SkullVAECompletionLib.bundle import DEFECT_TYPES, save_bundle
from SkullVAECompletionLib.geometry import GridSpec, plan_mapping, to_model_grid
from SkullVAECompletionLib.networks import AggregatedVAE, NetworkConfig
from SkullVAECompletionLib.synthetic import ShellSpec, cranial_defect, facial_defect, skull_shell
from training.stages import (
    class_centroids,
    deviation_vectors,
    encode_volumes,
    freeze_encoder,
    stage1_step,
    stage2_step,
)

TINY_GRID = GridSpec(shape=(32, 40, 32), spacing_mm=6.0)
TINY_NETWORK = NetworkConfig(
    grid=TINY_GRID.shape, latent_size=8, channels=(8, 16, 32), strides=(2, 2, 2), decoder_norm="BATCH"
)
SHAPE = (64, 72, 60)
SPACING = (3.0, 3.0, 3.0)


def synthetic_population(count: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(class, complete, defective, ijk_to_ras) for ``count`` skulls of each class."""
    rng = np.random.default_rng(seed)
    matrix = np.diag([*SPACING, 1.0])
    matrix[:3, 3] = -0.5 * (np.asarray(SHAPE) - 1) * np.asarray(SPACING)
    cases = []
    for _ in range(count):
        spec = ShellSpec(semi_axes_mm=tuple(np.array([70.0, 90.0, 75.0]) * rng.uniform(0.92, 1.08, 3)))
        complete = skull_shell(SHAPE, matrix, spec)
        cranial = cranial_defect(SHAPE, matrix, centre_ras=tuple(rng.normal([35, 20, 55], 5)), radius_mm=30)
        facial = facial_defect(SHAPE, matrix, front_mm=rng.uniform(50, 60), top_mm=rng.uniform(5, 15))
        cases.append(("complete", complete, complete, matrix))
        cases.append(("cranial", complete, complete & ~cranial, matrix))
        cases.append(("facial", complete, complete & ~facial, matrix))
    return cases


def build_tiny_bundle(folder: Path, steps: int = 100, seed: int = 0, beta: float = 0.01, lr: float = 5e-3) -> Path:
    """Train stage 1 and stage 2 briefly on synthetic shells and export a bundle to ``folder``."""
    torch.manual_seed(seed)
    cases = synthetic_population(4, seed)
    labels, volumes = [], []
    for kind, _, defective, matrix in cases:
        mapping = plan_mapping(defective, matrix, TINY_GRID)
        volumes.append(torch.from_numpy(to_model_grid(defective, mapping))[None])
        labels.append(kind)
    data = torch.stack(volumes)
    model = AggregatedVAE(TINY_NETWORK)
    model.train()
    optimiser = torch.optim.Adam(model.vae.parameters(), lr=lr)
    for _step in range(steps):
        batch = data[torch.randperm(len(data))[:6]]
        stage1_step(model, batch, optimiser, beta=beta, dice_weight=80.0)
    optimiser = torch.optim.Adam(freeze_encoder(model), lr=lr)
    model.decoder.train()
    for _step in range(steps):
        batch = data[torch.randperm(len(data))[:6]]
        stage2_step(model, batch, optimiser, sample_latent=False)
    model.eval()
    latents = encode_volumes(model, data)
    centroids = class_centroids(latents, labels)
    dev = deviation_vectors(centroids)
    complete_latents = latents[np.asarray(labels) == "complete"]
    defective_mask = np.asarray(labels) != "complete"
    # Each defective case's complete counterpart is the "complete" case of the same skull (same index // 3).
    pairs = np.flatnonzero(defective_mask)
    deltas = complete_latents[pairs // 3] - latents[pairs]
    manifest = {
        "model_id": "tiny-test-model",
        "version": "0.0.1",
        "geometry": TINY_GRID.to_dict(),
        "class_names": ["complete", "cranial", "facial"],
        "centroids": {k: v.tolist() for k, v in centroids.items()},
        "dev": {k: v.tolist() for k, v in dev.items()},
        "default_gamma": {"cranial": 1.0, "facial": 1.0},
        "completion": {"method": "dev", "knn_k": 3, "refine_steps": 5},
        "training": {"data": "synthetic ellipsoidal shells (tests only)", "steps": steps, "seed": seed},
        "evaluation": {},
    }
    latent_table = {
        "defective": latents[pairs].astype(np.float32),
        "delta": deltas.astype(np.float32),
        "type_index": np.asarray([DEFECT_TYPES.index(labels[i]) for i in pairs], dtype=np.int64),
    }
    return save_bundle(folder, model, manifest, paired_latents=latent_table)
