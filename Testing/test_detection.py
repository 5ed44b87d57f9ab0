"""Detection by the defect's position (detection.py): the region of an implant seen from the cranial centre."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAECompletionLib.extraction.rim import find_holes_in
from SkullVAECompletionLib.inference.detection import (
    BY_CLASS_HEAD,
    BY_DEFECT_POSITION,
    implant_centre,
    implant_cranial_region,
    located_class,
    region_at,
)
from SkullVAECompletionLib.inference.regions import DEFECT_CLASSES
from SkullVAECompletionLib.preprocessing.geometry import GridSpec, plan_mapping, to_model_grid
from SkullVAECompletionLib.synthetic import ShellSpec, centred_ijk_to_ras, ras_grid, skull_shell

GRID = GridSpec(shape=(48, 64, 48), spacing_mm=4.0)
SHAPE = (100, 124, 116)
SPEC = ShellSpec()


@pytest.fixture(scope="module")
def skull():
    matrix = centred_ijk_to_ras(SHAPE, (1.5, 1.5, 1.5))
    complete = skull_shell(SHAPE, matrix, SPEC)
    mapping = plan_mapping(complete, matrix, GRID)
    return complete, matrix, mapping, to_model_grid(complete, mapping)


def implant_towards(skull, direction: tuple[float, float, float], radius_mm: float = 20.0) -> np.ndarray:
    """The shell's bone within a ball where a ray from the centre in ``direction`` leaves the shell."""
    complete, matrix, _, _ = skull
    centre = SPEC.surface_point(direction)
    x, y, z = ras_grid(SHAPE, matrix)
    return complete & ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius_mm**2)


@pytest.mark.parametrize(
    ("direction", "region"),
    [
        ((0.0, 0.1, 1.0), "vertex"),
        ((1.0, 0.0, 0.3), "parietotemporal_right"),  # RAS: +x is the patient's right
        ((-1.0, 0.0, 0.3), "parietotemporal_left"),
        ((0.0, -1.0, 0.3), "occipital"),
        ((0.0, 1.0, 0.6), "frontal"),
        ((0.3, 1.0, 0.0), "frontoorbital"),
    ],
)
def test_an_implant_is_placed_in_its_region(skull, direction, region):
    _, _, mapping, model_input = skull
    assert implant_cranial_region(implant_towards(skull, direction), mapping, model_input) == region


def test_the_class_head_decides_without_a_located_defect(skull):
    _, _, mapping, model_input = skull
    empty = np.zeros(SHAPE, np.uint8)
    assert implant_cranial_region(empty, mapping, model_input) is None
    assert located_class("complete", empty, mapping, model_input, DEFECT_CLASSES) == ("complete", BY_CLASS_HEAD)
    vertex = implant_towards(skull, (0.0, 0.1, 1.0))
    assert located_class("complete", vertex, mapping, model_input, DEFECT_CLASSES) == ("vertex", BY_DEFECT_POSITION)
    # A model without region classes (cranial / facial) keeps its class head's answer.
    assert located_class("cranial", vertex, mapping, model_input, ("cranial", "facial")) == ("cranial", BY_CLASS_HEAD)


def test_the_centre_comes_from_the_rim_stages_blocks_as_from_the_volume(skull):
    implant = implant_towards(skull, (1.0, 0.0, 0.3))
    lo = np.argwhere(implant).min(axis=0)
    block = np.where(implant[lo[0]:, lo[1]:, lo[2]:], 1.0, -1.0)  # > 0 exactly on the implant, like a rim field
    assert np.allclose(implant_centre(implant, [(block, lo)]), np.argwhere(implant).mean(axis=0))
    assert np.allclose(implant_centre(implant), np.argwhere(implant).mean(axis=0))
    assert implant_centre(np.zeros(SHAPE, np.uint8)) is None


def test_the_status_line_says_what_decided_the_class():
    from SkullVAECompletionLib import mrml

    common = dict(segmentationNode=None, uncertaintyNode=None, defectType="vertex", detectedType="vertex",
                  confidence=0.12, gamma=0.5, modelId="m", modelVersion="1", device="cpu", seconds=1.0,
                  implantVolumeMl=20.0)
    by_position = mrml.CompletionSummary(**common, detectedBy=BY_DEFECT_POSITION).statusText()
    assert "vertex defect (from where the defect lies; class head 12%)" in by_position
    assert "vertex defect (12% confidence)" in mrml.CompletionSummary(**common).statusText()
    complete = mrml.CompletionSummary(**{**common, "detectedType": "complete"}, detectedBy=BY_DEFECT_POSITION)
    assert "no defect detected (no hole found in the bone; class head 12%)" in complete.statusText()
    assert "where the defect lies" not in complete.statusText()


@pytest.mark.parametrize(
    ("direction", "region"),
    [((0.0, 0.1, 1.0), "vertex"), ((1.0, 0.0, 0.3), "parietotemporal_right"), ((0.0, -1.0, 0.3), "occipital"),
     ((0.0, 1.0, 1.0), "frontal"), ((0.0, 1.0, 0.3), "frontoorbital")],
)
def test_the_holes_found_before_any_fit_lie_in_their_region(skull, direction, region):
    complete, matrix, mapping, expected = skull
    defective = (complete & ~implant_towards(skull, direction, radius_mm=25.0)).astype(np.uint8)
    search = find_holes_in(expected, defective, mapping)
    assert search.seeds.count == 1 and not search.message
    model_input = to_model_grid(defective, mapping)
    assert region_at(search.centre_in_model(), model_input) == region
    # Where the implant will be: the hole's centre before any fit lies within 3 mm of the removed bone's.
    removed = (mapping.input_to_model @ np.append(np.argwhere(complete & ~defective.astype(bool)).mean(axis=0), 1))[:3]
    assert np.linalg.norm(search.centre_in_model() - removed) * mapping.grid.spacing_mm < 3.0


def test_no_hole_no_position(skull):
    complete, _, mapping, expected = skull
    search = find_holes_in(expected, complete.astype(np.uint8), mapping)
    assert search.seeds.count == 0 and search.centre_in_model() is None
    assert region_at(None, expected) is None


@pytest.fixture(scope="module")
def region_completer(region_bundle):
    from SkullVAECompletionLib.inference.completion import SkullCompleter

    return SkullCompleter(region_bundle, device="cpu")


def _count_fits(monkeypatch) -> list[int]:
    from SkullVAECompletionLib.inference import implant_stage

    calls: list[int] = []
    original = implant_stage.fit_implant

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(implant_stage, "fit_implant", counted)
    return calls


def test_holes_in_another_region_are_completed_with_its_class_in_one_fit(region_completer, synthetic_case,
                                                                         monkeypatch):
    from SkullVAECompletionLib.inference import completion

    defective, matrix = synthetic_case["defective"], synthetic_case["ijk_to_ras"]
    first = region_completer.choose_defect_type(region_completer.encode(defective, matrix))[0]
    moved = next(c for c in region_completer.bundle.defect_classes if c != first)
    monkeypatch.setattr(completion, "region_at", lambda point, model_input: moved)
    fits = _count_fits(monkeypatch)
    result = region_completer.complete(region_completer.encode(defective, matrix))
    # The class head's decode is searched for holes, not fitted; only the moved class's decode is (facial: none).
    assert len(fits) == (0 if moved == "facial" else 1)
    assert result.detected_by == BY_DEFECT_POSITION and result.defect_type == moved
    monkeypatch.undo()
    direct = region_completer.complete(region_completer.encode(defective, matrix), defect_type=moved)
    assert np.array_equal(result.implant, direct.implant)


def test_holes_in_the_class_heads_region_are_fitted_once_unless_the_implant_lies_elsewhere(
        region_completer, synthetic_case, monkeypatch):
    from SkullVAECompletionLib.inference import completion

    encoded = region_completer.encode(synthetic_case["defective"], synthetic_case["ijk_to_ras"])
    head = encoded.head_type if encoded.head_type in region_completer.bundle.defect_classes else None
    monkeypatch.setattr(completion, "region_at", lambda point, model_input: head)
    fits = _count_fits(monkeypatch)
    result = region_completer.complete(encoded)
    # One fit of the class head's decode (its hole search reused); a second only where the implant's own centre
    # lies in another region, as before the holes were located first.
    first_class = region_completer.choose_defect_type(encoded)[0] if head is None else head
    assert len(fits) == (1 if result.defect_type == first_class else 2)
    assert "detect" in result.timings and result.timings["total"] >= result.timings["detect"]
