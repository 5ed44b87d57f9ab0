"""The rim stage on several holes at once and on very large holes (rim.py), with the true complete shell as the
expected skull (a perfect decode): every hole is found and fitted on its own, a large hole is covered whole."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAECompletionLib.metrics import dice
from SkullVAECompletionLib.synthetic import ras_grid
from test_rim import BURR_DIRECTIONS, SHAPE, SPEC, ball, burr_hole, run


@pytest.fixture(scope="module")
def shell():
    from SkullVAECompletionLib.synthetic import centred_ijk_to_ras, skull_shell

    matrix = centred_ijk_to_ras(SHAPE, (1.5, 1.5, 1.5))
    return skull_shell(SHAPE, matrix, SPEC), matrix


def cone(matrix: np.ndarray, direction: tuple[float, float, float], half_angle_deg: float) -> np.ndarray:
    """Everything seen from the shell's centre within ``half_angle_deg`` of ``direction``."""
    x, y, z = ras_grid(SHAPE, matrix)
    axis = np.asarray(direction, float) / np.linalg.norm(direction)
    return x * axis[0] + y * axis[1] + z * axis[2] > np.cos(np.radians(half_angle_deg)) * np.sqrt(x**2 + y**2 + z**2)


def recalls(implant: np.ndarray, parts: list[np.ndarray]) -> list[float]:
    return [float((implant.astype(bool) & part).sum() / part.sum()) for part in parts]


@pytest.mark.parametrize(("large", "small"), [
    # A 14 mm burr hole right where the mirror image of a large defect lies: it must not pass for the defect's
    # natural twin (as the second orbit would).
    (((1.0, 0.3, 0.5), 50.0), ("burr", (-1.0, 0.3, 0.5))),
    # A small frontal hole on the other side, partly facing the large one.
    (((0.8, 0.5, 0.5), 45.0), ("ball", (-0.6, 0.9, 0.4))),
    # Same side, far apart.
    (((-1.0, -0.2, 0.5), 45.0), ("burr", (0.3, 1.0, 0.45))),
])
def test_two_holes_of_very_different_sizes_are_both_found(shell, large, small):
    complete, matrix = shell
    big = ball(matrix, SPEC.surface_point(large[0]), large[1]) & complete
    little = burr_hole(shell, small[1], 14.0) if small[0] == "burr" else (
        ball(matrix, SPEC.surface_point(small[1]), 12.0) & complete)
    fit = run(complete & ~big & ~little, complete, matrix)
    assert len(fit.holes) == 2, fit.message
    assert min(recalls(fit.implant, [big, little])) >= 0.7, recalls(fit.implant, [big, little])
    assert not np.any(fit.implant.astype(bool) & complete & ~big & ~little)


def test_three_burr_holes_are_all_found(shell):
    complete, matrix = shell
    burrs = [burr_hole(shell, BURR_DIRECTIONS[where], 14.0) for where in ("lateral", "right", "frontal")]
    fit = run(complete & ~burrs[0] & ~burrs[1] & ~burrs[2], complete, matrix)
    assert len(fit.holes) == 3, fit.message
    assert min(recalls(fit.implant, burrs)) >= 0.8


@pytest.mark.parametrize(("direction", "half_angle"), [((-1.0, 0.0, 0.4), 70.0), ((0.0, 0.1, 1.0), 75.0)])
def test_a_hole_over_a_third_of_the_vault_is_covered_whole(shell, direction, half_angle):
    """A lateral defect 140° across (≈ 36 % of the shell, reaching low) and a vertex flap 150° across: too wide for
    a latitude-longitude patch; covered all over, its middle included (no ring)."""
    complete, matrix = shell
    removed = cone(matrix, direction, half_angle) & complete
    assert removed.sum() >= complete.sum() / 3
    fit = run(complete & ~removed, complete, matrix)
    assert len(fit.holes) == 1, fit.message
    middle = cone(matrix, direction, 30.0) & complete
    assert recalls(fit.implant, [removed, middle]) >= [0.8, 0.95]
    assert dice(fit.implant, removed) >= 0.9


def test_a_large_hole_follows_the_decoded_shape_far_from_its_rim(shell):
    """Far from the rim only the decode knows the shape: the rim's radii alone (shape="rim") cannot carry an
    ellipsoid's curvature across 140°, the decode's surfaces plus the rim's offsets do."""
    complete, matrix = shell
    removed = cone(matrix, (-1.0, 0.0, 0.4), 70.0) & complete
    decoded = dice(run(complete & ~removed, complete, matrix).implant, removed)
    rim_only = dice(run(complete & ~removed, complete, matrix, shape="rim").implant, removed)
    assert decoded >= 0.9 and decoded >= rim_only + 0.1, (decoded, rim_only)


@pytest.mark.parametrize("direction", [(0.0, -1.0, -0.2), (0.0, 1.0, -0.1)])
def test_a_hole_across_the_midline_reaching_the_skull_base_is_covered(shell, direction):
    """Occipital and frontal flaps across the midline down to the open skull base; the frontal one takes in some
    of the thicker "face" bone, which the shell's surfaces do not describe."""
    complete, matrix = shell
    removed = ball(matrix, SPEC.surface_point(direction), 52.0) & complete
    _, _, z = ras_grid(SHAPE, matrix)
    assert (removed & (z < SPEC.base_cut_mm + 3.0)).any(), "the hole reaches the skull base"
    fit = run(complete & ~removed, complete, matrix)
    assert len(fit.holes) == 1, fit.message
    assert recalls(fit.implant, [removed]) >= [0.85]
    assert dice(fit.implant, removed) >= 0.8
