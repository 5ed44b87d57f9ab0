"""One hole's implant on the input grid: a signed field on the hole's own box, evaluated coarse to fine."""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage

from .frame import Frame, to_input_index
from .hole_fit import PatchFit
from .sampling import in_threads

COARSE_CELL_MM = 1.5  # voxelise: the field is first evaluated on a grid this coarse, then near the implant only
FIELD_SLOPE = 2.5  # a bound on how fast the implant's field changes (mm per mm): surfaces steeper than 68° are rare


def voxelise(frame: Frame, fit: PatchFit) -> tuple[np.ndarray, np.ndarray]:
    """One hole's implant on the input grid as a signed field on its own box: (field block, box lo corner).

    The field is > 0 exactly on implant voxels: min(r − inner, outer − r, distance into the filled directions) in
    mm, and negative on the input's bone. Each hole gets its own box, so distant holes never span the volume.
    On sub-millimetre grids it is evaluated coarse to fine: first every ~1.5 mm, then only near the implant.
    """
    directions = fit.patch.directions()[fit.fill]
    low = float(np.nanmin(fit.inner[fit.fill])) - 1.0
    high = float(np.nanmax(fit.outer[fit.fill])) + 1.0
    corners = np.concatenate([to_input_index(frame, frame.centre + directions * radius) for radius in
                              (low - 1.0, high + 1.0)])
    limit = frame.input_shape.astype(int)
    lo = np.clip(np.floor(corners.min(axis=0)).astype(int) - 1, 0, limit)
    hi = np.clip(np.ceil(corners.max(axis=0)).astype(int) + 2, 0, limit)
    shape = tuple(int(v) for v in np.maximum(hi - lo, 0))
    block_field = np.full(shape, -1.0, np.float32, order="F")
    if 0 in shape:
        return block_field, lo
    input_to_mm = np.linalg.inv(frame.mm_to_input)
    # The vector from the centre of the box voxel with index b (relative to lo) is to_vector @ b + offset.
    to_vector = input_to_mm[:3, :3].astype(np.float32)
    offset = (input_to_mm[:3, :3] @ lo + input_to_mm[:3, 3] - frame.centre).astype(np.float32)
    # Only voxels within the cone of the filled directions (plus two rays) can be implant: a box's corners cannot.
    axis = fit.patch.axes[0].astype(np.float32)
    cone = math.cos(min(math.pi, float(np.arccos(np.clip(directions @ fit.patch.axes[0], -1, 1)).max())
                        + 2 * fit.patch.step))
    pixel_mm = fit.patch.step * float(np.nanmedian(fit.outer[fit.fill]))
    # The filled directions enter the field as a bilinear step (a sub-pixel edge); the coarse pass needs their
    # signed distance instead (mm at the shell, > 0 inside), which bounds how far away the edge is.
    signed_distance = (ndimage.distance_transform_edt(fit.fill) - ndimage.distance_transform_edt(~fit.fill)) * pixel_mm
    surfaces = np.stack([np.nan_to_num(grid, nan=0.0) for grid in (fit.fill.astype(float), fit.inner, fit.outer,
                                                                     signed_distance)]).astype(np.float32)

    def field_at(index: np.ndarray, coarse: bool = False) -> np.ndarray:
        """The field at box voxels (n, 3); coarse: a bound for the voxels around them (the patch's edge values
        continue past it, so a voxel just inside the patch is bounded by a node just outside)."""
        vector = index.astype(np.float32) @ to_vector.T + offset
        radius = np.sqrt(np.einsum("ij,ij->i", vector, vector))
        value = np.full(len(index), -1.0, np.float32)
        inside = np.ones(len(index), bool) if coarse else (
            (radius >= low) & (radius <= high) & (vector @ axis >= cone * radius))
        grid = fit.patch.grid_coordinates(vector[inside])
        fill, inner, outer = (ndimage.map_coordinates(surface, grid.T, order=1, mode="nearest", output=np.float32)
                              for surface in surfaces[[3 if coarse else 0, 1, 2]])
        r = radius[inside]
        inner_value = np.minimum(np.minimum(r - inner, outer - r), fill if coarse else (fill - 0.5) * pixel_mm)
        if not coarse:
            inner_value[np.any((grid < 0) | (grid > fit.patch.size - 1), axis=1)] = -1.0
        value[inside] = inner_value
        return value

    def evaluate(index: np.ndarray, coarse: bool = False) -> np.ndarray:
        return np.concatenate(in_threads(functools.partial(field_at, coarse=coarse), index))

    spacing = np.linalg.norm(input_to_mm[:3, :3], axis=0)
    stride = np.maximum(1, np.floor(COARSE_CELL_MM / spacing)).astype(int)
    if stride.max() > 1:
        # Coarse nodes at multiples of the stride; each box voxel belongs to its nearest node (half a cell's
        # diagonal away at most), and the field changes by at most FIELD_SLOPE mm per mm: only the voxels of nodes
        # whose bound is above −FIELD_SLOPE × that distance can be implant. The rest stay −1.
        half = stride // 2
        nodes = np.stack(np.meshgrid(*[np.arange(0, (n - 1 + h) // k + 1) for n, h, k in zip(shape, half, stride,
                                                                                             strict=True)],
                                     indexing="ij"), axis=-1).reshape(-1, 3)
        bound = evaluate(nodes * stride, coarse=True)
        near = nodes[bound > -FIELD_SLOPE * 0.5 * np.linalg.norm(stride * spacing)]
        cell = np.stack(np.meshgrid(*[np.arange(k) for k in stride], indexing="ij"), axis=-1).reshape(-1, 3)
        index = (near[:, None, :] * stride - half + cell[None, :, :]).reshape(-1, 3)
        index = index[np.all((index >= 0) & (index < np.asarray(shape)), axis=1)]
    else:
        index = np.stack(np.unravel_index(np.arange(int(np.prod(shape))), shape), axis=1)
    block_field[index[:, 0], index[:, 1], index[:, 2]] = evaluate(index)
    bone = frame.defective[lo[0]: hi[0], lo[1]: hi[1], lo[2]: hi[2]].astype(bool)
    block_field[bone] = np.minimum(block_field[bone], -0.5)
    return block_field, lo
