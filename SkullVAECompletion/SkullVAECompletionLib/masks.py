"""Mask helpers shared by every stage: bounds, connected components and the skull's centre.

numpy and scipy only (no torch): the mirror method, the design stage, the skull-from-CT step and the file
outputs use them without the network.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_ISLAND_FRACTION = 0.05  # pieces under 5 % of the largest are speckle or stray fragments
FACE_CONNECTED = ndimage.generate_binary_structure(3, 1)  # 6-connectivity
FULLY_CONNECTED = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


def nonzero_bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive-exclusive index bounds (lo, hi) of the nonzero voxels, or None when empty."""
    array = np.asarray(mask)
    if array.ndim != 3 or array.itemsize != 1 or not (array.flags.f_contiguous or array.flags.c_contiguous):
        return _nonzero_bounds_by_axis(array)
    # One pass over a contiguous byte mask, 8 voxels per 64-bit word: a row per slice of the slowest axis tells
    # that axis' bounds; the or of the rows it spans, the other two axes'.
    fortran = bool(array.flags.f_contiguous)
    slowest = 2 if fortran else 0
    rows = array.reshape(-1, array.shape[2], order="F").T if fortran else array.reshape(array.shape[0], -1)
    if rows.shape[1] % 8:
        return _nonzero_bounds_by_axis(array)
    words = rows.view(np.uint64)
    present = np.flatnonzero(words.max(axis=1))
    if present.size == 0:
        return None
    footprint = np.bitwise_or.reduce(words[present[0] : present[-1] + 1], axis=0).view(np.uint8)
    plane_shape = [n for axis, n in enumerate(array.shape) if axis != slowest]
    plane = _nonzero_bounds_by_axis(footprint.reshape(plane_shape, order="F" if fortran else "C"))
    lo, hi = list(plane[0]), list(plane[1])
    lo.insert(slowest, present[0])
    hi.insert(slowest, present[-1] + 1)
    return np.asarray(lo), np.asarray(hi)


def _nonzero_bounds_by_axis(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    lo, hi = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=other))
        if present.size == 0:
            return None
        lo.append(present[0])
        hi.append(present[-1] + 1)
    return np.asarray(lo), np.asarray(hi)


def _component_sizes(mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """(labels, count, sizes) of ``mask``'s connected components; ``sizes[0]`` (the background) is 0."""
    labels, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return labels, count, np.zeros(0, dtype=np.int64)
    # Count only the labelled voxels: a bincount over the whole (mostly empty) volume is several times slower.
    sizes = np.bincount(labels[mask], minlength=count + 1)
    sizes[0] = 0
    return labels, count, sizes


def keep_large_components(
    mask: np.ndarray, fraction: float = MIN_ISLAND_FRACTION, min_voxels: float = 0.0,
    structure: np.ndarray = FACE_CONNECTED,
) -> np.ndarray:
    """Keep the connected components with at least ``fraction`` of the largest one's voxels and ``min_voxels``.

    ``structure``: the connectivity (:data:`FACE_CONNECTED` or :data:`FULLY_CONNECTED`). A bool mask with a single
    component (or none) is returned as it is.
    """
    labels, count, sizes = _component_sizes(mask, structure)
    if count <= 1:
        return mask
    keep = sizes >= max(min_voxels, fraction * sizes.max())
    keep[0] = False
    return keep[labels]


def largest_component(mask: np.ndarray, structure: np.ndarray = FULLY_CONNECTED) -> np.ndarray:
    """The largest connected component of a bool mask (all of it if it is one piece; the first of equal ones)."""
    labels, count, sizes = _component_sizes(mask, structure)
    if count <= 1:
        return np.asarray(mask, dtype=bool)
    return labels == int(np.argmax(sizes))


def skull_centre_voxel(skull: np.ndarray, fraction: float | np.ndarray = 0.5, step: int = 1) -> np.ndarray:
    """The skull's centre (voxel index): ``low + fraction · (high − low)`` of its bone's bounding box per axis.

    The box's centre stands for the cranial cavity without the face's mass pulling it forward. ``fraction`` may
    differ per axis (on a RAS-aligned grid); ``step`` > 1 looks at every step-th voxel only (enough for a centre,
    and no pass over a full volume). Raises ValueError when there is no bone.
    """
    bounds = nonzero_bounds(np.asarray(skull)[::step, ::step, ::step])
    if bounds is None:
        raise ValueError("the skull mask is empty: it has no centre")
    low, high = bounds[0], bounds[1] - 1
    return (low + np.asarray(fraction) * (high - low)) * step
