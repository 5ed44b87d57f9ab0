"""Implant design on synthetic skulls of known geometry; every result measured independently of the design code.

Independent measurements: thickness along the ellipsoid's analytic surface normal (trilinear samples), the reach
of a flange from the analytic hole, distances to bone by brute force over bone voxel centres, the STL's topology
with vtkFeatureEdges and an edge-through-triangle search.
"""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from design_cases import HOLE_CENTRE, HOLE_RADIUS, ras_of, shell_case, thickness_along_normals
from SkullVAECompletionLib.design.shaping import DesignOptions, apply_design, design_implant
from SkullVAECompletionLib.errors import InputError
from SkullVAECompletionLib.imageio.surfaces import (
    decimate_surface,
    hausdorff_mm,
    mask_to_surface,
    self_intersections,
    surface_topology,
)

OPTIONS = {
    "none": DesignOptions(),
    "thickness3": DesignOptions(thickness_mm=3.0),
    "flange5": DesignOptions(flange_mm=5.0),
    "clearance1": DesignOptions(clearance_mm=1.0),
    "all": DesignOptions(thickness_mm=3.0, flange_mm=5.0, clearance_mm=1.0),
}


@pytest.fixture(scope="module")
def case():
    return shell_case(0.5)


@pytest.fixture(scope="module")
def designed(case):
    implant, defective = case["implant"].astype(np.uint8), case["defective"].astype(np.uint8)
    return {name: design_implant(implant, defective, case["ijk_to_ras"], options).implant
            for name, options in OPTIONS.items()}


def test_default_options_change_nothing(case, designed):
    assert np.array_equal(designed["none"], case["implant"].astype(np.uint8))


def test_thickness_3_gives_a_3_mm_plate(case, designed):
    measured = thickness_along_normals(designed["thickness3"], case["ijk_to_ras"], radius_mm=14.0)
    assert len(measured) > 50
    assert abs(measured.mean() - 3.0) <= 0.4, measured.mean()
    # The outer surface stays where the skull's is: the plate is cut from the inside.
    outer = thickness_along_normals(case["implant"], case["ijk_to_ras"], radius_mm=14.0)
    assert outer.mean() > 4.5


def test_flange_5_reaches_5_mm_over_the_bone(case, designed):
    implant = designed["flange5"].astype(bool)
    over_bone = np.argwhere(implant & ~case["hole"])
    reach = np.linalg.norm(ras_of(over_bone, case["ijk_to_ras"]) - np.asarray(HOLE_CENTRE), axis=1) - HOLE_RADIUS
    assert abs(np.percentile(reach, 99) - 5.0) <= 1.5, np.percentile(reach, 99)
    # All around the rim: every direction around the hole has flange beyond 3.5 mm.
    offsets = ras_of(over_bone, case["ijk_to_ras"]) - np.asarray(HOLE_CENTRE)
    angles = np.degrees(np.arctan2(offsets[:, 1], offsets[:, 0]))
    far = reach > 3.5
    assert len(np.unique(np.floor(angles[far] / 30) % 12)) == 12
    # It rests on the outer table: no flange voxel inside the bone, and it touches the bone.
    assert not np.any(implant & case["defective"])
    assert np.any(implant & np.roll(case["defective"], 1, axis=2))


def test_clearance_1_keeps_every_voxel_centre_1_mm_from_bone(case, designed):
    matrix = case["ijk_to_ras"]
    bone = ras_of(np.argwhere(case["defective"]), matrix)
    implant = ras_of(np.argwhere(designed["clearance1"]), matrix)
    distances, _ = cKDTree(bone).query(implant)
    assert len(implant) > 1000
    assert distances.min() > 1.0, distances.min()
    # Only the edge was cut back: most of the implant is still there.
    assert len(implant) > 0.8 * case["implant"].sum()


def test_all_options_together(case, designed):
    from design_cases import SPEC

    implant = designed["all"].astype(bool)
    assert implant.sum() > 0 and not np.any(implant & case["defective"])
    matrix = case["ijk_to_ras"]
    points = ras_of(np.argwhere(implant), matrix)
    radius = np.sqrt(((points / np.asarray(SPEC.semi_axes_mm)) ** 2).sum(axis=1))
    below_outer_surface = radius < 0.99  # the plate; the flange lies above the outer surface
    distances, _ = cKDTree(ras_of(np.argwhere(case["defective"]), matrix)).query(points[below_outer_surface])
    assert distances.min() > 1.0, "the plate keeps its clearance under the flange"
    plate_and_flange = thickness_along_normals(implant, matrix, radius_mm=10.0)
    assert abs(plate_and_flange.mean() - 4.5) <= 0.5, plate_and_flange.mean()


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_stl_surface_closed_manifold_without_self_intersections(case, designed, name):
    surface = mask_to_surface(designed[name], case["ijk_to_ras"])
    topology = surface_topology(surface)
    assert topology["boundary_edges"] == 0 and topology["non_manifold_edges"] == 0, topology
    assert self_intersections(surface) == 0
    assert topology["triangles"] > 20000, "big enough for the decimation check"
    decimated = decimate_surface(surface, 20000)
    assert decimated.triangles <= 20000
    again = surface_topology(decimated.surface)
    assert again["boundary_edges"] == 0 and again["non_manifold_edges"] == 0, again
    assert hausdorff_mm(surface, decimated.surface) <= 0.2
    assert self_intersections(decimated.surface) == 0


def test_self_intersection_check_finds_crossing_surfaces():
    from vtkmodules.vtkFiltersCore import vtkAppendPolyData
    from vtkmodules.vtkFiltersSources import vtkSphereSource

    append = vtkAppendPolyData()
    for x in (0.0, 0.5):
        sphere = vtkSphereSource()
        sphere.SetCenter(x, 0, 0)
        sphere.Update()
        append.AddInputData(sphere.GetOutput())
    append.Update()
    assert self_intersections(append.GetOutput()) > 0


def test_apply_design_recomputes_the_completed_skull(case):
    from SkullVAECompletionLib.inference.results import CompletionResult

    implant, defective = case["implant"].astype(np.uint8), case["defective"].astype(np.uint8)
    result = CompletionResult(defective=defective, implant=implant, defect_type="cranial",
                              detected_type="cranial", confidence=1.0, gamma=1.0, method="dev",
                              implant_volume_ml=float(implant.sum()) * 0.125 / 1000)
    designed, info = apply_design(result, case["ijk_to_ras"], DesignOptions(thickness_mm=2.0))
    assert designed is not result and result.implant is implant, "the cached result is not changed"
    assert np.array_equal(designed.completed, defective | designed.implant)
    assert designed.implant_volume_ml == pytest.approx(designed.implant.sum() * 0.125 / 1000)
    assert designed.implant_volume_ml < result.implant_volume_ml
    assert info.seconds["total"] > 0
    same, _ = apply_design(result, case["ijk_to_ras"], DesignOptions())
    assert same is result


def test_options_are_checked_and_round_trip():
    options = DesignOptions(thickness_mm=2.5, flange_mm=4.0)
    assert DesignOptions.from_dict(options.as_dict()) == options
    with pytest.raises(InputError, match="flange_mm"):
        DesignOptions(flange_mm=-1.0)
    with pytest.raises(InputError, match="thickness_mm"):
        DesignOptions(thickness_mm=0.0)
    with pytest.raises(InputError, match="unknown design options"):
        DesignOptions.from_dict({"thickness": 3.0})


def test_an_implant_that_does_not_close_the_defect_is_designed_along_rays_with_a_warning(case):
    implant = case["implant"].copy()
    # Keep only a ring: the middle of the hole stays open from the outside to the cavity.
    centre = np.asarray(HOLE_CENTRE)
    points = ras_of(np.argwhere(implant), case["ijk_to_ras"])
    implant[tuple(np.argwhere(implant)[np.linalg.norm(points - centre, axis=1) < 14.0].T)] = False
    result = design_implant(implant.astype(np.uint8), case["defective"].astype(np.uint8), case["ijk_to_ras"],
                            DesignOptions(thickness_mm=3.0))
    assert any("does not seal the defect" in warning for warning in result.warnings)
    measured = thickness_along_normals(result.implant, case["ijk_to_ras"], radius_mm=19.0)
    ring = measured[measured > 0]
    assert len(ring) > 20 and abs(np.median(ring) - 3.0) <= 0.4, np.median(ring)
