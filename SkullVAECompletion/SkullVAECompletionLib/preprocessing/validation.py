"""Checks on an input skull mask, each failing with a message that says what to do."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .geometry import nonzero_bounds, voxel_spacing

MIN_SKULL_EXTENT_MM = 80.0  # the smallest adult/child skull is well above this in every direction
MIN_BONE_VOLUME_ML = 20.0  # an adult skull holds roughly 400–800 ml of bone
MAX_FILL_FRACTION = 0.6  # a skull is a shell: it never fills most of its field of view
MAX_LABELS_LISTED = 12
# The engine keeps the input, the completed skull and the implant at full resolution (plus the result's copies
# in Slicer): about 8 bytes per input voxel at the peak. 2**28 voxels (e.g. 640 × 640 × 655) stays near 2 GB;
# larger volumes are refused before anything is read or allocated, with what to do instead.
MAX_INPUT_VOXELS = 2**28
FROM_CT_HINT = (
    "Extract the skull first: command line --from-ct (bone threshold --bone-threshold, default 300 HU), "
    "Slicer: the Skull from CT step, or Segment Editor Threshold ≥ 300 HU and pass the segmentation"
)


def validate_geometry(ijk_to_ras: np.ndarray, name: str = "input") -> np.ndarray:
    matrix = np.asarray(ijk_to_ras, dtype=float)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputError(f"{name}: the IJK→RAS matrix must be a finite 4×4 matrix, got shape {matrix.shape}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-9:
        raise InputError(f"{name}: the IJK→RAS matrix is singular (zero spacing?); fix the volume's geometry")
    return matrix


def check_volume_size(shape: tuple[int, ...], name: str = "input") -> None:
    """Refuse volumes too large to complete within the memory budget (cheap: looks at the shape only)."""
    voxels = int(np.prod(np.asarray(shape, dtype=np.int64)))
    if voxels > MAX_INPUT_VOXELS:
        raise InputError(
            f"{name}: the volume has {voxels / 1e6:.0f} million voxels ({' × '.join(str(int(s)) for s in shape)}), "
            f"more than the {MAX_INPUT_VOXELS / 1e6:.0f} million this tool completes within about 2 GB of memory. "
            "Crop it to the head or resample it to coarser voxels (0.5 mm is plenty; Slicer: Crop Volume "
            "with a spacing scale of 2)"
        )


def validate_mask(
    mask: np.ndarray, ijk_to_ras: np.ndarray, name: str = "input", label: int | None = None
) -> np.ndarray:
    """Return the skull as a bool array (a view when possible), or raise :class:`InputError`.

    ``label`` picks one label of a multi-label map.
    """
    matrix = validate_geometry(ijk_to_ras, name)
    array = np.asarray(mask)
    if array.ndim != 3 or min(array.shape) < 2:
        raise InputError(
            f"{name}: a 3D volume is needed, got an image of shape {array.shape}; "
            "load the whole CT series (not a single slice) and segment the skull in 3D"
        )
    check_volume_size(array.shape, name)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{name}: unsupported voxel type {array.dtype}; use an integer label map")
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise InputError(f"{name}: the volume contains NaN values; it is not a valid mask")
    binary = _to_binary(array, name, label)
    bounds = nonzero_bounds(binary)
    if bounds is None:
        raise InputError(f"{name}: the skull mask is empty; segment the skull (e.g. Threshold ≥ 300 HU) first")
    spacing = voxel_spacing(matrix)
    field_mm = np.asarray(array.shape) * spacing
    if np.any(field_mm < MIN_SKULL_EXTENT_MM):
        raise InputError(
            f"{name}: the volume is only {_mm(field_mm)} mm across, too small to hold a skull "
            f"(needs ≥ {MIN_SKULL_EXTENT_MM:.0f} mm in every direction)"
        )
    lo, hi = bounds
    extent_mm = (hi - lo) * spacing
    voxels = int(np.count_nonzero(binary))
    volume_ml = voxels * float(np.prod(spacing)) / 1000.0
    if np.any(extent_mm < MIN_SKULL_EXTENT_MM) or volume_ml < MIN_BONE_VOLUME_ML:
        raise InputError(
            f"{name}: the mask ({voxels} voxels, {volume_ml:.1f} ml, {_mm(extent_mm)} mm) is too small to be a skull; "
            f"a skull is ≥ {MIN_SKULL_EXTENT_MM:.0f} mm across and ≥ {MIN_BONE_VOLUME_ML:.0f} ml of bone — "
            "check that the right segment or label was chosen"
        )
    fill = voxels / float(np.prod(hi - lo))
    if fill > MAX_FILL_FRACTION:
        raise InputError(
            f"{name}: the mask fills {100 * fill:.0f}% of its bounding box; a skull is a thin shell. "
            "This looks like a head or a filled region, not a bone segmentation — segment the skull bone"
        )
    return binary


def _to_binary(array: np.ndarray, name: str, label: int | None) -> np.ndarray:
    if array.dtype == np.bool_:
        return array
    low, high = array.min(), array.max()
    if label is not None:
        if not np.any(array == label):
            raise InputError(f"{name}: label {label} does not occur in the volume; labels present: {_labels(array)}")
        return array == label
    if low < 0:
        raise InputError(
            f"{name}: values range from {low:g} to {high:g}; this looks like a CT intensity image, not a mask. "
            f"{FROM_CT_HINT}"
        )
    if high == 0:
        return array.astype(bool)  # empty: reported by the caller
    if high == 1 and array.dtype.kind in "iu":
        # Integers within [0, 1] are binary: skip the (slow) full check below; bytes 0/1 are read as bool in place.
        return array.view(bool) if array.itemsize == 1 else array.astype(bool)
    # One pass: anything that is neither 0 nor the maximum makes it non-binary.
    if np.any((array != 0) & (array != high)):
        values = _labels(array)
        is_integral = array.dtype.kind in "biu" or np.all(np.mod(values, 1) == 0)
        if not is_integral or len(values) > MAX_LABELS_LISTED:
            raise InputError(
                f"{name}: values range from {low:g} to {high:g} with many levels; this looks like an intensity image, "
                f"not a binary mask. {FROM_CT_HINT}"
            )
        raise InputError(
            f"{name}: the label map holds several labels {[int(v) for v in values if v]}; "
            "choose the skull's label (CLI: --label N; Slicer: pick the skull segment)"
        )
    return array == high


def _labels(array: np.ndarray) -> np.ndarray:
    # A strided sample is enough to name the labels and keeps this fast on big volumes.
    sample = array[::2, ::2, ::2]
    values = np.unique(sample)
    return values[: MAX_LABELS_LISTED + 1]


def _mm(values: np.ndarray) -> str:
    return " × ".join(f"{v:.0f}" for v in values)
