"""AutoImplant-style implant metrics: DSC, boundary DSC (10 mm) and HD95 in mm, spacing-aware.

Each metric works on the bounding box of the masks involved (plus a margin), never on whole volumes.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from .preprocessing.geometry import nonzero_bounds


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


def defect_fill(decoded: np.ndarray, defect: np.ndarray) -> float:
    """Share of the defect's voxels where the decoded skull has bone (both masks on the same grid; NaN without a
    defect). Strict: bone decoded one voxel too far out or in counts as missing."""
    defect = np.asarray(defect, dtype=bool)
    if not defect.any():
        return float("nan")
    return float(np.count_nonzero(np.asarray(decoded, dtype=bool) & defect) / np.count_nonzero(defect))


def defect_area_fill(decoded: np.ndarray, defect: np.ndarray, skull: np.ndarray, bin_deg: float = 4.0,
                     depth_tolerance: float = 1.0) -> float:
    """Share of the defect's *area* the decoded skull closes: the defect's directions seen from the cranial centre
    (``bin_deg`` bins of azimuth and elevation, weighted by the defect's voxels) in which the decode has bone at
    the defect's depth (± ``depth_tolerance`` voxels). NaN without a defect.

    Unlike :func:`defect_fill` this does not count a decoded shell that lies a voxel off the true one as a hole:
    it asks whether the hole is closed, which is what the rim-conforming stage needs from the decode.
    ``skull`` (the input) places the cranial centre; masks on an isotropic RAS-aligned grid (the model grid).
    """
    from .inference.regions import cranial_centre_voxel

    defect = np.asarray(defect, dtype=bool)
    if not defect.any():
        return float("nan")
    centre = cranial_centre_voxel(np.asarray(skull, dtype=bool) | defect)

    def polar(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.argwhere(mask) - centre
        radius = np.linalg.norm(offsets, axis=1)
        azimuth = np.degrees(np.arctan2(offsets[:, 0], offsets[:, 1]))
        elevation = np.degrees(np.arcsin(np.clip(offsets[:, 2] / np.maximum(radius, 1e-9), -1, 1)))
        columns = int(np.ceil(360.0 / bin_deg))
        key = np.floor((elevation + 90.0) / bin_deg).astype(np.int64) * columns + np.floor(
            (azimuth + 180.0) / bin_deg).astype(np.int64)
        return key, radius

    defect_key, defect_radius = polar(defect)
    bone_key, bone_radius = polar(np.asarray(decoded, dtype=bool))
    keys, inverse, counts = np.unique(defect_key, return_inverse=True, return_counts=True)
    low = np.full(len(keys), np.inf)
    high = np.full(len(keys), -np.inf)
    np.minimum.at(low, inverse, defect_radius)
    np.maximum.at(high, inverse, defect_radius)
    slot = np.searchsorted(keys, bone_key)
    in_defect_bin = (slot < len(keys)) & (keys[np.minimum(slot, len(keys) - 1)] == bone_key)
    slot, radius = slot[in_defect_bin], bone_radius[in_defect_bin]
    at_depth = (radius >= low[slot] - depth_tolerance) & (radius <= high[slot] + depth_tolerance)
    closed = np.zeros(len(keys), dtype=bool)
    closed[slot[at_depth]] = True
    return float(counts[closed].sum() / counts.sum())


RIM_DISTANCE_BINS_MM = (0.0, 5.0, 10.0, 20.0, 40.0, float("inf"))


def _bin_label(lo: float, hi: float) -> str:
    return f">{lo:g}" if not np.isfinite(hi) else f"{lo:g}-{hi:g}"


def error_by_rim_distance(
    prediction: np.ndarray,
    truth: np.ndarray,
    defective: np.ndarray,
    spacing: np.ndarray | tuple[float, float, float],
    bins_mm: tuple[float, ...] = RIM_DISTANCE_BINS_MM,
) -> list[dict[str, float | str]]:
    """How the implant's error grows away from the defect's rim: per band of distance from the defective skull's bone
    (``bins_mm`` edges, mm), the voxels where prediction and truth disagree and the surface error.

    Per band: ``truth_ml`` and ``disagreement_ml`` (voxels in one mask only), ``dice`` within the band (NaN where
    neither mask has voxels), and the symmetric surface distance of the boundary voxels of either mask lying in the
    band to the other mask's boundary (``surface_mean_mm``, ``surface_p95_mm``, NaN without such voxels or when one
    mask is empty). Far from the rim only the shape prior guides the implant: this says how far it holds.
    """
    spacing = np.asarray(spacing, dtype=float)
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    edges = np.asarray(bins_mm, dtype=float)
    # The rim lies next to the implant: the masks' box plus a few voxels holds it (never the whole volume).
    box = _union_box([prediction, truth], np.full(3, 3)) or (slice(0, 1),) * 3
    prediction, truth = prediction[box], truth[box]
    bone = np.asarray(defective[box], dtype=bool)
    rim_distance = (ndimage.distance_transform_edt(~bone, sampling=spacing) if bone.any()
                    else np.full(bone.shape, np.inf))
    rows: list[dict[str, float | str]] = []
    # Boundary voxels of each mask and, for each, its distance to the other mask's boundary.
    surfaces = [mask & ~ndimage.binary_erosion(mask) for mask in (prediction, truth)]
    to_other = [np.full(mask.shape, np.nan) if not surfaces[1 - k].any() else
                ndimage.distance_transform_edt(~surfaces[1 - k], sampling=spacing) for k, mask in
                enumerate((prediction, truth))]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = (rim_distance >= lo) & (rim_distance < hi)
        in_prediction, in_truth = prediction & band, truth & band
        total = np.count_nonzero(in_prediction) + np.count_nonzero(in_truth)
        distances = np.concatenate([to_other[k][surfaces[k] & band] for k in range(2)])
        distances = distances[np.isfinite(distances)]
        rows.append({
            "band_mm": _bin_label(lo, hi), "from_mm": float(lo), "to_mm": float(hi),
            "truth_ml": np.count_nonzero(in_truth) * voxel_ml,
            "disagreement_ml": np.count_nonzero(in_prediction ^ in_truth) * voxel_ml,
            "dice": 2.0 * np.count_nonzero(in_prediction & in_truth) / total if total else float("nan"),
            "surface_mean_mm": float(distances.mean()) if distances.size else float("nan"),
            "surface_p95_mm": float(np.percentile(distances, 95)) if distances.size else float("nan"),
        })
    return rows
