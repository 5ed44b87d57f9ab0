"""Synthetic skull-like shells with known defects: test data that every test and self-test builds itself.

Not anatomy: an ellipsoidal bone shell with an open base and a thicker "face" in front, so that
the orientation of a volume matters and cranial and facial defects are distinguishable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShellSpec:
    semi_axes_mm: tuple[float, float, float] = (70.0, 90.0, 75.0)  # R, A, S
    thickness_mm: float = 7.0
    base_cut_mm: float = -35.0  # below this height (relative to the centre) the shell is open

    @property
    def inner_radius(self) -> float:
        """The inner surface of the (thinner) vault in units of :meth:`relative_radius`."""
        return 1.0 - self.thickness_mm / min(self.semi_axes_mm)

    def relative_radius(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Ellipsoidal radius of points (mm from the shell's centre): 1 on the outer surface."""
        a, b, c = self.semi_axes_mm
        return np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2)

    def surface_point(self, directions: np.ndarray) -> np.ndarray:
        """Where rays from the shell's centre (directions (..., 3), any length) leave its outer surface (mm)."""
        d = np.asarray(directions, float)
        d = d / np.linalg.norm(d, axis=-1, keepdims=True)
        scale = 1.0 / np.sqrt(np.sum((d / np.asarray(self.semi_axes_mm)) ** 2, axis=-1))
        return d * scale[..., None]


def ras_grid(shape: tuple[int, int, int], ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RAS coordinates (mm) of every voxel centre, float32, each of ``shape``."""
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape)
    m = np.asarray(ijk_to_ras, dtype=np.float32)
    coords = []
    for row in range(3):
        coords.append(
            m[row, 0] * i[:, None, None] + m[row, 1] * j[None, :, None] + m[row, 2] * k[None, None, :] + m[row, 3]
        )
    return coords[0], coords[1], coords[2]


def centred_ijk_to_ras(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """An axis-aligned RAS matrix whose grid is centred on the origin."""
    matrix = np.diag([*spacing, 1.0])
    matrix[:3, 3] = -0.5 * (np.asarray(shape) - 1) * np.asarray(spacing)
    return matrix


def skull_shell(
    shape: tuple[int, int, int],
    ijk_to_ras: np.ndarray,
    spec: ShellSpec = ShellSpec(),
    centre_ras: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """A complete synthetic skull as a bool (i, j, k) array."""
    x, y, z = ras_grid(shape, ijk_to_ras)
    x, y, z = x - centre_ras[0], y - centre_ras[1], z - centre_ras[2]
    _, b, c = spec.semi_axes_mm
    radius = spec.relative_radius(x, y, z)
    # The face (anterior, low) is thicker bone, so front and back differ.
    face = (y > 0.5 * b) & (z < 0.2 * c)
    inner = np.where(face, 2.0 * spec.inner_radius - 1.0, spec.inner_radius)
    shell = (radius <= 1.0) & (radius >= inner) & (z >= spec.base_cut_mm)
    return shell


def cranial_defect(
    shape: tuple[int, int, int],
    ijk_to_ras: np.ndarray,
    centre_ras: tuple[float, float, float] = (35.0, 20.0, 55.0),
    radius_mm: float = 30.0,
) -> np.ndarray:
    """Region removed by a round cranial defect (a ball through the shell)."""
    x, y, z = ras_grid(shape, ijk_to_ras)
    return (x - centre_ras[0]) ** 2 + (y - centre_ras[1]) ** 2 + (z - centre_ras[2]) ** 2 <= radius_mm**2


def facial_defect(
    shape: tuple[int, int, int],
    ijk_to_ras: np.ndarray,
    front_mm: float = 55.0,
    top_mm: float = 10.0,
) -> np.ndarray:
    """Region removed by a facial defect: everything anterior of ``front_mm`` and below ``top_mm``."""
    _, y, z = ras_grid(shape, ijk_to_ras)
    return (y >= front_mm) & (z <= top_mm)


def defective_pair(
    kind: str,
    shape: tuple[int, int, int] = (64, 72, 60),
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
    ijk_to_ras: np.ndarray | None = None,
    spec: ShellSpec = ShellSpec(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(complete, defective, ijk_to_ras) as uint8 arrays for ``kind`` in {"complete", "cranial", "facial"}."""
    matrix = centred_ijk_to_ras(shape, spacing) if ijk_to_ras is None else np.asarray(ijk_to_ras, dtype=float)
    complete = skull_shell(shape, matrix, spec)
    if kind == "complete":
        removed = np.zeros(shape, dtype=bool)
    elif kind == "cranial":
        removed = cranial_defect(shape, matrix)
    elif kind == "facial":
        removed = facial_defect(shape, matrix)
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    defective = complete & ~removed
    return complete.astype(np.uint8), defective.astype(np.uint8), matrix


def reoriented(
    array: np.ndarray, ijk_to_ras: np.ndarray, permutation: tuple[int, int, int], flips: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The same physical volume stored with permuted and then flipped index axes (as scanners and converters do)."""
    out = np.transpose(array, permutation)
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(ijk_to_ras, dtype=float)[:3, :3][:, list(permutation)]
    matrix[:3, 3] = np.asarray(ijk_to_ras, dtype=float)[:3, 3]
    for axis in flips:
        out = np.flip(out, axis)
        matrix[:3, 3] = matrix[:3, 3] + matrix[:3, axis] * (out.shape[axis] - 1)  # index 0 is the old last index
        matrix[:3, axis] = -matrix[:3, axis]
    return np.asfortranarray(out), matrix


# Masks that are not a skull, as users hand them in by mistake: the engine must refuse each (trust.py).
NON_SKULL_KINDS = ("solid_ellipsoid", "brain", "head", "skin_shell", "long_bone", "pelvis")


def non_skull_mask(kind: str, spacing_mm: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """(mask uint8, ijk_to_ras) of a head-CT-like field of view holding something that is not a skull:

    - ``solid_ellipsoid``: a brain-sized solid blob (a wrong segment picked);
    - ``brain``: a brain mask (solid, flattened below);
    - ``head``: a whole-head / skin mask, filled (what a skin threshold gives);
    - ``skin_shell``: only the skin surface of a head, 3 mm thick, with a neck;
    - ``long_bone``: the cortical shell of a femur-like long bone (a bone mask of a leg);
    - ``pelvis``: a pelvis-like ring of bone (a bone mask of the hips).
    """
    if kind not in NON_SKULL_KINDS:
        raise ValueError(f"unknown non-skull kind {kind!r}; one of {NON_SKULL_KINDS}")
    extent = {"long_bone": (80.0, 80.0, 460.0), "pelvis": (300.0, 220.0, 240.0)}.get(kind, (220.0, 260.0, 260.0))
    shape = tuple(int(round(e / spacing_mm)) for e in extent)
    matrix = centred_ijk_to_ras(shape, (spacing_mm,) * 3)
    x, y, z = ras_grid(shape, matrix)
    if kind == "solid_ellipsoid":
        mask = (x / 65.0) ** 2 + (y / 80.0) ** 2 + (z / 60.0) ** 2 <= 1.0
    elif kind == "brain":
        mask = ((x / 68.0) ** 2 + (y / 85.0) ** 2 + (z / 62.0) ** 2 <= 1.0) & (z > -35.0)
    elif kind == "head":
        mask = ((x / 80.0) ** 2 + (y / 100.0) ** 2 + (z / 105.0) ** 2 <= 1.0) | (
            (x / 55.0) ** 2 + (y / 55.0) ** 2 <= 1.0) & (z < -60.0)
    elif kind == "skin_shell":
        outer = ((x / 80.0) ** 2 + (y / 100.0) ** 2 + (z / 105.0) ** 2 <= 1.0) | (
            (x / 55.0) ** 2 + (y / 55.0) ** 2 <= 1.0) & (z < -60.0)
        inner = ((x / 77.0) ** 2 + (y / 97.0) ** 2 + (z / 102.0) ** 2 <= 1.0) | (
            (x / 52.0) ** 2 + (y / 52.0) ** 2 <= 1.0) & (z < -60.0)
        mask = outer & ~inner
    elif kind == "long_bone":
        radius = np.sqrt(x**2 + y**2)
        shaft = (radius <= 14.0) & (radius >= 8.0) & (np.abs(z) <= 190.0)
        heads = (x**2 + y**2 + (np.abs(z) - 200.0) ** 2) <= 25.0**2
        mask = shaft | heads
    else:  # pelvis: a tilted ring (the pelvic brim) with two flaring wings
        ring = ((np.sqrt((x / 1.15) ** 2 + y**2) - 75.0) ** 2 + (z / 1.5) ** 2) <= 14.0**2
        wings = ((np.abs(x) - 95.0) ** 2 / 45.0**2 + (y + 20.0) ** 2 / 12.0**2 + (z - 70.0) ** 2 / 60.0**2) <= 1.0
        mask = ring | wings
    return np.asfortranarray(mask.astype(np.uint8)), matrix
