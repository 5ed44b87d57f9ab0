"""Mirror method: complete a unilateral defect from the healthy side, mirrored about the mid-sagittal plane.

The plane is found by registering the skull to its own mirror image: the reflection about a plane of free
orientation (rotation included) and position that brings the skull's surface points closest to the skull,
with a robust (capped) distance cost so that the defect and natural asymmetries do not pull it. The cost is
sampled from a distance transform of the bone on a ~1.5 mm grid and minimised with scipy.optimize.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from ..errors import InputError
from ..masks import FULLY_CONNECTED, keep_large_components
from ..preprocessing.geometry import voxel_spacing

COST_GRID_MM = 1.5  # the registration's distance map: fine enough for a sub-mm plane, small enough to be fast
SURFACE_POINTS = 8000
CAPS_MM = (6.0, 2.5)  # coarse-to-fine robust cost: distances above the cap count as the cap (defect, asymmetry)
SLIVER_MM = 1.5  # mirrored bone within this of the patient's bone is asymmetry, not defect
MIN_PART_FRACTION = 0.25  # defect pieces under a quarter of the largest are leftovers of asymmetry
MIDLINE_STRIP_MM = 3.0  # half width of the sagittal strip checked for missing bone
MIDLINE_GAP_DEGREES = 6.0  # a run of empty 2° sectors this long on the vault's midline is a defect there
VAULT_ELEVATION_DEGREES = (15.0, 165.0)  # forehead to occiput, above the skull's centre


@dataclass(frozen=True)
class Plane:
    """A plane in RAS mm: unit ``normal`` and a ``point`` on it."""

    normal: np.ndarray
    point: np.ndarray

    def signed_distance(self, points_ras: np.ndarray) -> np.ndarray:
        return (np.asarray(points_ras, float) - self.point) @ self.normal

    def reflect(self, points_ras: np.ndarray) -> np.ndarray:
        points = np.asarray(points_ras, float)
        return points - 2.0 * self.signed_distance(points)[..., None] * self.normal

    def matrix(self) -> np.ndarray:
        """4×4 RAS reflection about the plane."""
        n = self.normal.reshape(3, 1)
        reflection = np.eye(4)
        reflection[:3, :3] = np.eye(3) - 2.0 * n @ n.T
        reflection[:3, 3] = 2.0 * float(self.point @ self.normal) * self.normal
        return reflection


@dataclass
class MirrorResult:
    """The skull mirrored about its mid-sagittal plane, on the input grid."""

    mirrored: np.ndarray  # uint8 (i, j, k)
    plane: Plane
    residual_mm: float  # median distance of the mirrored surface to the skull: how symmetric the skull is


def find_midsagittal_plane(mask: np.ndarray, ijk_to_ras: np.ndarray, seed: int = 0,
                           surface_points: int = SURFACE_POINTS, turns: tuple[float, ...] = (-0.25, 0.0, 0.25)
                           ) -> tuple[Plane, float]:
    """The skull's plane of symmetry and the median residual (mm) of its mirrored surface points.

    ``surface_points`` are registered; ``turns``: the starting turns of the plane about the vertical axis (about
    radians).
    """
    bone = np.asarray(mask).astype(bool)
    if not bone.any():
        raise InputError("the skull mask is empty: there is nothing to mirror")
    matrix = np.asarray(ijk_to_ras, dtype=float)
    factor = np.maximum(np.round(COST_GRID_MM / voxel_spacing(matrix)).astype(int), 1)
    coarse = _max_pool(bone, factor)
    coarse_matrix = matrix.copy()
    coarse_matrix[:3, :3] = matrix[:3, :3] * factor
    coarse_matrix[:3, 3] = matrix[:3, :3] @ ((factor - 1) / 2.0) + matrix[:3, 3]
    surface = coarse & ~ndimage.binary_erosion(coarse)
    # Distance to the bone's surface, not to the bone: inside thick bone a point-to-bone cost is flat (0) and
    # small turns of the plane would go unnoticed.
    distance = ndimage.distance_transform_edt(~surface, sampling=voxel_spacing(coarse_matrix)).astype(np.float32)
    to_index = np.linalg.inv(coarse_matrix)
    points = np.argwhere(surface)
    rng = np.random.default_rng(seed)
    points = points[rng.choice(len(points), min(surface_points, len(points)), replace=False)]
    points = points @ coarse_matrix[:3, :3].T + coarse_matrix[:3, 3]
    centre = points.mean(axis=0)
    start_normal = np.array([1.0, 0.0, 0.0])  # patients lie roughly straight in scanners: left-right first
    first, second = _perpendicular_axes(start_normal)

    def plane_of(params: np.ndarray) -> Plane:
        normal = start_normal + params[0] * first + params[1] * second
        normal /= np.linalg.norm(normal)
        return Plane(normal, centre + params[2] * normal)

    def cost(params: np.ndarray, cap: float) -> float:
        reflected = plane_of(params).reflect(points)
        ijk = reflected @ to_index[:3, :3].T + to_index[:3, 3]
        values = ndimage.map_coordinates(distance, ijk.T, order=1, mode="nearest")
        return float(np.minimum(values, cap).mean())

    best = None
    for turn in turns:  # a few starts about the vertical axis: heads are often turned
        params = np.array([turn, 0.0, 0.0])
        for cap in CAPS_MM:
            params = optimize.minimize(cost, params, args=(cap,), method="Powell",
                                       options={"xtol": 1e-3, "ftol": 1e-4}).x
        value = cost(params, CAPS_MM[-1])
        if best is None or value < best[0]:
            best = (value, params)
    plane = plane_of(best[1])
    reflected = plane.reflect(points)
    ijk = reflected @ to_index[:3, :3].T + to_index[:3, 3]
    residual = float(np.median(ndimage.map_coordinates(distance, ijk.T, order=1, mode="nearest")))
    return plane, residual


def quick_midsagittal_plane(bone_fraction: np.ndarray, ijk_to_ras: np.ndarray) -> Plane | None:
    """The plane of symmetry from a coarse (model-grid) bone map in about 0.1 s: one start, 2000 surface points.
    Accurate to about a degree, enough to compare a hole with the healthy side; None when there is no bone."""
    bone = np.asarray(bone_fraction) >= 0.5
    if not bone.any():
        return None
    return find_midsagittal_plane(bone, ijk_to_ras, surface_points=2000, turns=(0.0,))[0]


def mirror_skull(mask: np.ndarray, ijk_to_ras: np.ndarray, plane: Plane | None = None) -> MirrorResult:
    """The skull reflected about its mid-sagittal plane (found when not given), on the input grid (uint8)."""
    residual = float("nan")
    if plane is None:
        plane, residual = find_midsagittal_plane(mask, ijk_to_ras)
    matrix = np.asarray(ijk_to_ras, dtype=float)
    # Output voxel → RAS → reflected RAS → input voxel: one affine map of index space.
    index_map = np.linalg.inv(matrix) @ plane.matrix() @ matrix
    mirrored = ndimage.affine_transform(np.asarray(mask).astype(np.uint8), index_map[:3, :3], offset=index_map[:3, 3],
                                        order=0, output=np.uint8, mode="constant", cval=0)
    return MirrorResult(mirrored, plane, residual)


def mirror_implant(defective: np.ndarray, ijk_to_ras: np.ndarray,
                   result: MirrorResult | None = None) -> tuple[np.ndarray, MirrorResult]:
    """The implant from the mirrored healthy side: mirrored bone where the patient has none (uint8, input grid).

    ``result``: the skull's :func:`mirror_skull`, if already computed (the plane's registration is the costly part).

    :raises InputError: when the defect crosses the mid-sagittal plane (its mirror image is missing too), or when
        mirroring finds no defect.
    """
    bone = np.asarray(defective).astype(bool)
    result = result or mirror_skull(bone, ijk_to_ras)
    check_unilateral(bone, ijk_to_ras, result.plane)
    candidate = result.mirrored.astype(bool) & ~bone
    # Asymmetry leaves thin slivers along all of the bone: open them away, then grow the defect back.
    spacing = voxel_spacing(ijk_to_ras)
    steps = int(np.ceil(SLIVER_MM / spacing.min()))
    core = ndimage.binary_opening(candidate, iterations=steps)
    core = keep_large_components(core, MIN_PART_FRACTION, structure=FULLY_CONNECTED)
    if not core.any():
        raise InputError("mirroring finds no defect: the skull is symmetric about its mid-sagittal plane "
                         "(nothing is missing on one side that the other side has)")
    implant = candidate & ndimage.binary_dilation(core, iterations=steps + 1)
    return implant.astype(np.uint8), result


def check_unilateral(bone: np.ndarray, ijk_to_ras: np.ndarray, plane: Plane) -> None:
    """Raise :class:`InputError` when bone is missing on the vault's midline (the defect crosses the plane)."""
    matrix = np.asarray(ijk_to_ras, dtype=float)
    step = max(1, int(round(1.0 / voxel_spacing(matrix).min())))  # ~1 mm samples are plenty for a 3 mm strip
    points = np.argwhere(bone[::step, ::step, ::step]) * step @ matrix[:3, :3].T + matrix[:3, 3]
    centre = 0.5 * (points.min(axis=0) + points.max(axis=0))
    strip = points[np.abs(plane.signed_distance(points)) <= MIDLINE_STRIP_MM] - centre
    superior = np.array([0.0, 0.0, 1.0]) - plane.normal[2] * plane.normal
    superior /= np.linalg.norm(superior)
    anterior = np.cross(superior, plane.normal)
    anterior *= np.sign(anterior[1]) or 1.0
    elevation = np.degrees(np.arctan2(strip @ superior, strip @ anterior))  # 0 forward, 90 up, 180 back
    low, high = VAULT_ELEVATION_DEGREES
    bins = np.arange(low, high + 2.0, 2.0)
    counts, _ = np.histogram(elevation, bins=bins)
    empty = counts == 0
    run, longest, where = 0, 0, None
    for index, is_empty in enumerate(empty):
        run = run + 1 if is_empty else 0
        if run > longest:
            longest, where = run, bins[index + 1]
    if longest * 2.0 >= MIDLINE_GAP_DEGREES:
        raise InputError(
            f"the defect crosses the mid-sagittal plane (no bone on the midline over {2 * longest:.0f}° of the vault, "
            f"up to {where:.0f}° from the front): the mirrored healthy side cannot fill it. "
            "Use the model-based completion (method dev/knn) for this skull"
        )


def _max_pool(mask: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Any-bone pooling by integer factors (bone stays bone on the coarse grid)."""
    shape = np.asarray(mask.shape) // factor
    trimmed = mask[: shape[0] * factor[0], : shape[1] * factor[1], : shape[2] * factor[2]]
    blocks = trimmed.reshape(shape[0], factor[0], shape[1], factor[1], shape[2], factor[2])
    return blocks.any(axis=(1, 3, 5))


def _perpendicular_axes(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first = np.cross(normal, [0.0, 0.0, 1.0])
    first /= np.linalg.norm(first)
    return first, np.cross(normal, first)
