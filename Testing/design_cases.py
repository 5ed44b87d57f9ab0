"""Synthetic skulls of known geometry for the design, fit and mirror tests (small, built in memory)."""

from __future__ import annotations

import numpy as np

from SkullVAECompletionLib.synthetic import ShellSpec, cranial_defect, skull_shell

SPEC = ShellSpec(semi_axes_mm=(45.0, 55.0, 50.0), thickness_mm=5.0, base_cut_mm=-18.0)
HOLE_CENTRE = (28.0, 10.0, 38.0)  # on the upper right of the vault, clear of the midline
HOLE_RADIUS = 20.0


def grid(spacing: float = 0.5) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid covering the small skull from just below its base cut to above its vertex."""
    lo = np.array([-50.0, -60.0, -20.0])
    hi = np.array([50.0, 60.0, 54.0])
    shape = tuple(int(n) for n in np.round((hi - lo) / spacing))
    matrix = np.diag([spacing, spacing, spacing, 1.0])
    matrix[:3, 3] = lo
    return shape, matrix


def shell_case(spacing: float = 0.5) -> dict:
    """complete, defective, hole (the removed ball) and the true implant as bool arrays, plus the matrix."""
    shape, matrix = grid(spacing)
    complete = skull_shell(shape, matrix, SPEC)
    hole = cranial_defect(shape, matrix, HOLE_CENTRE, HOLE_RADIUS)
    return {
        "complete": complete,
        "defective": complete & ~hole,
        "implant": complete & hole,
        "hole": hole,
        "ijk_to_ras": matrix,
        "spacing": spacing,
    }


def ras_of(indices: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return np.asarray(indices, float) @ matrix[:3, :3].T + matrix[:3, 3]


def thickness_along_normals(mask: np.ndarray, matrix: np.ndarray, radius_mm: float, step: float = 0.05) -> np.ndarray:
    """Plate thickness (mm) measured along the analytic outer-surface normal of the ellipsoid, at surface points
    within ``radius_mm`` of the hole's centre: walk inward from 3 mm above the surface, count the length inside."""
    from scipy import ndimage

    a, b, c = SPEC.semi_axes_mm
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(4000, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    surface = SPEC.surface_point(directions)  # points on the outer ellipsoid
    surface = surface[np.linalg.norm(surface - np.asarray(HOLE_CENTRE), axis=1) < radius_mm]
    normals = surface / np.array([a * a, b * b, c * c])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    depths = np.arange(-3.0, 12.0, step)
    samples = surface[:, None, :] - depths[None, :, None] * normals[:, None, :]
    inverse = np.linalg.inv(matrix)
    ijk = samples.reshape(-1, 3) @ inverse[:3, :3].T + inverse[:3, 3]
    values = ndimage.map_coordinates(mask.astype(np.float32), ijk.T, order=1).reshape(len(surface), len(depths))
    return (values > 0.5).sum(axis=1) * step


SPHERE = ShellSpec(semi_axes_mm=(50.0, 50.0, 50.0), thickness_mm=5.0, base_cut_mm=-20.0)
SPHERE_HOLE_CENTRE = np.array([30.0, 0.0, 38.0])  # 48.4 mm from the centre: inside the 45–50 mm shell
SPHERE_HOLE_RADIUS = 18.0


def sphere_case(spacing: float = 0.5) -> dict:
    """A spherical skull (outer radius 50 mm, 5 mm thick) with a round hole: exact areas and volumes are known."""
    lo = np.array([-55.0, -55.0, -22.0])
    shape = tuple(int(n) for n in np.round((np.array([55.0, 55.0, 55.0]) - lo) / spacing))
    matrix = np.diag([spacing, spacing, spacing, 1.0])
    matrix[:3, 3] = lo
    complete = skull_shell(shape, matrix, SPHERE)
    hole = cranial_defect(shape, matrix, tuple(SPHERE_HOLE_CENTRE), SPHERE_HOLE_RADIUS)
    return {"complete": complete, "defective": complete & ~hole, "implant": complete & hole, "hole": hole,
            "ijk_to_ras": matrix, "spacing": spacing}


def sphere_lens_volume_ml(sphere_radius: float, ball_radius: float, distance: float) -> float:
    """Volume of the intersection of two balls (radii R, r, centres ``distance`` apart), in ml."""
    big, small, d = sphere_radius, ball_radius, distance
    volume = np.pi * (big + small - d) ** 2 * (d**2 + 2 * d * small - 3 * small**2 + 2 * d * big + 6 * small * big
                                                - 3 * big**2) / (12 * d)
    return float(volume) / 1000.0


def sphere_implant_truth() -> dict[str, float]:
    """Exact volume (ml) and area (cm²) of the true implant of :func:`sphere_case`."""
    outer, inner = SPHERE.semi_axes_mm[0], SPHERE.semi_axes_mm[0] - SPHERE.thickness_mm
    d, rho = float(np.linalg.norm(SPHERE_HOLE_CENTRE)), SPHERE_HOLE_RADIUS

    def cap_area(radius: float) -> float:  # part of the sphere |x| = radius inside the ball
        height = radius - (radius**2 + d**2 - rho**2) / (2 * d)
        return 2 * np.pi * radius * height

    side = 2 * np.pi * rho * (outer**2 - inner**2) / (2 * d)  # zone of the ball's sphere between the two radii
    volume = sphere_lens_volume_ml(outer, rho, d) - sphere_lens_volume_ml(inner, rho, d)
    return {"volume_ml": volume, "area_cm2": (cap_area(outer) + cap_area(inner) + side) / 100.0}
