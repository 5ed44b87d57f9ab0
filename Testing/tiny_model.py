"""A tiny aggregated β-VAE trained in seconds on synthetic shells, saved as a real model bundle.

The engine, CLI and Slicer tests run on it so they need neither the bundled model nor a GPU.
It uses the same training steps as ``training/`` (``training.stages``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from SkullVAECompletionLib.inference import regions
from SkullVAECompletionLib.model.bundle import LEGACY_DEFECT_CLASSES, save_bundle
from SkullVAECompletionLib.model.networks import AggregatedVAE, NetworkConfig
from SkullVAECompletionLib.preprocessing.geometry import GridSpec, plan_mapping, to_model_grid
from SkullVAECompletionLib.synthetic import ShellSpec, cranial_defect, facial_defect, skull_shell
from training.stages import (
    Batch,
    Stage1Weights,
    class_centroids,
    dev_table,
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


def build_tiny_bundle(folder: Path, steps: int = 100, seed: int = 0, beta: float = 0.01, lr: float = 5e-3,
                      region_classes: bool = False) -> Path:
    """Train stage 1 and stage 2 briefly on synthetic shells and export a bundle to ``folder``.

    By default the classes are the format-1 ones (complete / cranial / facial, centroid detection). With
    ``region_classes`` the bundle is built like the bundled model 2.x: region classes (regions.py), a class head
    on μ, the defect-weighted losses and the shift-aware decoder.
    """
    torch.manual_seed(seed)
    cases = synthetic_population(4, seed)
    labels, volumes, implants, completes = [], [], [], []
    for kind, complete, defective, matrix in cases:
        mapping = plan_mapping(defective, matrix, TINY_GRID)
        volumes.append(torch.from_numpy(to_model_grid(defective, mapping))[None])
        hole = complete & ~defective
        implant = to_model_grid(hole.astype(np.uint8), mapping) if hole.any() else np.zeros(TINY_GRID.shape, np.float32)
        implants.append(torch.from_numpy(implant)[None])
        completes.append(torch.from_numpy(to_model_grid(complete, mapping))[None])
        labels.append(kind)
    data, implant_data, complete_data = torch.stack(volumes), torch.stack(implants), torch.stack(completes)
    if region_classes:
        labels = [regions.defect_class(label, implant[0].numpy() >= 0.5 if label == "cranial" else None,
                                       complete[0].numpy())
                  for label, implant, complete in zip(labels, implant_data, complete_data, strict=True)]
        class_names = list(regions.CLASS_NAMES)
        network = dataclasses.replace(TINY_NETWORK, num_classes=len(class_names))
        weights = Stage1Weights(beta=beta, defect_weight=10.0, class_weight=5.0)
    else:
        class_names = ["complete", "cranial", "facial"]
        network, weights = TINY_NETWORK, Stage1Weights(beta=beta)
    class_index = torch.tensor([class_names.index(name) for name in labels])
    model = AggregatedVAE(network)
    model.train()
    parameters = list(model.vae.parameters()) + (list(model.classifier.parameters()) if model.classifier else [])
    optimiser = torch.optim.Adam(parameters, lr=lr)

    def batch_of(indices: torch.Tensor) -> Batch:
        return Batch(data[indices], implant_data[indices], complete_data[indices], class_index[indices])

    for _step in range(steps):
        stage1_step(model, batch_of(torch.randperm(len(data))[:6]), optimiser, weights)
    optimiser = torch.optim.Adam(freeze_encoder(model), lr=lr)
    table = None
    if region_classes:
        table = dev_table(deviation_vectors(class_centroids(encode_volumes(model, data), labels)), class_names,
                          network.latent_size)
    model.decoder.train()
    for _step in range(steps):
        stage2_step(model, batch_of(torch.randperm(len(data))[:6]), optimiser, sample_latent=False,
                    defect_weight=1.0 if region_classes else 0.0, shift_weight=1.0 if region_classes else 0.0,
                    dev_table=table)
    model.eval()
    latents = encode_volumes(model, data)
    centroids = class_centroids(latents, labels)
    dev = deviation_vectors(centroids)
    defect_classes = [n for n in dict.fromkeys((*regions.DEFECT_CLASSES, *LEGACY_DEFECT_CLASSES)) if n in dev]
    complete_latents = latents[np.asarray(labels) == "complete"]
    defective_mask = np.asarray(labels) != "complete"
    # Each defective case's complete counterpart is the "complete" case of the same skull (same index // 3).
    pairs = np.flatnonzero(defective_mask)
    deltas = complete_latents[pairs // 3] - latents[pairs]
    manifest = {
        "model_id": "tiny-test-model",
        "version": "0.0.1",
        "geometry": TINY_GRID.to_dict(),
        "class_names": class_names,
        "centroids": {k: v.tolist() for k, v in centroids.items()},
        "dev": {k: v.tolist() for k, v in dev.items()},
        "default_gamma": dict.fromkeys(dev, 1.0),
        "completion": {"method": "dev", "knn_k": 3, "refine_steps": 5},
        "training": {"data": "synthetic ellipsoidal shells (tests only)", "steps": steps, "seed": seed},
        "evaluation": {},
    }
    if region_classes:
        manifest["defect_classes"] = defect_classes
    latent_table = {
        "defective": latents[pairs].astype(np.float32),
        "delta": deltas.astype(np.float32),
        "type_index": np.asarray([defect_classes.index(labels[i]) for i in pairs], dtype=np.int64),
    }
    return save_bundle(folder, model, manifest, paired_latents=latent_table)
