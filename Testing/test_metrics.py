"""Metrics on shapes whose answers are known."""

import math

import numpy as np
import pytest

from SkullVAECompletionLib.metrics import boundary_dice, dice, hd95, implant_metrics


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
