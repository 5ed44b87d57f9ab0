"""A synthetic head CT (numpy only: usable where torch is absent)."""

from __future__ import annotations

import numpy as np

from SkullVAECompletionLib.synthetic import centred_ijk_to_ras, skull_shell


def synthetic_head_ct(shape: tuple[int, int, int] = (60, 70, 60), spacing_mm: float = 3.0,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CT in HU (int16, indexed i, j, k), the skull in it, IJK→RAS): air, soft tissue and bone with scanner noise."""
    matrix = centred_ijk_to_ras(shape, (spacing_mm,) * 3)
    skull = skull_shell(shape, matrix)
    i, j, k = np.indices(shape)
    centre = (np.asarray(shape) - 1) / 2.0
    head = sum(((axis - c) / (0.46 * n)) ** 2 for axis, c, n in zip((i, j, k), centre, shape, strict=True)) <= 1.0
    ct = np.full(shape, -1000.0, np.float32)
    ct[head | skull] = 40.0
    ct[skull] = 1000.0
    ct += np.random.default_rng(seed).normal(0.0, 20.0, shape).astype(np.float32)
    return np.round(ct).astype(np.int16), skull, matrix
