"""Quality report on a spherical skull whose implant's volume, area, thickness, gap and overlap are known exactly."""

import numpy as np
import pytest

from design_cases import SPHERE, SPHERE_HOLE_CENTRE, SPHERE_HOLE_RADIUS, sphere_case, sphere_implant_truth
from SkullVAECompletionLib.design.quality import quality_report
from SkullVAECompletionLib.errors import InputError
from SkullVAECompletionLib.imageio.surfaces import mask_to_surface
from SkullVAECompletionLib.options import DISTANCE_ARRAY
from SkullVAECompletionLib.synthetic import cranial_defect, ras_grid


@pytest.fixture(scope="module")
def case():
    return sphere_case(0.5)


def _ball(case, radius):
    return cranial_defect(case["implant"].shape, case["ijk_to_ras"], tuple(SPHERE_HOLE_CENTRE), radius)


def test_true_implant_matches_the_exact_geometry(case):
    truth = sphere_implant_truth()
    surface = mask_to_surface(case["implant"].astype(np.uint8), case["ijk_to_ras"])
    report = quality_report(case["implant"], case["defective"], case["ijk_to_ras"], surface=surface)
    assert report.volume_ml == pytest.approx(truth["volume_ml"], rel=0.03)
    assert report.area_cm2 == pytest.approx(truth["area_cm2"], rel=0.05)
    assert report.thickness_mm["median"] == pytest.approx(SPHERE.thickness_mm, abs=0.3)
    assert SPHERE.thickness_mm - 0.6 <= report.thickness_mm["min"] <= report.thickness_mm["max"] <= 5.6
    assert report.rim_gap_mm_max <= 0.3
    assert report.rim_overlap_mm_max == 0.0
    # The distance map: every vertex has a distance; the rim touches the bone, the middle of the cap is far.
    distances = np.array([surface.GetPointData().GetArray(DISTANCE_ARRAY).GetValue(i)
                          for i in range(surface.GetNumberOfPoints())])
    assert distances.min() <= 0.3
    # Farthest point from bone: the cap's middle, about the hole radius away along the surface (chord < radius).
    assert 0.6 * SPHERE_HOLE_RADIUS < distances.max() <= SPHERE_HOLE_RADIUS + 0.5
    assert set(report.as_dict()) == {"volume_ml", "area_cm2", "thickness_mm", "rim_gap_mm_max", "rim_overlap_mm_max"}


@pytest.mark.parametrize("gap_mm", [1.0, 2.0])
def test_gap_all_around_the_rim(case, gap_mm):
    implant = case["complete"] & _ball(case, SPHERE_HOLE_RADIUS - gap_mm)
    surface = mask_to_surface(implant.astype(np.uint8), case["ijk_to_ras"])
    report = quality_report(implant, case["defective"], case["ijk_to_ras"], defect=case["implant"], surface=surface)
    assert report.rim_gap_mm_max == pytest.approx(gap_mm, abs=0.5)
    distances = np.array([surface.GetPointData().GetArray(DISTANCE_ARRAY).GetValue(i)
                          for i in range(surface.GetNumberOfPoints())])
    assert distances.min() == pytest.approx(gap_mm, abs=0.5), "the distance map shows the gap"
    assert report.thickness_mm["median"] == pytest.approx(SPHERE.thickness_mm, abs=0.3)


def test_onlay_overlap_and_its_thickness(case):
    x, y, z = ras_grid(case["implant"].shape, case["ijk_to_ras"])
    radius = np.sqrt(x * x + y * y + z * z)
    outer = SPHERE.semi_axes_mm[0]
    layer = (radius > outer) & (radius <= outer + 1.5) & _ball(case, SPHERE_HOLE_RADIUS + 4.0)
    implant = case["implant"] | layer
    report = quality_report(implant, case["defective"], case["ijk_to_ras"], defect=case["implant"])
    assert report.rim_overlap_mm_max == pytest.approx(4.0, abs=0.6)
    assert report.rim_gap_mm_max <= 0.3
    assert report.thickness_mm["min"] == pytest.approx(1.5, abs=0.4), "the flange over the bone"
    assert report.thickness_mm["median"] == pytest.approx(6.5, abs=0.4), "plate plus onlay over the defect"


def test_thinner_plate_than_the_bone_shows_no_gap(case):
    x, y, z = ras_grid(case["implant"].shape, case["ijk_to_ras"])
    radius = np.sqrt(x * x + y * y + z * z)
    implant = case["implant"] & (radius > SPHERE.semi_axes_mm[0] - 3.0)
    report = quality_report(implant, case["defective"], case["ijk_to_ras"], defect=case["implant"])
    assert report.thickness_mm["median"] == pytest.approx(3.0, abs=0.3)
    assert report.rim_gap_mm_max <= 0.3


def test_empty_implant_is_refused(case):
    with pytest.raises(InputError, match="empty"):
        quality_report(np.zeros_like(case["implant"]), case["defective"], case["ijk_to_ras"])


def test_cli_design_options_summary_and_distance_map(tmp_path, synthetic_case, monkeypatch):
    """The CLI's design/fit/summary path with a stand-in engine that returns the true implant (the model's
    quality is not under test here)."""
    import json
    from types import SimpleNamespace

    import vtk

    from SkullVAECompletionLib import cli
    from SkullVAECompletionLib.imageio.surfaces import surface_topology
    from SkullVAECompletionLib.imageio.volumes import write_mask
    from SkullVAECompletionLib.inference.results import CompletionResult

    bundle = SimpleNamespace(model_id="stand-in", version="0.0.1")

    class StandIn:
        defect_choices = ("auto", "cranial", "facial")

        def __init__(self, *args, **kwargs):
            self.bundle, self.device = bundle, "cpu"

        def encode(self, mask, ijk_to_ras, **kwargs):
            return np.asarray(mask).astype(bool)

        def complete(self, encoded, **kwargs):
            implant = (synthetic_case["complete"].astype(bool) & ~encoded).astype(np.uint8)
            return CompletionResult(defective=encoded, implant=implant,
                                    defect_type="cranial", detected_type="cranial", confidence=0.9, gamma=1.0,
                                    method="dev", implant_volume_ml=float(implant.sum()) * 27 / 1000)

    monkeypatch.setattr(cli, "SkullCompleter", StandIn)
    monkeypatch.setattr(cli, "load_bundle", lambda path: bundle)
    path = write_mask(tmp_path / "skull.nrrd", synthetic_case["defective"], synthetic_case["ijk_to_ras"])
    out = tmp_path / "out"
    args = [str(path), "-o", str(out), "--no-preview", "--clearance", "1", "--edge-radius", "1",
            "--max-triangles", "2000"]
    assert cli.main(args) == 0
    summary = json.loads((out / "skull_summary.json").read_text())
    for key in ("detected_class", "confidence", "defect_class", "gamma", "method", "implant_volume_ml", "model_id",
                "model_version", "thickness_mm", "flange_mm", "flange_thickness_mm", "clearance_mm", "edge_radius_mm",
                "max_triangles"):
        assert key in summary, key
    assert summary["clearance_mm"] == 1.0 and summary["max_triangles"] == 2000 and summary["model_id"] == "stand-in"
    assert set(summary["fit"]) == {"volume_ml", "area_cm2", "thickness_mm", "rim_gap_mm_max", "rim_overlap_mm_max"}
    assert summary["fit"]["volume_ml"] == pytest.approx(summary["implant_volume_ml"], rel=0.01)
    assert (out / "skull_distance.png").read_bytes()[:4] == b"\x89PNG"
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(out / "skull_implant.stl"))
    reader.Update()
    clean = vtk.vtkCleanPolyData()  # STL stores each triangle's corners: merge them to see the topology
    clean.SetInputConnection(reader.GetOutputPort())
    clean.Update()
    topology = surface_topology(clean.GetOutput())
    assert topology["boundary_edges"] == 0 and topology["non_manifold_edges"] == 0
    assert topology["triangles"] <= 2000
    # A bad option stops the run before any work, with the option's name.
    assert cli.main([*args, "--overwrite", "--flange", "-2"]) == 2
