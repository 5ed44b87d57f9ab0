"""Region defect classes (regions.py): a defect's class from where it lies on a synthetic skull."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAECompletionLib.inference import regions
from SkullVAECompletionLib.synthetic import ShellSpec, centred_ijk_to_ras, ras_grid, skull_shell

SHAPE = (50, 60, 52)
SPACING = (3.2, 3.2, 3.2)


@pytest.fixture(scope="module")
def shell() -> tuple[np.ndarray, np.ndarray]:
    """A complete ellipsoidal shell on a RAS-aligned isotropic grid (like the model grid) and its IJK→RAS."""
    matrix = centred_ijk_to_ras(SHAPE, SPACING)
    return skull_shell(SHAPE, matrix, ShellSpec()), matrix


def ball_defect(skull: np.ndarray, matrix: np.ndarray, azimuth: float, elevation: float,
                radius_mm: float = 22.0) -> np.ndarray:
    """The part of ``skull`` within ``radius_mm`` of where the ray (azimuth, elevation) from the cranial centre
    leaves it."""
    centre_ijk = regions.cranial_centre_voxel(skull)
    centre = matrix[:3, :3] @ centre_ijk + matrix[:3, 3]
    a, e = np.radians(azimuth), np.radians(elevation)
    direction = np.array([np.sin(a) * np.cos(e), np.cos(a) * np.cos(e), np.sin(e)])
    r, a_, s = ras_grid(SHAPE, matrix)
    points = np.stack([r, a_, s], axis=-1)
    along = (points - centre) @ direction
    on_ray = skull & (np.linalg.norm(points - centre - along[..., None] * direction, axis=-1) < 4.0) & (along > 0)
    exit_point = points[on_ray][np.argmax(along[on_ray])]
    return skull & (np.linalg.norm(points - exit_point, axis=-1) < radius_mm)


@pytest.mark.parametrize(
    ("azimuth", "elevation", "expected"),
    [
        (0.0, 30.0, "frontal"),
        (20.0, -5.0, "frontoorbital"),
        (90.0, 20.0, "parietotemporal_right"),
        (-90.0, 20.0, "parietotemporal_left"),
        (180.0, 25.0, "occipital"),
        (40.0, 75.0, "vertex"),
    ],
)
def test_region_of_a_defect(shell, azimuth: float, elevation: float, expected: str) -> None:
    skull, matrix = shell
    defect = ball_defect(skull, matrix, azimuth, elevation)
    assert defect.any()
    found_azimuth, found_elevation = regions.defect_angles(defect, skull)
    assert abs((found_azimuth - azimuth + 180) % 360 - 180) < 20 and abs(found_elevation - elevation) < 20
    assert regions.defect_class("cranial", defect, skull) == expected


def test_mirrored_defect_has_the_mirrored_class(shell) -> None:
    """Flipping the R axis (the training's left-right augmentation) maps the class through MIRRORED_CLASS."""
    skull, matrix = shell
    defect = ball_defect(skull, matrix, 100.0, 10.0)
    name = regions.defect_class("cranial", defect, skull)
    flipped = regions.defect_class("cranial", defect[::-1], skull[::-1])
    assert flipped == regions.MIRRORED_CLASS[name] != name
    assert all(regions.MIRRORED_CLASS[regions.MIRRORED_CLASS[c]] == c for c in regions.CLASS_NAMES)


def test_labels_and_bad_input(shell) -> None:
    skull, _ = shell
    assert regions.defect_class("complete", None, None) == "complete"
    assert regions.defect_class("facial", None, None) == "facial"
    assert regions.is_cranial("vertex") and not regions.is_cranial("facial") and not regions.is_cranial("complete")
    with pytest.raises(ValueError, match="defect"):
        regions.defect_class("cranial", np.zeros_like(skull), skull)
    with pytest.raises(ValueError, match="empty"):
        regions.defect_angles(skull, np.zeros_like(skull))


def test_the_largest_hole_decides_the_class(shell) -> None:
    """Two holes: a large occipital one and a small frontal one: the class is the large hole's region."""
    skull, matrix = shell
    large = ball_defect(skull, matrix, 180.0, 25.0, radius_mm=30.0)
    small = ball_defect(skull, matrix, 0.0, 30.0, radius_mm=12.0)
    assert regions.defect_class("cranial", large | small, skull) == "occipital"
    assert regions.defect_class("cranial", small, skull) == "frontal"
