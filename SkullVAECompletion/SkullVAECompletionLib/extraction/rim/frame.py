"""The frame of the rays: the cranial centre, the expected skull and the input in model millimetres, and the
maps from model millimetres to the input's voxels and to the mirror image across the mid-sagittal plane."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

VAULT_LEVEL = 0.4  # the vault: bone above this fraction of the skull's height


@dataclass
class Frame:
    """Everything the rays need: the centre, the expected skull and the input, both in model millimetres."""

    centre: np.ndarray  # model mm
    expected: np.ndarray  # model-grid bone probability of the expected (decoded) skull
    spacing: float  # model grid spacing (mm)
    defective: np.ndarray  # input grid, uint8 view
    mm_to_input: np.ndarray  # 4×4: model mm → input index
    input_shape: np.ndarray
    reach_mm: float  # distance from the centre to the farthest expected bone
    mirror: np.ndarray  # 4×4 reflection about the mid-sagittal plane, in the frame's (model mm) coordinates


def vault_sphere_centre(expected: np.ndarray, spacing: float) -> np.ndarray | None:
    """Centre of the sphere that best fits the expected skull's vault (its upper part), in model mm.

    The vault is close to a sphere seen from the cranial cavity; the face and skull base, which are not, are left
    out by taking only the bone above :data:`VAULT_LEVEL` of the skull's height. None when there is no bone.
    """
    points = np.argwhere(expected > 0.5).astype(float) * spacing
    if len(points) < 10:
        return None
    low, high = points[:, 2].min(), points[:, 2].max()
    vault = points[points[:, 2] >= low + VAULT_LEVEL * (high - low)]
    # Linear least squares: |p|² = 2 c·p + (r² − |c|²).
    design = np.c_[2.0 * vault, np.ones(len(vault))]
    solution, *_ = np.linalg.lstsq(design, np.sum(vault**2, axis=1), rcond=None)
    return np.clip(solution[:3], points.min(axis=0), points.max(axis=0))


def to_input_index(frame: Frame, points_mm: np.ndarray) -> np.ndarray:
    """Fractional input-grid indices (..., 3) of points in model mm."""
    matrix = frame.mm_to_input
    return points_mm @ matrix[:3, :3].T + matrix[:3, 3]


def inside_input(frame: Frame, points_mm: np.ndarray) -> np.ndarray:
    """Per point (model mm): it lies inside the input's field of view (within half a voxel of its grid)."""
    index = to_input_index(frame, points_mm)
    return np.all((index >= -0.5) & (index <= frame.input_shape - 0.5), axis=-1)


def mirrored_rays(frame: Frame, directions: np.ndarray) -> tuple[Frame, np.ndarray]:
    """The mirror images of rays from the centre: rays from the mirrored centre (a frame) along these directions."""
    mirrored_frame = replace(frame, centre=frame.mirror[:3, :3] @ frame.centre + frame.mirror[:3, 3])
    return mirrored_frame, directions @ frame.mirror[:3, :3].T


def mirrored_directions(frame: Frame, directions: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Directions, seen from the centre, of the mirror images of the points at ``radii`` along ``directions``."""
    points = frame.centre + directions * radii[:, None]
    vectors = points @ frame.mirror[:3, :3].T + frame.mirror[:3, 3] - frame.centre
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
