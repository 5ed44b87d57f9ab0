"""From a decoded (completed) skull to a clean implant at the input's full resolution.

The implant is completed ∧ ¬defective. Decoded skulls never sit exactly on the input's bone, so a
raw difference has thin speckle along all of the intact bone. The defect is found on the model grid
as the *core* of the difference (voxels clearly away from the input bone); only a band around that
core is taken to full resolution, where small islands are removed and the surface optionally smoothed.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..masks import MIN_ISLAND_FRACTION, keep_large_components, nonzero_bounds
from ..preprocessing.geometry import GridMapping, model_box_in_input, to_input_grid

CORE_DISTANCE_MM = 4.0  # misregistration slivers along intact bone are thinner than this…
CORE_DISTANCE_VOXELS = 1.5  # …and than 1.5 model voxels (a decode can be off by one voxel)
MIN_CORE_FRACTION = 0.5  # defects are one region: cores under half the largest are stray fragments
MIN_ISLAND_ML = 0.05  # full-resolution islands below 0.05 ml are speckle
SHADOW_REACH_MM = 15.0  # a hole lets a line towards the skull centre pass bone-free for at least this far
SMOOTHING_SIGMA_MM = 0.6
BONE_THRESHOLD = 0.5  # decoded probability that counts as bone (a bundle may set another per class)
SMOOTHING_TRUNCATE = 4.0  # scipy's default reach of the Gaussian, in σ


def core_distance_mm(spacing_mm: float) -> float:
    """How far from the input's bone decoded bone must lie to be the core of a defect (not a misregistration sliver)."""
    return max(CORE_DISTANCE_MM, CORE_DISTANCE_VOXELS * spacing_mm)


def near_input_bone(model_input: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Model voxels within :func:`core_distance_mm` of the input's bone (Euclidean, between voxel centres); it does not
    depend on γ, so callers cache it.

    The bone dilated by a ball: the same voxels as a distance transform's ``distance ≤ core distance``, with the
    distance worked out the same way, without computing every voxel's distance.
    """
    reach = core_distance_mm(spacing_mm)
    steps = int(reach // spacing_mm)
    offsets = np.mgrid[-steps : steps + 1, -steps : steps + 1, -steps : steps + 1].astype(np.float64) * spacing_mm
    ball = np.sqrt(np.add.reduce(offsets * offsets, axis=0)) <= reach
    return ndimage.binary_dilation(model_input >= 0.5, structure=ball)


def decoded_implant_region(
    bone_probability: np.ndarray,
    model_input: np.ndarray,
    spacing_mm: float,
    near_bone: np.ndarray | None = None,
    threshold: float = BONE_THRESHOLD,
) -> np.ndarray:
    """Model-grid region where the implant may be: the cores of decoded-minus-input bone, grown back.

    ``near_bone``: :func:`near_input_bone` of ``model_input``, if already computed; ``threshold``: the decoded
    probability that counts as bone. Returns a bool array on the model grid (empty when the decoded skull adds
    nothing).
    """
    decoded = bone_probability > threshold
    input_bone = model_input >= 0.5
    candidate = decoded & ~input_bone
    if not candidate.any():
        return candidate
    if near_bone is None:
        near_bone = near_input_bone(model_input, spacing_mm)
    core_distance = core_distance_mm(spacing_mm)
    core = candidate & ~near_bone
    core &= ~covered_by_bone(core, model_input, spacing_mm)
    core = keep_large_components(core, MIN_CORE_FRACTION)
    if not core.any():
        return np.zeros_like(candidate)
    # Grow the cores back to the defect border, but no further along the intact bone.
    steps = int(math.ceil(core_distance / spacing_mm)) + 1
    grown = ndimage.binary_dilation(core, iterations=steps)
    return candidate & grown | core


def covered_by_bone(points_mask: np.ndarray, model_input: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Voxels that have input bone in front of or behind them, along the line to the skull's centre.

    An implant fills a *hole* in the shell: the radial line through it is free of bone for a while on both
    sides. Decoded bone that merely lies outside or inside intact bone (a decode slightly larger or smaller
    than the patient's skull) is covered by that bone and is not a defect.
    """
    points = np.argwhere(points_mask)
    covered = np.zeros_like(points_mask, dtype=bool)
    bone = np.argwhere(model_input >= 0.5)
    if len(points) == 0 or len(bone) == 0:
        return covered
    centre = 0.5 * (bone.min(axis=0) + bone.max(axis=0))  # the cranial cavity, not biased by the face's mass
    direction = centre - points
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-6)
    reach = SHADOW_REACH_MM / spacing_mm
    steps = np.linspace(-reach, reach, int(2 * np.ceil(reach)) + 1)
    samples = points[:, None, :] + steps[None, :, None] * direction[:, None, :]
    values = ndimage.map_coordinates(model_input, samples.reshape(-1, 3).T, order=1, mode="constant", cval=0.0)
    hit = values.reshape(len(points), len(steps)).max(axis=1) >= 0.5
    covered[tuple(points[hit].T)] = True
    return covered


def implant_at_input_resolution(
    bone_probability: np.ndarray,
    region: np.ndarray,
    defective: np.ndarray,
    mapping: GridMapping,
    smoothing: bool = True,
    threshold: float = BONE_THRESHOLD,
    out: np.ndarray | None = None,
    within: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Full-resolution uint8 implant on the input grid; work is confined to the region's bounding box.

    ``threshold``: the decoded probability that counts as bone (interpolated to the input grid). ``out``: a uint8
    array on the input grid to add the implant to (or-ed on its bounding box only) instead of a new one.
    ``within``: an input-index box (lo, hi) outside which nothing is added.
    """
    implant = np.zeros(mapping.input_shape, dtype=np.uint8, order="F") if out is None else out
    bounds = nonzero_bounds(region)
    if bounds is None:
        return implant
    lo, hi = model_box_in_input(mapping, bounds[0] - 1, bounds[1])
    if within is not None:
        lo, hi = np.maximum(lo, within[0]), np.minimum(hi, within[1])
    if np.any(hi <= lo):
        return implant  # the implant lies outside the input's field of view
    probability, _ = to_input_grid(bone_probability, mapping, lo, hi)
    inside, _ = to_input_grid(region.astype(np.float32), mapping, lo, hi)
    block_defective = defective[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    block = (probability > threshold) & (inside > 0.5) & ~block_defective
    del probability, inside
    # Smoothing and island removal only on the implant's own bounding box (plus the filter's reach): the
    # region's box is much larger than the implant shell, and these are the slow full-resolution steps.
    tight = nonzero_bounds(block)
    if tight is None:
        return implant
    spacing = mapping.input_spacing
    sigma = SMOOTHING_SIGMA_MM / spacing
    reach = np.ceil(SMOOTHING_TRUNCATE * sigma).astype(int) + 1 if smoothing else np.zeros(3, int)
    sub_lo = np.maximum(tight[0] - reach, 0)
    sub_hi = np.minimum(tight[1] + reach, block.shape)
    sub = tuple(slice(a, b) for a, b in zip(sub_lo, sub_hi, strict=True))
    block, block_defective = block[sub], block_defective[sub]
    if smoothing:
        # uint8 in, float32 out: no separate float copy of the block.
        smoothed = ndimage.gaussian_filter(block.view(np.uint8), sigma, output=np.float32, truncate=SMOOTHING_TRUNCATE)
        block = (smoothed > 0.5) & ~block_defective
        del smoothed
    block = remove_small_islands(block, spacing)
    start, stop = lo + sub_lo, lo + sub_hi
    implant[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] |= block
    return implant


def remove_small_islands(mask: np.ndarray, spacing: np.ndarray, min_ml: float = MIN_ISLAND_ML) -> np.ndarray:
    """Drop connected components smaller than ``min_ml`` and than 5 % of the largest one."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return keep_large_components(mask, MIN_ISLAND_FRACTION, min_ml / voxel_ml)
