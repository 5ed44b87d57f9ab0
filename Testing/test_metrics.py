"""Metrics on shapes whose answers are known."""

import math

import numpy as np
import pytest

from SkullVAECompletionLib.metrics import boundary_dice, defect_area_fill, defect_fill, dice, hd95, implant_metrics


def box(shape, lo, hi):
    mask = np.zeros(shape, bool)
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return mask


def test_dice_known_overlap():
    a = box((20, 20, 20), (0, 0, 0), (10, 10, 10))
    b = box((20, 20, 20), (5, 0, 0), (15, 10, 10))
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0


def test_hd95_is_in_millimetres():
    a = box((40, 30, 30), (5, 5, 5), (15, 15, 15))
    b = box((40, 30, 30), (8, 5, 5), (18, 15, 15))  # shifted by 3 voxels along axis 0
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0, abs=0.01)
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0, abs=0.01)
    assert hd95(a, a, (1.0, 1.0, 1.0)) == 0.0
    assert math.isinf(hd95(a, np.zeros_like(a), (1.0, 1.0, 1.0)))


def test_boundary_dice_only_counts_voxels_near_the_defective_skull():
    shape = (60, 20, 20)
    defective = box(shape, (0, 0, 0), (5, 20, 20))  # bone on the low side
    truth = box(shape, (5, 0, 0), (60, 20, 20))
    prediction = box(shape, (5, 0, 0), (15, 20, 20))  # right near the bone, missing the far part
    assert dice(prediction, truth) < 0.4
    # Within 10 mm of the bone (1 mm voxels) the prediction covers the truth exactly.
    assert boundary_dice(prediction, truth, defective, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    # With 0.5 mm voxels "10 mm" reaches 20 voxels: the prediction now misses half of that band.
    assert boundary_dice(prediction, truth, defective, (0.5, 0.5, 0.5)) == pytest.approx(2 * 10 / 30, abs=0.02)


def test_implant_metrics_keys():
    a = box((30, 30, 30), (5, 5, 5), (15, 15, 15))
    figures = implant_metrics(a, a, np.zeros_like(a), (1.0, 1.0, 1.0))
    assert figures == {"dsc": 1.0, "bdsc": 1.0, "hd95": 0.0}


def test_defect_fill_by_voxels_and_by_area():
    """A decoded shell one voxel off still closes the hole (area) but overlaps it only partly (voxels); the
    input alone closes almost nothing; half the skull closes about half; no defect gives NaN."""
    from SkullVAECompletionLib.synthetic import ShellSpec, centred_ijk_to_ras, skull_shell

    shape = (50, 60, 52)
    skull = skull_shell(shape, centred_ijk_to_ras(shape, (3.2, 3.2, 3.2)), ShellSpec())
    defect = np.zeros_like(skull)
    defect[:, :, 40:] = skull[:, :, 40:]
    given = skull & ~defect
    assert defect_fill(skull, defect) == 1.0 and defect_area_fill(skull, defect, given) == 1.0
    off_by_one = np.roll(skull, 1, axis=2)
    assert defect_fill(off_by_one, defect) < 0.8 < 0.95 < defect_area_fill(off_by_one, defect, given)
    assert defect_fill(given, defect) == 0.0 and defect_area_fill(given, defect, given) < 0.1
    half = skull.copy()
    half[:25] = given[:25]
    assert 0.4 < defect_area_fill(half, defect, given) < 0.6
    assert math.isnan(defect_fill(skull, np.zeros_like(skull)))
    assert math.isnan(defect_area_fill(skull, np.zeros_like(skull), given))
