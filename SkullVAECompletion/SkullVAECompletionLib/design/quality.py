"""Quality report of an implant against the defective skull: volume, area, thickness, rim gap and overlap.

All distances are in mm, computed with distance transforms on a crop around the implant (voxel spacing taken
into account). Thickness is the local thickness of the implant (the diameter of the largest ball inside it,
read on its mid-surface): for a plate, its extent along the surface normal.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..options import DISTANCE_ARRAY
from ..preprocessing.geometry import voxel_spacing
from .shaping import Crop, crop_around, edt_mm, outside_region, skull_centre_ras

QUALITY_MARGIN_MM = 6.0  # the crop reaches this far beyond the implant: colours of the distance map saturate below it
THICKNESS_PERCENTILES = (5.0, 50.0, 95.0)
RIM_SECTOR_DEGREES = 5.0  # reported as min / median / max: single ragged edge columns are noise
SIX_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


@dataclass
class QualityReport:
    """How well the implant sits in the skull (the report, not the rim stage's fit, extraction/rim); ``thickness_mm``
    min/max are the 5th/95th percentiles over the implant's mid-surface."""

    volume_ml: float
    area_cm2: float
    thickness_mm: dict[str, float] | None
    rim_gap_mm_max: float
    rim_overlap_mm_max: float
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The keys of the summary JSON's ``fit`` (kept under that name; rounded to 0.01)."""
        thickness = None if self.thickness_mm is None else {k: round(v, 2) for k, v in self.thickness_mm.items()}
        return {
            "volume_ml": round(self.volume_ml, 2),
            "area_cm2": round(self.area_cm2, 2),
            "thickness_mm": thickness,
            "rim_gap_mm_max": round(self.rim_gap_mm_max, 2),
            "rim_overlap_mm_max": round(self.rim_overlap_mm_max, 2),
        }

    def statusText(self) -> str:
        thickness = "thickness unknown" if self.thickness_mm is None else (
            f"thickness {self.thickness_mm['median']:.1f} mm ({self.thickness_mm['min']:.1f}–"
            f"{self.thickness_mm['max']:.1f})")
        return f"implant {self.volume_ml:.1f} ml, {thickness}, rim gap ≤ {self.rim_gap_mm_max:.1f} mm"


def quality_report(
    implant: np.ndarray,
    defective: np.ndarray,
    ijk_to_ras: np.ndarray,
    defect: np.ndarray | None = None,
    surface: Any = None,
) -> QualityReport:
    """Measure ``implant`` against the ``defective`` skull (both (i, j, k) on one grid).

    :param defect: the region the implant is meant to fill (the completion's own implant, before design);
        it tells where the defect's bony edge is and what lies over intact bone. Default: the implant itself.
    :param surface: the implant's surface (vtkPolyData in the same RAS frame): the distance of each vertex to
        the skull is added to it as the point array ``DistanceToSkull_mm`` (the distance map).
    """
    start = time.perf_counter()
    implant = np.asarray(implant)
    if not implant.any():
        raise InputError("the implant is empty: there is nothing to measure")
    defect = implant if defect is None else np.asarray(defect)
    spacing = voxel_spacing(ijk_to_ras)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    crop = crop_around((implant, defect), ijk_to_ras, QUALITY_MARGIN_MM)
    window = crop.slices
    bone = np.asarray(defective[window]).astype(bool)
    part = implant[window].astype(bool) & ~bone
    hole = defect[window].astype(bool)
    warnings: list[str] = []

    centre = skull_centre_ras(defective, ijk_to_ras)
    # The outside of the skull (its leak closings: the longest chain) is found beside the other measures: scipy's
    # distance transforms release the GIL, so the two run on two cores.
    with ThreadPoolExecutor(1) as pool:
        outside_job = pool.submit(outside_region, bone | part, crop, centre)
        to_bone = edt_mm(~bone, crop.spacing)
        if surface is not None:
            add_distance_array(surface, to_bone, crop)
        del to_bone
        mid_surface = _mid_surface(part, crop)
        gap = _rim_gap(part, bone, hole, crop, centre)
        overlap = _rim_overlap(part, bone, hole, crop)
        area = _surface_area_mm2(surface if surface is not None else _surface(implant, ijk_to_ras))
        outside = outside_job.result()
    if outside is None:
        warnings.append("the implant does not close the defect: thickness is measured across the implant")
    thickness = _plate_thickness(part, mid_surface, outside, crop)
    return QualityReport(
        volume_ml=float(np.count_nonzero(part)) * voxel_ml,
        area_cm2=area / 100.0,
        thickness_mm=thickness,
        rim_gap_mm_max=gap,
        rim_overlap_mm_max=overlap,
        seconds=time.perf_counter() - start,
        warnings=warnings,
    )


def _mid_surface(part: np.ndarray, crop: Crop) -> np.ndarray:
    """The implant's mid-surface: the ridge of its distance map."""
    inside = edt_mm(part, crop.spacing)
    return part & (inside >= ndimage.maximum_filter(inside, size=3))


def _plate_thickness(part: np.ndarray, ridge: np.ndarray, outside: np.ndarray | None, crop: Crop
                     ) -> dict[str, float] | None:
    """Thickness along the outer surface's normal, read through the implant's mid-surface (``ridge``).

    The normal at the mid-surface points to the nearest voxel outside the skull (without a known outside: to the
    nearest voxel outside the implant); the thickness is the implant's chord along that line (trilinear,
    sub-voxel). Over a flange that is the flange's own thickness.
    """
    points = np.argwhere(ridge)
    if len(points) == 0:
        return None
    _, feet = edt_mm(~outside if outside is not None else part, crop.spacing, return_indices=True)
    directions = np.stack([f[ridge] for f in feet], axis=1) - points
    del feet
    lengths = np.linalg.norm(directions @ crop.ijk_to_ras[:3, :3].T, axis=1)
    valid = lengths > 0
    points, directions = points[valid], directions[valid] / lengths[valid, None]  # index steps per mm
    chords = _chord_mm(part, points, directions)
    low, middle, high = np.percentile(chords, THICKNESS_PERCENTILES)
    return {"min": float(low), "median": float(middle), "max": float(high)}


def _chord_mm(mask: np.ndarray, points: np.ndarray, directions: np.ndarray, step_mm: float = 0.05,
              reach_mm: float = 25.0) -> np.ndarray:
    """Length (mm) of the run of ``mask`` (trilinear > 0.5) through each point along its direction (both ways)."""
    values = mask.astype(np.float32)
    steps = np.arange(step_mm, reach_mm, step_mm)
    total = np.zeros(len(points))
    for sign in (1.0, -1.0):
        for chunk in range(0, len(points), 4096):  # bounded memory: 4096 lines × 500 samples at a time
            p, d = points[chunk : chunk + 4096], directions[chunk : chunk + 4096]
            samples = p[:, None, :] + sign * steps[None, :, None] * d[:, None, :]
            inside = ndimage.map_coordinates(values, samples.reshape(-1, 3).T, order=1, mode="constant") > 0.5
            run = np.cumprod(inside.reshape(len(p), len(steps)), axis=1).sum(axis=1)  # stop at the first exit
            total[chunk : chunk + 4096] += run * step_mm
    return total + step_mm  # the point itself


def _rim_gap(part: np.ndarray, bone: np.ndarray, hole: np.ndarray, crop: Crop, centre_ras: np.ndarray) -> float:
    """Largest gap along the rim: per position around the defect, the closest approach of the implant to its edge.

    The edge is the bone bordering the defect; positions are 5° sectors around the defect's axis (skull centre to
    the defect). Taking the closest approach per sector means a plate thinner than the bone, which meets only the
    outer table, shows no gap.
    """
    edge = bone & ndimage.binary_dilation(hole, structure=SIX_NEIGHBOURS)
    if not edge.any():
        return 0.0
    gaps = np.maximum(edt_mm(~part, crop.spacing)[edge] - float(crop.spacing.min()), 0.0)  # face neighbours: 0
    matrix = crop.ijk_to_ras
    points = np.argwhere(edge) @ matrix[:3, :3].T + matrix[:3, 3]
    hole_centre = np.argwhere(hole).mean(axis=0) @ matrix[:3, :3].T + matrix[:3, 3]
    axis = hole_centre - centre_ras
    axis /= max(float(np.linalg.norm(axis)), 1e-6)
    first = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    first /= np.linalg.norm(first)
    second = np.cross(axis, first)
    offsets = points - hole_centre
    angle = np.arctan2(offsets @ second, offsets @ first)
    sector = np.floor((angle + np.pi) / np.radians(RIM_SECTOR_DEGREES)).astype(int)
    closest = np.full(sector.max() + 1, np.inf)
    np.minimum.at(closest, sector, gaps)
    return float(closest[np.isfinite(closest)].max())


def _rim_overlap(part: np.ndarray, bone: np.ndarray, hole: np.ndarray, crop: Crop) -> float:
    """How far the implant lies on the intact bone beyond the defect (a flange's width), at most."""
    on_bone = part & ~hole & ndimage.binary_dilation(bone, structure=np.ones((3, 3, 3), dtype=bool))
    if not on_bone.any():
        return 0.0
    return float(edt_mm(~hole, crop.spacing)[on_bone].max())


def add_distance_array(surface: Any, to_bone: np.ndarray, crop: Crop) -> np.ndarray:
    """Add the distance (mm) of each surface vertex to the skull's surface as the point array DistanceToSkull_mm."""
    from vtkmodules.util import numpy_support

    points = numpy_support.vtk_to_numpy(surface.GetPoints().GetData()).astype(float)
    inverse = np.linalg.inv(crop.ijk_to_ras)
    ijk = points @ inverse[:3, :3].T + inverse[:3, 3]
    centres = ndimage.map_coordinates(to_bone.astype(np.float32), ijk.T, order=1, mode="nearest")
    # Voxel centre to bone surface: half a voxel less; vertices on the bone read 0.
    distance = np.maximum(centres - 0.5 * float(np.mean(crop.spacing)), 0.0).astype(np.float32)
    array = numpy_support.numpy_to_vtk(distance, deep=True)
    array.SetName(DISTANCE_ARRAY)
    surface.GetPointData().AddArray(array)
    surface.GetPointData().SetActiveScalars(DISTANCE_ARRAY)
    return distance


def _surface(implant: np.ndarray, ijk_to_ras: np.ndarray) -> Any:
    from ..imageio.surfaces import mask_to_surface

    return mask_to_surface(implant, ijk_to_ras)


def _surface_area_mm2(surface: Any) -> float:
    from vtkmodules.vtkFiltersCore import vtkMassProperties, vtkTriangleFilter

    triangles = vtkTriangleFilter()
    triangles.SetInputData(surface)
    properties = vtkMassProperties()
    properties.SetInputConnection(triangles.GetOutputPort())
    properties.Update()
    return float(properties.GetSurfaceArea())
