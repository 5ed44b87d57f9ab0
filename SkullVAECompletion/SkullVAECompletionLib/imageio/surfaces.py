"""Surfaces: mask → surface (VTK), decimation within a tolerance, topology and self-intersection checks,
Hausdorff distance, STL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..masks import nonzero_bounds
from .atomic import _atomic_target
from .volumes import LPS_TO_RAS


def mask_to_surface(mask: np.ndarray, ijk_to_ras: np.ndarray, smoothing_iterations: int = 20,
                    field: list[tuple[np.ndarray, np.ndarray]] | None = None):
    """Closed triangle surface (vtkPolyData, RAS mm) of a binary mask, smoothed without shrinking.

    ``field``: [(block, lo corner)] of signed fields that are > 0 exactly on the mask's voxels inside each block (the
    rim-conforming stage's, :class:`~..extraction.rim.RimFit`): the surface is then their zero level set, sub-voxel and
    unsmoothed, so the STL follows the same surfaces the voxels were cut from.
    """
    from vtkmodules.vtkFiltersCore import vtkAppendPolyData, vtkPolyDataNormals

    if nonzero_bounds(mask) is None:
        raise InputError("the implant is empty; there is no surface to export")
    if field:
        # Pad with "outside" so each surface closes at its block's border.
        parts = [_block_surface(np.pad(np.asarray(block, np.float32), 1, constant_values=-1.0), lo, ijk_to_ras, None)
                 for block, lo in field]
    else:
        bounds = nonzero_bounds(mask)
        lo = np.maximum(bounds[0] - 2, 0)
        hi = np.minimum(bounds[1] + 2, mask.shape)
        # Pad by one voxel so the surface closes at the crop border.
        block = np.pad(np.asarray(mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.uint8), 1)
        parts = [_block_surface(block, lo, ijk_to_ras, smoothing_iterations)]
    append = vtkAppendPolyData()
    for part in parts:
        append.AddInputData(part)
    normals = vtkPolyDataNormals()  # consistent outward normals even when the matrix flips axes
    normals.SetInputConnection(append.GetOutputPort())
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOn()
    normals.SplittingOff()
    normals.Update()
    return normals.GetOutput()


def _block_surface(block: np.ndarray, lo: np.ndarray, ijk_to_ras: np.ndarray, smoothing_iterations: int | None):
    """Surface of a padded block in RAS: a 0/1 mask smoothed (``smoothing_iterations``), or a float field's 0 level."""
    # The VTK modules this needs, not the `vtk` umbrella package: that import alone costs ~0.5 s per CLI call.
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkCommonMath import vtkMatrix4x4
    from vtkmodules.vtkCommonTransforms import vtkTransform
    from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D, vtkWindowedSincPolyDataFilter
    from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D, vtkTransformPolyDataFilter

    image = vtkImageData()
    image.SetDimensions(*block.shape)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(block.ravel(order="F"), deep=True))
    if smoothing_iterations is None:
        surface = vtkFlyingEdges3D()
        surface.SetValue(0, 0.0)
        last = surface
    else:
        surface = vtkDiscreteFlyingEdges3D()
        surface.SetValue(0, 1)
        last = vtkWindowedSincPolyDataFilter()
        last.SetInputConnection(surface.GetOutputPort())
        last.SetNumberOfIterations(smoothing_iterations)
        last.SetPassBand(0.1)
        last.NormalizeCoordinatesOn()
        last.BoundarySmoothingOff()
    surface.SetInputData(image)
    # Block index → input index (undo crop and pad) → RAS.
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(lo) - 1
    matrix = vtkMatrix4x4()
    for row, values in enumerate(np.asarray(ijk_to_ras, dtype=float) @ shift):
        for column, value in enumerate(values):
            matrix.SetElement(row, column, value)
    transform = vtkTransform()
    transform.SetMatrix(matrix)
    to_ras = vtkTransformPolyDataFilter()
    to_ras.SetInputConnection(last.GetOutputPort())
    to_ras.SetTransform(transform)
    to_ras.Update()
    return to_ras.GetOutput()


DECIMATION_TOLERANCE_MM = 0.2  # a decimated surface stays this close (two-way Hausdorff) to the full one


@dataclass
class Decimation:
    """A decimated surface and how far it is from the full one."""

    surface: Any  # vtkPolyData
    triangles_before: int
    triangles: int
    hausdorff_mm: float


def surface_topology(surface: Any) -> dict[str, int]:
    """Triangles, boundary edges and non-manifold edges (both 0: a closed, manifold, watertight surface)."""
    from vtkmodules.vtkFiltersCore import vtkFeatureEdges

    counts = {"triangles": int(surface.GetNumberOfPolys())}
    for key, boundary in (("boundary_edges", True), ("non_manifold_edges", False)):
        edges = vtkFeatureEdges()
        edges.SetInputData(surface)
        edges.FeatureEdgesOff()
        edges.ManifoldEdgesOff()
        edges.SetBoundaryEdges(boundary)
        edges.SetNonManifoldEdges(not boundary)
        edges.Update()
        counts[key] = int(edges.GetOutput().GetNumberOfCells())
    return counts


def self_intersections(surface: Any, limit: int = 10) -> int:
    """Number of mesh edges that pierce a triangle they do not belong to (stops counting at ``limit``)."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkIdList, vtkPoints
    from vtkmodules.vtkFiltersCore import vtkExtractEdges
    from vtkmodules.vtkFiltersGeneral import vtkOBBTree

    points = numpy_support.vtk_to_numpy(surface.GetPoints().GetData()).astype(float)
    triangles = numpy_support.vtk_to_numpy(surface.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    extractor = vtkExtractEdges()
    extractor.SetInputData(surface)
    extractor.UseAllPointsOn()  # keep the point ids of the surface
    extractor.Update()
    edges = numpy_support.vtk_to_numpy(extractor.GetOutput().GetLines().GetConnectivityArray()).reshape(-1, 2)
    tree = vtkOBBTree()
    tree.SetDataSet(surface)
    tree.SetTolerance(1e-9)
    tree.BuildLocator()
    hits, cells, found = vtkPoints(), vtkIdList(), 0
    for a, b in edges:
        # Shorten the edge a little: touching its own neighbours at its end points is not an intersection.
        p, q = points[a], points[b]
        inset = 1e-4 * (q - p)
        if tree.IntersectWithLine(p + inset, q - inset, hits, cells) == 0:
            continue
        for index in range(cells.GetNumberOfIds()):
            if a not in triangles[cells.GetId(index)] and b not in triangles[cells.GetId(index)]:
                found += 1
                break
        if found >= limit:
            break
    return found


def hausdorff_mm(a: Any, b: Any) -> float:
    """Two-way Hausdorff distance between two surfaces: every vertex of each to the nearest triangle of the other."""
    from vtkmodules.vtkFiltersModeling import vtkHausdorffDistancePointSetFilter

    measure = vtkHausdorffDistancePointSetFilter()
    measure.SetInputData(0, a)
    measure.SetInputData(1, b)
    measure.SetTargetDistanceMethodToPointToCell()
    measure.Update()
    return float(measure.GetOutput(0).GetFieldData().GetArray("HausdorffDistance").GetValue(0))


def decimate_surface(
    surface: Any, max_triangles: int, tolerance_mm: float = DECIMATION_TOLERANCE_MM, attempts: int = 6
) -> Decimation:
    """At most ``max_triangles`` triangles (vtkQuadricDecimation) where that keeps the surface within tolerance.

    A decimation that leaves the tolerance, or opens or pinches the surface, is redone with more triangles;
    if none works the full surface is kept (its triangle count then exceeds ``max_triangles``: say so).
    """
    from vtkmodules.vtkFiltersCore import vtkPolyDataNormals, vtkQuadricDecimation

    before = int(surface.GetNumberOfPolys())
    target = int(max_triangles)
    if target < 4:
        raise ValueError(f"max_triangles must be at least 4, got {max_triangles}")
    for _ in range(attempts):
        if before <= target:
            break
        decimate = vtkQuadricDecimation()
        decimate.SetInputData(surface)
        decimate.SetTargetReduction(1.0 - target / before)
        decimate.VolumePreservationOn()
        normals = vtkPolyDataNormals()  # fresh normals for the coarser triangles (STL facets, rendering)
        normals.SetInputConnection(decimate.GetOutputPort())
        normals.ConsistencyOn()
        normals.AutoOrientNormalsOn()
        normals.SplittingOff()
        normals.Update()
        result = normals.GetOutput()
        topology = surface_topology(result)
        if topology["boundary_edges"] == 0 and topology["non_manifold_edges"] == 0:
            distance = hausdorff_mm(surface, result)
            if distance <= tolerance_mm:
                return Decimation(result, before, topology["triangles"], distance)
        target = int(target * 1.5)  # too coarse for the tolerance: keep more triangles
    return Decimation(surface, before, before, 0.0)


def write_stl(
    path: str | os.PathLike,
    mask: np.ndarray,
    ijk_to_ras: np.ndarray,
    coordinate_system: str = "LPS",
    overwrite: bool = False,
    max_triangles: int | None = None,
    field: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """Binary STL of the mask's surface in mm; LPS by default, as Slicer writes STL files.

    The surface is closed and manifold; ``max_triangles`` decimates it while it stays within
    :data:`DECIMATION_TOLERANCE_MM` of the full surface (see :func:`decimate_surface`). ``field``: the implant's
    signed fields, see :func:`mask_to_surface`.
    """
    from vtkmodules.vtkIOGeometry import vtkSTLWriter

    if coordinate_system not in ("LPS", "RAS"):
        raise ValueError("coordinate_system must be 'LPS' or 'RAS'")
    matrix = np.asarray(ijk_to_ras, dtype=float)
    if coordinate_system == "LPS":
        matrix = LPS_TO_RAS @ matrix
    surface = mask_to_surface(mask, matrix, field=field)
    if max_triangles:
        surface = decimate_surface(surface, max_triangles).surface
    path = Path(path)
    with _atomic_target(path, overwrite) as temporary:
        writer = vtkSTLWriter()
        writer.SetFileName(str(temporary))
        writer.SetInputData(surface)
        writer.SetFileTypeToBinary()
        writer.SetHeader(f"SkullVAE implant, {coordinate_system} mm")
        if not writer.Write():
            raise OSError(f"VTK could not write {path}")
    return path
