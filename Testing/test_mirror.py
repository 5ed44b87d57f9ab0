"""Mirror method on a synthetic symmetric skull, turned and shifted in the scanner, with a unilateral defect."""

import math

import numpy as np
import pytest

from SkullVAECompletionLib.errors import InputError
from SkullVAECompletionLib.extraction.mirror import find_midsagittal_plane, mirror_implant
from SkullVAECompletionLib.metrics import dice
from SkullVAECompletionLib.synthetic import centred_ijk_to_ras, cranial_defect, skull_shell

SHAPE = (84, 100, 86)
SPACING = (2.0, 2.0, 2.0)


def _rotation(z_degrees: float, y_degrees: float) -> np.ndarray:
    cz, sz = math.cos(math.radians(z_degrees)), math.sin(math.radians(z_degrees))
    cy, sy = math.cos(math.radians(y_degrees)), math.sin(math.radians(y_degrees))
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1.0]])
    about_y = np.array([[cy, 0, sy], [0, 1.0, 0], [-sy, 0, cy]])
    return about_z @ about_y


@pytest.fixture(scope="module")
def turned():
    """A skull turned by 8° about S and 5° about A, and shifted 6 mm: its symmetry plane is not the grid's."""
    grid = centred_ijk_to_ras(SHAPE, SPACING)  # the scanner's grid
    rotation = _rotation(8.0, 5.0)
    to_skull = np.eye(4)  # scanner RAS → the skull's own (symmetric) frame
    to_skull[:3, :3] = rotation
    to_skull[:3, 3] = [-6.0, 0.0, 0.0]
    skull_frame = to_skull @ grid
    true_normal = rotation.T @ np.array([1.0, 0.0, 0.0])  # the skull's x axis in scanner RAS
    return {"grid": grid, "skull_frame": skull_frame, "complete": skull_shell(SHAPE, skull_frame),
            "normal": true_normal, "to_skull": to_skull}


def test_plane_found_with_rotation(turned):
    plane, residual = find_midsagittal_plane(turned["complete"], turned["grid"])
    angle = math.degrees(math.acos(min(1.0, abs(float(plane.normal @ turned["normal"])))))
    assert angle < 2.0, angle
    # The plane passes through the skull's centre (the skull frame's origin, in scanner RAS).
    origin = np.linalg.inv(turned["to_skull"])[:3, 3]
    assert abs(plane.signed_distance(origin[None])[0]) < 1.5
    assert residual < 1.5


def test_unilateral_defect_completed_from_the_healthy_side(turned):
    hole = cranial_defect(SHAPE, turned["skull_frame"], (35.0, 20.0, 55.0), 30.0)
    defective = turned["complete"] & ~hole
    truth = turned["complete"] & hole
    implant, result = mirror_implant(defective.astype(np.uint8), turned["grid"])
    assert dice(implant, truth) >= 0.6, dice(implant, truth)
    assert not np.any(implant.astype(bool) & defective)
    assert result.mirrored.shape == defective.shape and result.mirrored.dtype == np.uint8


def test_defect_across_the_midline_gives_a_clear_message(turned):
    hole = cranial_defect(SHAPE, turned["skull_frame"], (0.0, 10.0, 72.0), 30.0)
    with pytest.raises(InputError, match="crosses the mid-sagittal plane"):
        mirror_implant((turned["complete"] & ~hole).astype(np.uint8), turned["grid"])


def test_symmetric_skull_has_no_mirror_defect(turned):
    with pytest.raises(InputError, match="finds no defect"):
        mirror_implant(turned["complete"].astype(np.uint8), turned["grid"])
