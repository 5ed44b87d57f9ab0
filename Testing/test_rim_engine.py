"""The rim-conforming stage inside the engine and the CLI: options, γ re-runs, facial fallback, mirror method."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from SkullVAECompletionLib.cli import main
from SkullVAECompletionLib.design.shaping import DesignOptions, apply_design
from SkullVAECompletionLib.errors import InputError
from SkullVAECompletionLib.imageio.surfaces import mask_to_surface, surface_topology
from SkullVAECompletionLib.imageio.volumes import read_mask, write_mask
from SkullVAECompletionLib.inference.completion import SkullCompleter
from SkullVAECompletionLib.inference.detection import BY_DEFECT_POSITION
from SkullVAECompletionLib.metrics import dice
from SkullVAECompletionLib.synthetic import centred_ijk_to_ras, cranial_defect, skull_shell


@pytest.mark.parametrize("extraction", ["rim", "decode", "union"])
def test_every_extraction_gives_an_implant_beside_the_input(completer, encoded, synthetic_case, extraction):
    result = completer.complete(encoded, gamma=1.0, defect_type="cranial", extraction=extraction)
    defective = synthetic_case["defective"].astype(bool)
    assert result.extraction == extraction
    assert result.implant.dtype == np.uint8 and result.implant.shape == defective.shape
    assert not np.any(result.implant.astype(bool) & defective)
    assert np.array_equal(result.completed.astype(bool), defective | result.implant.astype(bool))
    # The known hole is filled, and the implant lies in it. Measured with the tiny model (share of the hole filled,
    # share of the implant in the hole): rim 0.97, 0.93; decode 0.45, 0.81 (its blurred decode); union 0.97, 0.86.
    truth = synthetic_case["implant"].astype(bool)
    implant = result.implant.astype(bool)
    filled = {"rim": 0.9, "decode": 0.4, "union": 0.9}[extraction]
    assert (implant & truth).sum() >= filled * truth.sum(), (extraction, (implant & truth).sum() / truth.sum())
    assert (implant & truth).sum() >= 0.75 * implant.sum(), (extraction, (implant & truth).sum() / implant.sum())


def test_rim_is_the_default_and_a_gamma_step_reuses_the_encoding(completer, encoded):
    first = completer.complete(encoded, gamma=0.5, defect_type="cranial")
    second = completer.complete(encoded, gamma=1.5, defect_type="cranial")
    assert first.extraction == second.extraction == "rim"
    assert {(key[0], key[1]) for key in encoded.decode_cache} >= {("cranial", 0.5), ("cranial", 1.5)}
    again = completer.complete(encoded, gamma=0.5, defect_type="cranial")
    assert np.array_equal(again.implant, first.implant), "the same γ gives the same implant (cached decode)"


def test_facial_defects_use_the_decode_extraction(completer, encoded):
    assert completer.complete(encoded, defect_type="facial").extraction == "decode"


def test_union_is_the_rim_implant_plus_the_decoded_bone(completer, encoded):
    rim, decode, union = (completer.complete(encoded, gamma=1.0, defect_type="cranial", extraction=extraction)
                          for extraction in ("rim", "decode", "union"))
    assert np.array_equal(union.implant, rim.implant | decode.implant)
    assert union.implant_field is None, "the rim's fields do not describe the union: its STL comes from the voxels"
    assert len(union.defect_fields) == len(rim.implant_field), "where the rim found the defects decides the class"
    assert [h.area_mm2 for h in union.holes] == [h.area_mm2 for h in rim.holes]
    assert completer.complete(encoded, defect_type="facial", extraction="union").extraction == "decode"


def test_union_adds_no_decoded_bone_where_the_rim_finds_no_defect(completer, synthetic_case):
    """A complete skull and a decode a voxel thicker all round: decoded-minus-input bone everywhere along the skull
    (the paper's way makes an implant of it), but no defect for the rim stage, so the union adds nothing."""
    from SkullVAECompletionLib.inference.implant_stage import extract_implant
    from SkullVAECompletionLib.preprocessing.geometry import to_model_grid

    complete = synthetic_case["complete"]
    encoded = completer.encode(complete, synthetic_case["ijk_to_ras"])
    thicker = ndimage.binary_dilation(to_model_grid(complete, encoded.mapping) > 0.5, iterations=2).astype(np.float32)
    decode, _, _, _ = extract_implant(encoded, thicker, "decode", {})
    union, message, holes, _ = extract_implant(encoded, thicker, "union", {})
    assert decode.any() and not union.any() and holes == [] and message


def test_the_bundle_chooses_the_extraction_per_class(completer, encoded, monkeypatch):
    options = {**completer.bundle.manifest["completion"], "extraction_by_class": {"cranial": "union"}}
    monkeypatch.setitem(completer.bundle.manifest, "completion", options)
    assert completer.complete(encoded, gamma=1.0, defect_type="cranial").extraction == "union"
    assert completer.complete(encoded, gamma=1.0, defect_type="cranial", extraction="rim").extraction == "rim", \
        "an explicit choice wins"


def test_the_bundle_sets_the_decode_threshold_per_class(completer, encoded, monkeypatch):
    default = completer.complete(encoded, gamma=1.0, defect_type="facial")
    options = {**completer.bundle.manifest["completion"], "decode_threshold": {"facial": 0.05}}
    monkeypatch.setitem(completer.bundle.manifest, "completion", options)
    lowered = completer.complete(encoded, gamma=1.0, defect_type="facial")
    assert lowered.implant.sum() > default.implant.sum(), "a lower threshold reads more of the decode as bone"
    cranial = completer.complete(encoded, gamma=1.0, defect_type="cranial", extraction="decode")
    monkeypatch.setitem(completer.bundle.manifest, "completion", {**options, "decode_threshold": {}})
    assert np.array_equal(cranial.implant, completer.complete(encoded, gamma=1.0, defect_type="cranial",
                                                              extraction="decode").implant), "other classes: 0.5"


def test_unknown_options_are_refused_clearly(completer, encoded):
    with pytest.raises(InputError, match="unknown extraction"):
        completer.complete(encoded, extraction="magic")
    with pytest.raises(InputError, match="unknown method"):
        completer.complete(encoded, method="magic")


def test_cli_extraction_is_recorded_in_the_summary(tmp_path, tiny_bundle, synthetic_case):
    path = write_mask(tmp_path / "skull.nrrd", synthetic_case["defective"], synthetic_case["ijk_to_ras"])
    for extraction in ("rim", "decode"):
        out = tmp_path / extraction
        args = [str(path), "-o", str(out), "--model", str(tiny_bundle), "--defect-type", "cranial", "--no-preview",
                "--no-stl", "--no-distance-map", "--extraction", extraction]
        assert main(args) == 0
        summary = json.loads((out / "skull_summary.json").read_text())
        assert summary["extraction"] == extraction
        assert "message" in summary and isinstance(summary["holes"], list)
        assert set(summary["class_probabilities"]) == {"complete", "cranial", "facial"}
        assert summary["confidence"] == summary["class_probabilities"]["cranial"]


def test_cli_summary_of_a_region_model(tmp_path, region_bundle, synthetic_case):
    """With a region-class model the summary names the detected class, its probability and the class used."""
    path = write_mask(tmp_path / "skull.nrrd", synthetic_case["defective"], synthetic_case["ijk_to_ras"])
    out = tmp_path / "out"
    assert main([str(path), "-o", str(out), "--model", str(region_bundle), "--no-preview", "--no-stl",
                 "--no-distance-map", "--defect-class", "facial"]) == 0
    summary = json.loads((out / "skull_summary.json").read_text())
    assert summary["defect_class"] == "facial" and summary["detected_class"] in summary["class_probabilities"]
    assert len(summary["class_probabilities"]) == 8 and summary["model_id"] == "tiny-test-model"


def test_mirror_method_completes_a_unilateral_defect(completer):
    shape, spacing = (100, 124, 116), (1.5, 1.5, 1.5)
    matrix = centred_ijk_to_ras(shape, spacing)
    complete = skull_shell(shape, matrix)
    hole = cranial_defect(shape, matrix, centre_ras=(55.0, 10.0, 40.0), radius_mm=22.0)
    defective = complete & ~hole
    encoded = completer.encode(defective.astype(np.uint8), matrix)
    result = completer.complete(encoded, method="mirror")
    assert result.method == "mirror"
    assert dice(result.implant, complete & hole) >= 0.6
    across = cranial_defect(shape, matrix, centre_ras=(0.0, 20.0, 70.0), radius_mm=25.0)
    crossing = completer.encode((complete & ~across).astype(np.uint8), matrix)
    with pytest.raises(InputError, match="crosses the mid-sagittal plane"):
        completer.complete(crossing, method="mirror")


@pytest.fixture(scope="module")
def real_skull_completion():
    """The shipped real skull (Cranium sample) completed by the bundled model with the defaults."""
    from SkullVAECompletionLib.model.bundle import resources_dir

    mask, matrix, _ = read_mask(resources_dir() / "SampleData" / "CraniumSkull.nrrd")
    bone = np.asarray(mask) > 0
    return bone, matrix, SkullCompleter(device="cpu").run(bone, matrix)


def test_real_skull_gets_one_rim_fitted_implant_in_its_defect(real_skull_completion):
    bone, matrix, result = real_skull_completion
    # The bundle's extraction for the class (fronto-orbital: the rim's implant plus the decoded bone near it).
    from SkullVAECompletionLib.model.bundle import load_bundle

    expected = load_bundle().completion_options.get("extraction_by_class", {}).get(result.defect_type, "rim")
    assert result.extraction == expected and len(result.holes) == 1, result.message
    assert 4.0 < result.implant_volume_ml < 20.0
    # The real defect is fronto-temporal on the low-x (patient's right) side, index z ≈ 50–85, y ≈ 163–205.
    centre = np.argwhere(result.implant).mean(axis=0)
    assert centre[0] < bone.shape[0] / 2 and 150 < centre[1] < 215 and 45 < centre[2] < 95
    # The class head takes this skull for a complete one; the hole the rim stage finds says where the defect is,
    # and the completion is made with that class (a fronto-temporal defect: the frontal and fronto-orbital regions
    # meet there).
    assert result.detected_by == BY_DEFECT_POSITION
    assert result.defect_type == result.detected_type
    assert result.detected_type in ("frontal", "frontoorbital")


@pytest.mark.parametrize("options", [{}, {"flange_mm": 5.0}, {"thickness_mm": 3.0}, {"clearance_mm": 1.0}])
def test_real_skull_stl_is_closed_and_manifold_with_each_design_option(real_skull_completion, options):
    bone, matrix, result = real_skull_completion
    designed, _ = apply_design(result, matrix, DesignOptions(**options))
    surface_field = None if DesignOptions(**options).changes_shape else designed.implant_field
    topology = surface_topology(mask_to_surface(designed.implant, matrix, field=surface_field))
    assert topology["triangles"] > 1000
    assert topology["boundary_edges"] == 0 and topology["non_manifold_edges"] == 0, options


SAMPLE_DEFECT_BOX = (slice(80, 110), slice(163, 206), slice(50, 86))  # Resources/SampleData/README.md
SAMPLE_DSC_FLOOR = 0.47  # measured 0.52 with the bundled model (HD95 14.5 mm: the mirror is only a guide)


def test_real_skull_implant_matches_its_mirrored_healthy_side(real_skull_completion):
    """The sample skull's reference: its healthy side mirrored about the mid-sagittal plane, where the patient has no
    bone, inside the defect's documented box. The patient is not perfectly symmetric (the mirror lies 1.5 mm off the
    skull's own surface at the median), so the floor is a regression guard, not an accuracy claim."""
    from SkullVAECompletionLib.extraction.mirror import mirror_skull

    bone, matrix, result = real_skull_completion
    box = np.zeros(bone.shape, bool)
    box[SAMPLE_DEFECT_BOX] = True
    reference = (mirror_skull(bone, matrix).mirrored > 0) & ~bone & box
    implant = result.implant.astype(bool)
    assert (implant & box).sum() >= 0.9 * implant.sum(), "the implant lies in the defect"
    assert dice(implant, reference) >= SAMPLE_DSC_FLOOR, dice(implant, reference)
