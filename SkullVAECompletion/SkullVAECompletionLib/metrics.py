"""AutoImplant-style implant metrics: DSC, boundary DSC (10 mm) and HD95 in mm, spacing-aware.

Each metric works on the bounding box of the masks involved (plus a margin), never on whole volumes.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from .geometry import nonzero_bounds


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity coefficient of two masks (1.0 when both are empty)."""
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    total = np.count_nonzero(prediction) + np.count_nonzero(truth)
    if total == 0:
        return 1.0
    return 2.0 * np.count_nonzero(prediction & truth) / total


def _union_box(masks: list[np.ndarray], margin: np.ndarray) -> tuple[slice, ...] | None:
    boxes = [b for b in (nonzero_bounds(m) for m in masks) if b is not None]
    if not boxes:
        return None
    lo = np.min([b[0] for b in boxes], axis=0) - margin
    hi = np.max([b[1] for b in boxes], axis=0) + margin
    shape = np.asarray(masks[0].shape)
    lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def boundary_dice(
    prediction: np.ndarray,
    truth: np.ndarray,
    defective: np.ndarray,
    spacing: np.ndarray | tuple[float, float, float],
    distance_mm: float = 10.0,
) -> float:
    """Dice restricted to voxels within ``distance_mm`` of the defective skull (AutoImplant bDSC)."""
    spacing = np.asarray(spacing, dtype=float)
    margin = np.ceil(distance_mm / spacing).astype(int) + 1
    box = _union_box([np.asarray(prediction), np.asarray(truth)], margin)
    if box is None:
        return 1.0
    near = ndimage.distance_transform_edt(~np.asarray(defective[box], dtype=bool), sampling=spacing) <= distance_mm
    return dice(np.asarray(prediction[box], bool) & near, np.asarray(truth[box], bool) & near)


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: np.ndarray | tuple[float, float, float]) -> float:
    """95th percentile of the symmetric surface distances in mm (MONAI); inf when one mask is empty."""
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    has_prediction, has_truth = prediction.any(), truth.any()
    if not has_prediction and not has_truth:
        return 0.0
    if not has_prediction or not has_truth:
        return float("inf")
    box = _union_box([prediction, truth], np.full(3, 2))
    as_tensor = [torch.from_numpy(np.ascontiguousarray(m[box]))[None, None] for m in (prediction, truth)]
    distance = compute_hausdorff_distance(
        as_tensor[0], as_tensor[1], include_background=True, percentile=95, spacing=[float(s) for s in spacing]
    )
    return float(distance.reshape(-1)[0])


def implant_metrics(
    prediction: np.ndarray,
    truth: np.ndarray,
    defective: np.ndarray,
    spacing: np.ndarray | tuple[float, float, float],
) -> dict[str, float]:
    """The three AutoImplant figures for one case."""
    return {
        "dsc": dice(prediction, truth),
        "bdsc": boundary_dice(prediction, truth, defective, spacing),
        "hd95": hd95(prediction, truth, spacing),
    }
