"""Skull from CT: bone threshold in Hounsfield units, then the largest connected piece of bone.

Users start from a head CT, not a mask. Bone is above about 300 HU (the picture is the same at 200 or 400);
the largest 26-connected component is the skull (face and skull base included), so a head holder, the
table, calcifications and stray bright voxels drop out.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..masks import largest_component
from ..options import DEFAULT_BONE_THRESHOLD_HU

AIR_BELOW_HU = -200.0  # a head CT always holds air (about -1000 HU) around the head
MIN_CT_LEVELS = 16  # a mask has 2 values, a CT thousands: fewer than this is not a CT


def check_ct(ct: np.ndarray, name: str = "input") -> None:
    """Raise :class:`InputError` unless ``ct`` looks like a 3D CT in Hounsfield units."""
    array = np.asarray(ct)
    if array.ndim != 3 or min(array.shape) < 2:
        raise InputError(f"{name}: a 3D CT volume is needed, got an image of shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise InputError(f"{name}: unsupported voxel type {array.dtype}; a CT holds numbers (Hounsfield units)")
    sample = array[::4, ::4, ::4]  # a strided sample is enough to recognise a mask and keeps this fast
    if array.dtype.kind == "f" and not np.all(np.isfinite(sample)):
        raise InputError(f"{name}: the CT contains NaN or infinite values; resave it from the scanner data")
    low, high = float(sample.min()), float(sample.max())
    if np.unique(sample).size < MIN_CT_LEVELS:
        raise InputError(
            f"{name}: the volume holds only a few values ({low:g} to {high:g}); this is a mask, not a CT. "
            "Complete it directly (without --from-ct / the Skull from CT step)"
        )
    if low > AIR_BELOW_HU:
        raise InputError(
            f"{name}: the lowest value is {low:g}, but a head CT in Hounsfield units has air at about -1000 HU. "
            "If the scanner values are stored unscaled (0 to 4095), subtract the rescale intercept (usually 1024) "
            "first, or choose a bone threshold in the volume's own units"
        )


def skull_from_ct(
    ct: np.ndarray, threshold_hu: float = DEFAULT_BONE_THRESHOLD_HU, name: str = "input", check: bool = True
) -> np.ndarray:
    """The skull of a CT as a uint8 mask on the CT's grid: voxels >= ``threshold_hu``, largest 26-connected piece.

    Works on any axis order (connectivity does not depend on it). ``check=False`` skips the "is this a CT"
    checks (for volumes in other units); the threshold must still leave some bone.
    """
    if check:
        check_ct(ct, name)
    bone = np.asarray(ct) >= threshold_hu
    if not bone.any():
        raise InputError(
            f"{name}: no voxel is at or above the bone threshold {threshold_hu:g} HU (the CT's maximum is "
            f"{float(np.max(ct)):g}); lower the threshold (--bone-threshold) or check that this is a head CT"
        )
    return largest_component(bone).astype(np.uint8)
