"""Sampling the expected skull and the input along rays from the centre, split across threads."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from scipy import ndimage

from .frame import Frame

SAMPLING_THREADS = max(1, min(4, os.cpu_count() or 1))


def sample(volume: np.ndarray, coordinates: np.ndarray, order: int = 1, mode: str = "constant") -> np.ndarray:
    """``ndimage.map_coordinates`` (float32 out; 0 outside in the default mode) over chunks in parallel threads.

    scipy releases the GIL while it interpolates, so the rays' samples (10⁵–10⁶ points) are split across the cores.
    """
    def run(chunk: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, chunk, order=order, mode=mode, cval=0, output=np.float32)

    return np.concatenate(in_threads(run, coordinates, minimum=50_000, axis=1))


def in_threads(function: Any, items: np.ndarray, minimum: int = 100_000, axis: int = 0) -> list[Any]:
    """``function`` over chunks (along ``axis``) of ``items`` in parallel threads, at least ``minimum`` items each
    (numpy and scipy release the GIL on big arrays)."""
    chunks = np.array_split(items, min(SAMPLING_THREADS, max(1, items.shape[axis] // minimum)), axis=axis)
    if len(chunks) == 1:
        return [function(items)]
    with ThreadPoolExecutor(len(chunks)) as pool:
        return list(pool.map(function, chunks))


def _ray_coordinates(to_index: np.ndarray, origin_mm: np.ndarray, directions: np.ndarray,
                     radii: np.ndarray) -> np.ndarray:
    """Voxel coordinates (3, rays × samples) of the points origin + direction × radius of a volume whose index is
    ``to_index`` @ (mm, 1): the map is linear, so each ray's origin and step are mapped once, not every point."""
    origin = to_index[:3, :3] @ origin_mm + to_index[:3, 3]
    steps = directions @ to_index[:3, :3].T
    radii = np.broadcast_to(radii, (len(directions), np.shape(radii)[-1]))
    coordinates = np.empty((3, *radii.shape))  # written in place: no per-axis temporaries stacked afterwards
    for axis in range(3):
        np.multiply(steps[:, axis, None], radii, out=coordinates[axis])
        coordinates[axis] += origin[axis]
    return coordinates.reshape(3, -1)


def sample_model(frame: Frame, directions: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """The expected skull along rays from the centre: (rays, samples)."""
    to_index = np.diag([1.0 / frame.spacing] * 3 + [1.0])
    coordinates = _ray_coordinates(to_index, frame.centre, directions, radii)
    return sample(frame.expected, coordinates).reshape(len(directions), np.shape(radii)[-1])


def sample_input(frame: Frame, directions: np.ndarray, radii: np.ndarray, order: int) -> np.ndarray:
    """The input's bone along rays from the centre: (rays, samples)."""
    coordinates = _ray_coordinates(frame.mm_to_input, frame.centre, directions, radii)
    return sample(frame.defective, coordinates, order).reshape(len(directions), np.shape(radii)[-1])
