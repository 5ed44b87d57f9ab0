"""Implant error binned by distance from the defect's rim (metrics.error_by_rim_distance)."""

import math

import numpy as np
import pytest

from SkullVAECompletionLib.metrics import error_by_rim_distance


def plate_with_hole():
    """A 4-voxel plate with a round hole 25 voxels in radius: (defective, truth implant, radius from the axis)."""
    shape = (64, 64, 24)
    i, j, k = np.indices(shape)
    radius = np.hypot(i - 32, j - 32)
    plate = (k >= 10) & (k < 14)
    return plate & (radius > 25), plate & (radius <= 25), radius


def test_a_perfect_implant_has_no_error_in_any_band():
    defective, truth, _ = plate_with_hole()
    rows = error_by_rim_distance(truth, truth, defective, (1.0, 1.0, 1.0))
    assert [row["band_mm"] for row in rows] == ["0-5", "5-10", "10-20", "20-40", ">40"]
    assert all(row["disagreement_ml"] == 0 for row in rows)
    occupied = [row for row in rows if row["truth_ml"] > 0]
    assert [row["band_mm"] for row in occupied] == ["0-5", "5-10", "10-20", "20-40"]  # the hole's middle: 25 mm
    assert all(row["dice"] == 1.0 and row["surface_p95_mm"] == 0.0 for row in occupied)
    assert math.isnan(rows[-1]["dice"]) and math.isnan(rows[-1]["surface_mean_mm"])
    assert sum(row["truth_ml"] for row in rows) == pytest.approx(truth.sum() / 1000.0)


def test_an_implant_that_sags_in_the_middle_errs_only_far_from_the_rim():
    defective, truth, radius = plate_with_hole()
    # Farther than 12 mm from the rim the implant lies 2 voxels too deep; near the rim it is exact.
    middle = radius <= 13
    prediction = (truth & ~middle) | (np.roll(truth, -2, axis=2) & middle)
    rows = {row["band_mm"]: row for row in error_by_rim_distance(prediction, truth, defective, (1.0, 1.0, 1.0))}
    assert rows["0-5"]["disagreement_ml"] == 0 and rows["5-10"]["disagreement_ml"] == 0
    assert rows["0-5"]["dice"] == 1.0 and rows["0-5"]["surface_mean_mm"] == 0.0
    assert rows["20-40"]["disagreement_ml"] > 0 and rows["20-40"]["dice"] == pytest.approx(0.5)
    assert rows["20-40"]["surface_p95_mm"] == pytest.approx(2.0)
    assert rows["10-20"]["surface_mean_mm"] > 0.5


def test_bands_are_in_millimetres_and_empty_masks_give_empty_bands():
    defective, truth, _ = plate_with_hole()
    coarse = {row["band_mm"]: row for row in error_by_rim_distance(truth, truth, defective, (2.0, 2.0, 2.0))}
    assert coarse["20-40"]["truth_ml"] > 0 and coarse[">40"]["truth_ml"] > 0  # the middle: 50 mm from the rim
    empty = np.zeros_like(truth)
    missed = error_by_rim_distance(empty, truth, defective, (1.0, 1.0, 1.0))
    assert all(row["dice"] == 0.0 for row in missed if row["truth_ml"] > 0)
    assert all(math.isnan(row["surface_mean_mm"]) for row in missed)
    nothing = error_by_rim_distance(empty, empty, defective, (1.0, 1.0, 1.0))
    assert all(row["truth_ml"] == 0 and math.isnan(row["dice"]) for row in nothing)
