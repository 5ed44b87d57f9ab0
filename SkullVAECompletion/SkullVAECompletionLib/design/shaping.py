"""Implant design for surgery planning: plate thickness, flange, clearance and rounded edges.

Works on the full-resolution implant mask (uint8, (i, j, k) on the input grid, 4×4 IJK→RAS) and the defective
skull. Every step runs on a crop around the implant (never a full-volume float copy) with distance transforms
in millimetres (``distance_transform_edt(sampling=spacing)``), so distances are right on anisotropic grids.

Terms used below, all on the crop:

* *solid*: bone ∪ implant. *outside*: the background components of the crop that lie farther from the skull's
  centre than the solid (air around the head); everything else (the solid, the cranial cavity, pockets in the
  bone) is *inside the outer surface*.
* The distance to *outside* is depth below the outer surface, measured along the surface normal (the nearest
  outside point of a voxel is its foot on the outer surface). Its foot tells which column a voxel belongs to:
  the implant's columns are those whose foot touches the implant.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..errors import InputError
from ..masks import FULLY_CONNECTED, keep_large_components, nonzero_bounds, skull_centre_voxel
from ..options import DesignOptions  # torch- and scipy-free: the module builds it before the engine loads
from ..preprocessing.geometry import voxel_spacing

CLOSE_LEAKS_MM = (0.0, 1.5, 3.0, 5.0)  # closing radii tried when the implant does not seal the defect
RAY_CONE_COS = 0.5  # ray-based outside: rays within 60° of the implant's direction
MIN_SIDE_FRACTION = 0.05  # outside and inside each hold at least this share of the crop's background


@dataclass
class DesignResult:
    """The designed implant (uint8, input grid) and what it took."""

    implant: np.ndarray
    options: DesignOptions
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Crop:
    """A box of the input grid (index slices) and its voxel size; distance work happens on such boxes."""

    lo: np.ndarray
    hi: np.ndarray
    spacing: np.ndarray
    ijk_to_ras: np.ndarray  # of the box's voxel (0, 0, 0)

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(int(a), int(b)) for a, b in zip(self.lo, self.hi, strict=True))

    @property
    def surface_offset_mm(self) -> float:
        """Depth of the voxelised surface below the nearest outside voxel centre, on average.

        Half a voxel for a face aligned with the grid, nearly 0 for an oblique one (among many lateral
        candidates, the nearest outside centre lies almost on the surface). A quarter of the mean spacing gave
        plates within 0.05 mm of the requested thickness on curved shells at 0.4 and 0.8 mm voxels.
        """
        return 0.25 * float(np.mean(self.spacing))


def crop_around(mask: np.ndarray | tuple[np.ndarray, ...], ijk_to_ras: np.ndarray, margin_mm: float) -> Crop | None:
    """The bounding box of a mask (or of several on one grid: of their union, without making it) grown by
    ``margin_mm`` (clipped to the volume); None when all are empty."""
    masks = mask if isinstance(mask, tuple) else (mask,)
    boxes = [b for b in map(nonzero_bounds, masks) if b is not None]
    if not boxes:
        return None
    bounds = (np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0))
    spacing = voxel_spacing(ijk_to_ras)
    margin = np.ceil(margin_mm / spacing).astype(int) + 2
    lo = np.maximum(bounds[0] - margin, 0)
    hi = np.minimum(bounds[1] + margin, np.asarray(masks[0].shape))
    matrix = np.asarray(ijk_to_ras, dtype=float).copy()
    matrix[:3, 3] = matrix[:3, :3] @ lo + matrix[:3, 3]
    return Crop(lo, hi, spacing, matrix)


def skull_centre_ras(defective: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Centre of the skull's bounding box in RAS (the cranial cavity, not biased by the face's mass)."""
    try:
        centre_ijk = skull_centre_voxel(defective, step=4)  # a strided look is enough for a centre
    except ValueError:
        raise InputError("the defective skull is empty: there is no bone to design an implant against") from None
    return np.asarray(ijk_to_ras, dtype=float)[:3, :3] @ centre_ijk + np.asarray(ijk_to_ras, dtype=float)[:3, 3]


def edt_mm(mask: np.ndarray, spacing: np.ndarray, **kwargs: Any) -> Any:
    """Distance (mm) of every True voxel to the nearest False voxel centre."""
    return ndimage.distance_transform_edt(mask, sampling=spacing, **kwargs)


def outside_region(solid: np.ndarray, crop: Crop, centre_ras: np.ndarray) -> np.ndarray | None:
    """Background of the crop that lies outside the skull's outer surface; None if inside and outside touch.

    Background components touching the crop's border are outside when they lie farther from the skull's centre
    than the solid does, inside (cavity) otherwise; enclosed pockets are inside. A completion that does not seal
    the defect joins the two: small leaks are closed (up to 5 mm); a larger one gives None.
    """
    to_solid = None  # the distance to the solid: one transform serves every closing radius
    for radius_mm in CLOSE_LEAKS_MM:
        if radius_mm > 0 and to_solid is None:
            to_solid = edt_mm(~solid, crop.spacing)
        closed = solid if radius_mm == 0 else _close(solid, crop.spacing, radius_mm, to_solid)
        labels, count = ndimage.label(~closed)
        if count < 2:
            continue
        border = np.zeros(count + 1, dtype=bool)
        for axis in range(3):
            for index in (0, -1):
                border[np.unique(np.take(labels, index, axis=axis))] = True
        border[0] = False
        step = 2  # radii on a strided subsample: the comparison of means needs no more
        sub = labels[::step, ::step, ::step]
        radius = _radius_mm(sub.shape, crop, centre_ras, step)
        counts = np.bincount(sub.ravel(), minlength=count + 1)[1:]
        sums = np.bincount(sub.ravel(), weights=radius.ravel(), minlength=count + 1)[1:]
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)  # tiny pockets may miss the subsample
        solid_radius = float(radius[closed[::step, ::step, ::step]].mean())
        outer = border[1:] & (np.nan_to_num(means, nan=-np.inf) > solid_radius)
        inner = border[1:] & (np.nan_to_num(means, nan=np.inf) <= solid_radius)
        # Both sides must be real regions: a small pocket at the crop's edge is no "outside" of a leaking skull.
        background = max(int(counts.sum()), 1)
        if counts[outer].sum() >= MIN_SIDE_FRACTION * background and \
                counts[inner].sum() >= MIN_SIDE_FRACTION * background:
            keep = np.zeros(count + 1, dtype=bool)
            keep[1:] = outer
            return keep[labels]
    return None


def outside_by_rays(solid: np.ndarray, crop: Crop, centre_ras: np.ndarray, part: np.ndarray) -> np.ndarray | None:
    """Outside as "beyond the solid's outermost voxel along the ray from the skull's centre" (leaks allowed).

    Rays are binned on the plane tangent to the implant's direction (gnomonic projection, no pole near the
    implant); a ray with no solid (the leak) takes the outer radius of the nearest ray that has one.
    """
    to_ras = crop.ijk_to_ras
    solid_points = np.argwhere(solid) @ to_ras[:3, :3].T + to_ras[:3, 3] - centre_ras
    axis = (np.argwhere(part).mean(axis=0) @ to_ras[:3, :3].T + to_ras[:3, 3]) - centre_ras
    axis /= max(float(np.linalg.norm(axis)), 1e-6)
    first = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    first /= np.linalg.norm(first)
    second = np.cross(axis, first)
    bin_size = float(crop.spacing.mean()) / max(float(np.linalg.norm(solid_points, axis=1).mean()), 1.0)

    def bins_of(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        along = points @ axis
        ahead = along > RAY_CONE_COS * np.linalg.norm(points, axis=1)  # the rays through the implant's region
        u = np.where(ahead, (points @ first) / np.maximum(along, 1e-3), 0.0)
        v = np.where(ahead, (points @ second) / np.maximum(along, 1e-3), 0.0)
        return np.floor(u / bin_size).astype(np.int64), np.floor(v / bin_size).astype(np.int64), ahead

    u, v, ahead = bins_of(solid_points)
    if not ahead.any():
        return None
    lo_u, lo_v = u[ahead].min(), v[ahead].min()
    shape = (int(u[ahead].max() - lo_u + 1), int(v[ahead].max() - lo_v + 1))
    outer = np.full(shape, -1.0)
    np.maximum.at(outer, (u[ahead] - lo_u, v[ahead] - lo_v), np.linalg.norm(solid_points[ahead], axis=1))
    empty = outer < 0
    if empty.all():
        return None
    if empty.any():  # rays through the leak: the outer radius of the nearest ray with bone or implant
        nearest = ndimage.distance_transform_edt(empty, return_indices=True)[1]
        outer = outer[nearest[0], nearest[1]]
    background = np.argwhere(~solid)
    points = background @ to_ras[:3, :3].T + to_ras[:3, 3] - centre_ras
    u, v, ahead = bins_of(points)
    u = np.clip(u - lo_u, 0, shape[0] - 1)
    v = np.clip(v - lo_v, 0, shape[1] - 1)
    beyond = ahead & (np.linalg.norm(points, axis=1) > outer[u, v])
    outside = np.zeros_like(solid)
    outside[tuple(background[beyond].T)] = True
    return outside


def _close(mask: np.ndarray, spacing: np.ndarray, radius_mm: float, to_mask: np.ndarray | None = None) -> np.ndarray:
    """Morphological closing with a ball; ``to_mask``: the distance (mm) to ``mask`` when already known."""
    grown = (edt_mm(~mask, spacing) if to_mask is None else to_mask) <= radius_mm
    return ~(edt_mm(grown, spacing) <= radius_mm) | mask


def _radius_mm(shape: tuple[int, ...], crop: Crop, centre_ras: np.ndarray, step: int) -> np.ndarray:
    """Distance (mm, float32) of each voxel centre of a strided crop to the skull's centre."""
    axes = [np.arange(n, dtype=np.float32) * step for n in shape]
    matrix = crop.ijk_to_ras.astype(np.float32)
    total = np.zeros(shape, dtype=np.float32)
    for row in range(3):
        coordinate = (
            matrix[row, 0] * axes[0][:, None, None]
            + matrix[row, 1] * axes[1][None, :, None]
            + matrix[row, 2] * axes[2][None, None, :]
            + (matrix[row, 3] - np.float32(centre_ras[row]))
        )
        total += coordinate * coordinate
    return np.sqrt(total)


def design_implant(
    implant: np.ndarray,
    defective: np.ndarray,
    ijk_to_ras: np.ndarray,
    options: DesignOptions | None = None,
) -> DesignResult:
    """Apply the design options to ``implant`` (None: the defaults, which change nothing); returns the designed implant
    on the same grid (uint8).

    :raises InputError: when the implant does not seal the defect (thickness and flange need the outer surface).
    """
    options = options or DesignOptions()
    timings: dict[str, float] = {}
    warnings: list[str] = []
    if not options.changes_shape or not np.any(implant):
        return DesignResult(np.asarray(implant, dtype=np.uint8), options, timings)
    start = time.perf_counter()
    margin = max(options.thickness_mm or 0.0, options.flange_mm + options.flange_thickness_mm, options.clearance_mm)
    crop = crop_around(implant, ijk_to_ras, margin + 3 * options.edge_radius_mm)
    window = crop.slices
    bone = np.asarray(defective[window]).astype(bool)
    part = np.asarray(implant[window]).astype(bool) & ~bone
    outside = None
    if options.thickness_mm is not None or options.flange_mm > 0:
        centre = skull_centre_ras(defective, ijk_to_ras)
        outside = outside_region(bone | part, crop, centre)
        if outside is None:
            outside = outside_by_rays(bone | part, crop, centre, part)
            if outside is not None:
                warnings.append("the implant does not seal the defect: its outer surface was taken along rays from "
                                "the skull's centre; check the result")
        if outside is None:
            raise InputError(
                "the implant does not close the defect (the space outside the skull and the cranial cavity meet "
                "through it), so its outer surface is unknown: thickness and flange cannot be designed. "
                "Complete the skull again (another γ or method) or design without --thickness/--flange"
            )
    timings["surfaces"] = time.perf_counter() - start
    if options.thickness_mm is not None:
        tic = time.perf_counter()
        part = plate_of_thickness(part, bone, outside, crop, options.thickness_mm)
        timings["thickness"] = time.perf_counter() - tic
    flange = np.zeros_like(part)
    if options.flange_mm > 0:
        tic = time.perf_counter()
        flange = flange_layer(part, outside, crop, options.flange_mm, options.flange_thickness_mm)
        part |= flange
        timings["flange"] = time.perf_counter() - tic
    if options.edge_radius_mm > 0:
        tic = time.perf_counter()
        part = round_edges(part, bone, crop, options.edge_radius_mm, keep_bone_contact=options.clearance_mm == 0)
        timings["rounding"] = time.perf_counter() - tic
    if options.clearance_mm > 0:
        tic = time.perf_counter()
        exempt = (outside & part) if options.flange_mm > 0 else None  # the flange rests on the outer table
        part = apply_clearance(part, bone, crop, options.clearance_mm, exempt)
        timings["clearance"] = time.perf_counter() - tic
    part &= ~bone
    part = keep_large_components(part, structure=FULLY_CONNECTED)
    if not part.any():
        warnings.append("the designed implant is empty (the clearance or thickness removed all of it); "
                        "check the options")
    designed = np.zeros(np.shape(implant), dtype=np.uint8)
    designed[window] = part
    timings["total"] = time.perf_counter() - start
    return DesignResult(designed, options, timings, warnings)


def plate_of_thickness(
    part: np.ndarray, bone: np.ndarray, outside: np.ndarray, crop: Crop, thickness_mm: float
) -> np.ndarray:
    """A plate under the implant's outer surface, ``thickness_mm`` deep along the normal (bone excluded)."""
    depth, feet = edt_mm(~outside, crop.spacing, return_indices=True)
    # The implant's columns: their foot on the outer surface touches the implant.
    touching = outside & ndimage.binary_dilation(part, structure=np.ones((3, 3, 3), dtype=bool))
    in_column = touching[feet[0], feet[1], feet[2]]
    del feet
    # A voxel belongs to the plate when its centre is less than the thickness below the surface.
    return ~outside & ~bone & in_column & (depth < thickness_mm + crop.surface_offset_mm)


def flange_layer(
    part: np.ndarray, outside: np.ndarray, crop: Crop, flange_mm: float, flange_thickness_mm: float
) -> np.ndarray:
    """The layer lying on the outer surface over the implant and over the bone within ``flange_mm`` of it.

    Only the thin shell of candidates near the surface is measured (nearest-neighbour queries in mm), not the
    whole crop: two full distance transforms of the crop cost about three times as much.
    """
    cube = np.ones((3, 3, 3), dtype=bool)
    height_mm = flange_thickness_mm + crop.surface_offset_mm
    # Candidates: outside voxels within the layer's height of the solid (a cube step reaches at least a voxel).
    reach_steps = int(math.ceil(height_mm / crop.spacing.min()))
    candidates = outside & ndimage.binary_dilation(~outside, structure=cube, iterations=reach_steps)
    floor = ~outside & ndimage.binary_dilation(outside, structure=cube)  # solid voxels on the outer surface
    points = np.argwhere(candidates)
    height = _nearest_mm(np.argwhere(floor), points, crop, height_mm)
    points = points[height < height_mm]
    # The flange's width: distance from the implant (its outer surface and rim) across the bone.
    rim = part & ndimage.binary_dilation(~part, structure=cube)
    width = _nearest_mm(np.argwhere(rim), points, crop, flange_mm + crop.surface_offset_mm)
    layer = np.zeros_like(part)
    inside_width = points[width <= flange_mm + crop.surface_offset_mm]
    layer[tuple(inside_width.T)] = True
    return layer


def _nearest_mm(sources: np.ndarray, targets: np.ndarray, crop: Crop, limit_mm: float) -> np.ndarray:
    """Distance (mm) from each target voxel to the nearest source voxel (inf beyond ``limit_mm``)."""
    if len(sources) == 0 or len(targets) == 0:
        return np.full(len(targets), np.inf)
    to_mm = crop.ijk_to_ras[:3, :3].T  # directions and spacing: distances right on any grid
    tree = cKDTree(sources @ to_mm)
    distance, _ = tree.query(targets @ to_mm, distance_upper_bound=limit_mm + 1e-6, workers=-1)
    return distance


def round_edges(
    part: np.ndarray, bone: np.ndarray, crop: Crop, radius_mm: float, keep_bone_contact: bool = True
) -> np.ndarray:
    """Round the implant's free edges by Gaussian smoothing of width ``radius_mm`` (threshold at one half).

    With ``keep_bone_contact`` the bone is smoothed together with the implant, so faces that rest on the bone
    stay where they are (no groove along the rim) and concave corners against the bone get a small fillet.
    """
    sigma = radius_mm / crop.spacing
    near = ndimage.binary_dilation(part, iterations=int(math.ceil(2 * radius_mm / crop.spacing.min())))
    source = (part | (bone & near)) if keep_bone_contact else part
    smooth = ndimage.gaussian_filter(source.view(np.uint8), sigma, output=np.float32)
    return (smooth > 0.5) & near & ~bone


def apply_clearance(
    part: np.ndarray, bone: np.ndarray, crop: Crop, clearance_mm: float, exempt: np.ndarray | None = None
) -> np.ndarray:
    """Remove implant voxels whose centre is within ``clearance_mm`` of a bone voxel centre (``exempt``: kept)."""
    distance = edt_mm(~bone, crop.spacing)
    keep = distance > clearance_mm
    if exempt is not None:
        keep |= exempt
    return part & keep


def apply_design(result: Any, ijk_to_ras: np.ndarray, options: DesignOptions) -> tuple[Any, DesignResult]:
    """A :class:`~SkullVAECompletionLib.inference.results.CompletionResult` with the design applied against the skull
    it completed (``result.defective``).

    Returns a copy of ``result`` with the designed implant, completed = defective ∪ implant, the new implant
    volume, and the :class:`DesignResult`. Default options return ``result`` itself.
    """
    designed = design_implant(result.implant, result.defective, ijk_to_ras, options)
    if not options.changes_shape:
        return result, designed
    voxel_ml = float(np.prod(voxel_spacing(ijk_to_ras))) / 1000.0
    # completed = defective ∪ the designed implant, made when it is used
    volume_ml = float(np.count_nonzero(designed.implant)) * voxel_ml
    return dataclasses.replace(result, implant=designed.implant, implant_volume_ml=volume_ml,
                               warnings=[*result.warnings, *designed.warnings]), designed
