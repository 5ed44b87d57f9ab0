"""The evaluation helpers of training/families.py and training/robustness.py on masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from training.families import hole_recalls, rim_profile
from training.robustness import far_volume_ml, scaled_geometry

SPACING = np.array([1.0, 1.0, 1.0])


def two_holes() -> tuple[np.ndarray, np.ndarray]:
    """A plate of bone with a large (20×20) and a small (6×6) square hole, 4 voxels thick; the true implant."""
    bone = np.zeros((80, 40, 10), bool)
    bone[:, :, 3:7] = True
    truth = np.zeros_like(bone)
    truth[5:25, 10:30, 3:7] = True
    truth[50:56, 17:23, 3:7] = True
    return bone & ~truth, truth


def test_every_hole_has_its_recall():
    defective, truth = two_holes()
    implant = truth.copy()
    implant[50:56] = False  # the small hole left open
    holes = sorted(hole_recalls(implant, truth, 2 * SPACING), key=lambda h: h["ml"])  # 2 mm voxels
    assert [h["ml"] for h in holes] == [pytest.approx(1.15), pytest.approx(12.8)]
    assert holes[0]["recall"] == 0.0 and holes[1]["recall"] == 1.0
    assert hole_recalls(implant, truth, SPACING) == [{"ml": 1.6, "recall": 1.0}]  # the small hole (< 1 ml) left out


def test_far_volume_and_scaled_geometry():
    defective, truth = two_holes()
    stray = np.zeros_like(truth)
    stray[70:75, 0:5, 0:2] = True  # 50 voxels far from both holes
    assert far_volume_ml(truth | stray, truth, SPACING) == pytest.approx(0.05)
    assert far_volume_ml(stray, np.zeros_like(truth), SPACING) == pytest.approx(0.05)
    matrix = np.diag([0.5, 0.5, 2.0, 1.0])
    matrix[:3, 3] = [10.0, -4.0, 3.0]
    assert np.allclose(scaled_geometry(matrix, 0.8)[:3], 0.8 * matrix[:3]) and scaled_geometry(matrix, 0.8)[3, 3] == 1


def test_rim_profile_pools_the_cranial_cases():
    band = {"from_mm": 0.0, "to_mm": 5.0, "truth_ml": 2.0, "disagreement_ml": 0.5, "surface_mean_mm": 1.0}
    rows = [{"label": "cranial", "rim": [band, {**band, "surface_mean_mm": float("nan")}]},
            {"label": "facial", "rim": [{**band, "disagreement_ml": 2.0}]}]
    first = rim_profile(rows)[0]
    assert first["truth_ml"] == 4.0 and first["disagreement"] == 0.25 and first["surface_mean_mm"] == 1.0
