"""A hole's patch: a 2-D grid of rays over the hole and its intact surroundings, regular where the hole is."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .options import RimOptions


@dataclass
class Patch:
    """A grid of rays over one hole: latitude-longitude with the equator through the hole, or (``azimuthal``, for
    holes too wide for that) azimuthal equidistant about the hole's middle: grid offsets are the angle from the
    middle along e3 and e2, so the grid is regular everywhere but at the opposite direction."""

    axes: np.ndarray  # rows e1 (hole centre), e2, e3
    step: float  # radians between rays
    half_count: int  # the grid spans (−half_count … half_count) · step in latitude and longitude
    azimuthal: bool = False

    @property
    def size(self) -> int:
        return 2 * self.half_count + 1

    def directions(self) -> np.ndarray:
        angles = (np.arange(self.size) - self.half_count) * self.step
        lat, lon = np.meshgrid(angles, angles, indexing="ij")
        if self.azimuthal:
            theta = np.hypot(lat, lon)
            ratio = np.sin(theta) / np.maximum(theta, 1e-12)
            local = np.stack([np.cos(theta), lon * ratio, lat * ratio], axis=-1)
        else:
            local = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)
        return local @ self.axes  # (lat, lon, 3)

    def grid_coordinates(self, vectors: np.ndarray) -> np.ndarray:
        """Fractional (lat, lon) grid indices of direction vectors (any length), shape (..., 2), in their precision
        (float32 for the voxels of an implant's box: a millionth of a pixel is plenty, and 5× faster)."""
        dtype = vectors.dtype if vectors.dtype == np.float32 else np.float64
        local = vectors @ self.axes.T.astype(dtype)
        if self.azimuthal:
            sideways = np.hypot(local[..., 1], local[..., 2])
            scale = np.arctan2(sideways, local[..., 0]) / np.maximum(sideways, 1e-12)
            return np.stack([local[..., 2] * scale, local[..., 1] * scale], axis=-1) / self.step + self.half_count
        norm = np.linalg.norm(local, axis=-1)
        lat = np.arcsin(np.clip(local[..., 2] / np.maximum(norm, 1e-9), -1.0, 1.0))
        lon = np.arctan2(local[..., 1], local[..., 0])
        return np.stack([lat, lon], axis=-1) / self.step + self.half_count


def patch_for(directions: np.ndarray, radius_mm: float, options: RimOptions) -> Patch | None:
    """A patch covering these hole directions plus the intact margin; None when the hole is too wide."""
    centre = directions.mean(axis=0)
    centre /= np.linalg.norm(centre)
    up = np.array([0.0, 0.0, 1.0]) if abs(centre[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e3 = up - centre * (up @ centre)
    e3 /= np.linalg.norm(e3)
    e2 = np.cross(e3, centre)
    axes = np.stack([centre, e2, e3])
    local = directions @ axes.T
    half_angle = max(float(np.max(np.abs(np.arcsin(np.clip(local[:, 2], -1, 1))))),
                     float(np.max(np.abs(np.arctan2(local[:, 1], local[:, 0])))))
    margin = options.patch_margin_mm / radius_mm + math.radians(options.detection_step_deg)
    step = options.patch_step_mm / radius_mm
    if math.degrees(half_angle + margin) <= options.max_patch_half_angle_deg:
        return Patch(axes, step, int(math.ceil((half_angle + margin) / step)))
    widest = float(np.arccos(np.clip(local[:, 0], -1.0, 1.0)).max()) + margin
    if math.degrees(widest) > options.max_wide_patch_half_angle_deg:
        return None
    return Patch(axes, step, int(math.ceil(widest / step)), azimuthal=True)
