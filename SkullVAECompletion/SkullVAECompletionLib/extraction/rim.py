"""Rim-conforming implant surfaces: the decode says *where* and *what shape*, the patient's bone says *exactly where*.

A decoded skull on a 2–3 mm model grid cannot place an implant's surfaces within a millimetre of the defect's
rim. This stage therefore uses the decode only as a locator and a shape prior, and takes the surfaces from the
patient's own intact bone at the input's full resolution:

1. **Rays from the cranial centre** (:func:`vault_sphere_centre`). Along each direction the decode gives an expected
   shell (its outermost bone segment); the input's bone is searched in a window around it.
2. **Defect localisation** (:func:`find_holes`): directions where the decode expects shell and the patient has no
   bone in the window, grouped into holes on the sphere. Natural openings are where the decode expects no bone;
   directions whose expected shell lies outside the input's field of view are never holes. A hole must be a gap in
   a shell: measurable shell bone around at least a third of it (:func:`rim_support`, checked on its patch).
3. **Surfaces per hole** (:func:`fit_hole`): in a latitude-longitude patch whose equator runs through the hole
   (no pole near it), the outer and inner table radii of the intact bone are measured with sub-voxel accuracy.
   Their offsets from the decode's surfaces are interpolated across the hole (the outer surface as a thin plate,
   which carries the rim's curvature; the thickness as the decode's, scaled by the rim's ratio to it as a
   membrane, robust to a noisy rim);
   rays near the rim, which graze a ragged or bevelled edge, and outliers are re-estimated, and bone that is
   present but sunken well below the interpolated outer table (a depressed fracture) joins the defect.
4. **Voxelisation on the input grid** (:func:`voxelise`): a voxel belongs to the implant when its direction lies in
   the hole (plus a thin rim band) and its distance from the centre lies between the two surfaces; the same signed
   field gives the implant's surface.

All geometry is in "model millimetres": the model grid's index times its spacing (RAS axes, isotropic).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from scipy.sparse.linalg import spsolve
from scipy.spatial import cKDTree

from ..errors import build_config
from ..preprocessing.geometry import GridMapping

logger = logging.getLogger(__name__)

SHAPE_SOURCES = ("decode", "rim")
OUTER_INTERPOLATIONS = ("thin_plate", "harmonic")
COARSE_CELL_MM = 1.5  # voxelise: the field is first evaluated on a grid this coarse, then near the implant only
FIELD_SLOPE = 2.5  # a bound on how fast the implant's field changes (mm per mm): surfaces steeper than 68° are rare
SYMMETRIC_ORDERING = "MMD_AT_PLUS_A"  # the surfaces' systems are symmetric: this fill-reducing order suits them best
DETECTION_PRESENCE = 0.25  # thin bone broken into sub-voxel cracks (thin CT slices, resampling) still counts as bone
SAMPLING_THREADS = max(1, min(4, os.cpu_count() or 1))
VAULT_LEVEL = 0.4  # the vault: bone above this fraction of the skull's height
FACING_MIN_ELEVATION_DEG = 15.0  # above this (seen from the centre) no natural opening faces a defect: orbits lie lower


@dataclass(frozen=True)
class RimOptions:
    """Parameters of the rim-conforming stage (stored in a bundle's ``completion_options["rim"]``)."""

    detection_step_deg: float = 2.5  # spacing of the directions that look for holes
    detection_radial_step_mm: float = 0.5  # along the input's bone: thin bone is not stepped over
    decode_step_mm: float = 2.0  # along the decode's 2–3 mm voxels (its surface crossings are interpolated)
    window_mm: float = 6.0  # bone is searched this far inside and outside the expected shell
    detection_depth_mm: float = 20.0  # a hole is bone-free from this far inside the expected shell outwards
    patch_step_mm: float = 1.0  # spacing of a hole's rays, as arc length at the shell
    radial_step_mm: float = 0.5  # sampling step along a hole's rays (sub-sample radii by interpolated crossings)
    patch_margin_mm: float = 12.0  # intact bone measured around each hole
    rim_band_mm: float = 1.5  # the implant reaches this far past the bone-free directions, into the rim's bevel
    rim_skip_mm: float = 4.5  # rays this close to a hole may graze its edge: their radii are re-estimated
    outlier_mm: float = 2.0  # intact rays this far from the interpolated surface are re-estimated
    thin_outlier_mm: float = 0.5  # ... or this much thinner (near a defect a ray may have lost bone, never gained it)
    depression_mm: float = 3.0  # bone next to a defect sunken this far below the fitted outer table joins it
    outward_search_mm: float = 15.0  # ...unless bone lies this far beyond the window (a sinus' front wall)
    min_thickness_mm: float = 0.8
    max_thickness_mm: float = 25.0
    min_hole_mm2: float = 60.0  # smaller bone-free patches (a gap under ≈ 9 mm across: thin bone) are not a defect
    # A coarse bone-free patch this fraction of min_hole_mm2, without a coarse core, is measured finely all the same:
    # the detection sphere's 2.5° (3–4 mm at the shell) cannot give a 10–13 mm burr hole a core of its own.
    small_hole_fraction: float = 0.3
    min_core_mm: float = 3.0  # a defect holds a disc of this radius (fine patch): a sliver under 6 mm wide does not
    max_hole_fraction: float = 0.5  # a "hole" over this fraction of the expected shell: the input is not this skull
    min_rim_support: float = 1 / 3  # a defect is a gap in a shell: at least this much of the ring around it is shell
    max_patch_half_angle_deg: float = 80.0  # of a latitude-longitude patch (singular at its poles)
    # A wider hole (a hemicraniectomy reaching low, a third of the vault) gets an azimuthal equidistant patch about its
    # middle, regular up to the opposite direction, out to this angle from the middle.
    max_wide_patch_half_angle_deg: float = 125.0
    min_elevation_deg: float = -35.0  # directions further below the horizontal point at the skull base and face
    max_mirrored_fraction: float = 0.5  # a region whose mirror image is another bone-free region is a natural pair
    shape_smoothing_mm: float = 12.0  # smoothing of the decode's surfaces: its shape stays, its voxels' ripple goes
    shape: str = "decode"  # "decode": decoded surfaces + rim offsets; "rim": the rim's radii interpolated alone
    thickness: str = "decode"  # "decode": the decode's thickness × the rim's ratio to it; "rim": the rim's alone
    outer_interpolation: str = "thin_plate"  # of the outer surface across a hole: "thin_plate" or "harmonic"
    thin_plate_stiffness: float = 10.0  # the thin plate's smoothing of the rim's voxel noise (0: exact)

    def __post_init__(self) -> None:
        if self.shape not in SHAPE_SOURCES:
            raise ValueError(f"rim shape must be one of {SHAPE_SOURCES}, got {self.shape!r}")
        if self.thickness not in SHAPE_SOURCES:
            raise ValueError(f"rim thickness must be one of {SHAPE_SOURCES}, got {self.thickness!r}")
        if self.outer_interpolation not in OUTER_INTERPOLATIONS:
            raise ValueError(f"rim outer_interpolation must be one of {OUTER_INTERPOLATIONS}, "
                             f"got {self.outer_interpolation!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RimOptions:
        return build_config(cls, data or {}, "rim options")


@dataclass
class Hole:
    """One defect found on the sphere of directions."""

    direction: np.ndarray  # unit vector (model frame) through the hole's middle
    area_mm2: float  # at the expected outer surface
    kind: str = "missing"  # "missing" bone, or "depressed": sunken bone (≥ min_hole_mm2) inside the defect
    sunken_mm2: float = 0.0  # area of the directions where the defect still has (sunken) bone


@dataclass
class RimFit:
    """The implant of the rim-conforming stage, on the input grid."""

    implant: np.ndarray  # uint8 (i, j, k), Fortran order, like the input
    holes: list[Hole] = field(default_factory=list)
    message: str = ""  # why the implant is empty or partial; "" when all went well
    # Per hole: a signed field (> 0 exactly on implant voxels) on its box, and the box's lo corner (input index).
    fields: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


@dataclass
class Frame:
    """Everything the rays need: the centre, the expected skull and the input, both in model millimetres."""

    centre: np.ndarray  # model mm
    expected: np.ndarray  # model-grid bone probability of the expected (decoded) skull
    spacing: float  # model grid spacing (mm)
    defective: np.ndarray  # input grid, uint8 view
    mm_to_input: np.ndarray  # 4×4: model mm → input index
    input_shape: np.ndarray
    reach_mm: float  # distance from the centre to the farthest expected bone
    mirror: np.ndarray  # 4×4 reflection about the mid-sagittal plane, in the frame's (model mm) coordinates


# ----------------------------------------------------------------------------------------------- directions

@functools.lru_cache(maxsize=4)
def detection_sphere(step_deg: float) -> tuple[np.ndarray, sparse.csr_matrix, cKDTree]:
    """The detection directions, their neighbour graph and a search tree over them (the same for every skull and
    γ: built once)."""
    directions = fibonacci_directions(step_deg)
    directions.flags.writeable = False
    return directions, neighbour_graph(directions, step_deg), cKDTree(directions)


def fibonacci_directions(step_deg: float) -> np.ndarray:
    """Nearly uniform unit vectors about ``step_deg`` apart (Fibonacci sphere)."""
    count = max(64, int(round(4.0 * math.pi / math.radians(step_deg) ** 2)))
    index = np.arange(count) + 0.5
    z = 1.0 - 2.0 * index / count
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * index
    ring = np.sqrt(1.0 - z * z)
    return np.stack([ring * np.cos(azimuth), ring * np.sin(azimuth), z], axis=1)


def neighbour_graph(directions: np.ndarray, step_deg: float) -> sparse.csr_matrix:
    """Symmetric adjacency of the directions closer than 1.6 steps."""
    reach = 2.0 * math.sin(math.radians(1.6 * step_deg) / 2.0)
    pairs = cKDTree(directions).query_pairs(reach, output_type="ndarray")
    n = len(directions)
    rows, cols = np.r_[pairs[:, 0], pairs[:, 1]], np.r_[pairs[:, 1], pairs[:, 0]]
    return sparse.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n)).tocsr()


# ----------------------------------------------------------------------------------------------- profiles

def vault_sphere_centre(expected: np.ndarray, spacing: float) -> np.ndarray | None:
    """Centre of the sphere that best fits the expected skull's vault (its upper part), in model mm.

    The vault is close to a sphere seen from the cranial cavity; the face and skull base, which are not, are left
    out by taking only the bone above :data:`VAULT_LEVEL` of the skull's height. None when there is no bone.
    """
    points = np.argwhere(expected > 0.5).astype(float) * spacing
    if len(points) < 10:
        return None
    low, high = points[:, 2].min(), points[:, 2].max()
    vault = points[points[:, 2] >= low + VAULT_LEVEL * (high - low)]
    # Linear least squares: |p|² = 2 c·p + (r² − |c|²).
    design = np.c_[2.0 * vault, np.ones(len(vault))]
    solution, *_ = np.linalg.lstsq(design, np.sum(vault**2, axis=1), rcond=None)
    return np.clip(solution[:3], points.min(axis=0), points.max(axis=0))


def sample(volume: np.ndarray, coordinates: np.ndarray, order: int = 1, mode: str = "constant") -> np.ndarray:
    """``ndimage.map_coordinates`` (float32 out; 0 outside in the default mode) over chunks in parallel threads.

    scipy releases the GIL while it interpolates, so the rays' samples (10⁵–10⁶ points) are split across the cores.
    """
    def run(chunk: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, chunk, order=order, mode=mode, cval=0, output=np.float32)

    return np.concatenate(_in_threads(run, coordinates, minimum=50_000, axis=1))


def _in_threads(function: Any, items: np.ndarray, minimum: int = 100_000, axis: int = 0) -> list[Any]:
    """``function`` over chunks (along ``axis``) of ``items`` in parallel threads, at least ``minimum`` items each
    (numpy and scipy release the GIL on big arrays)."""
    chunks = np.array_split(items, min(SAMPLING_THREADS, max(1, items.shape[axis] // minimum)), axis=axis)
    if len(chunks) == 1:
        return [function(items)]
    with ThreadPoolExecutor(len(chunks)) as pool:
        return list(pool.map(function, chunks))


def _ray_coordinates(to_index: np.ndarray, origin_mm: np.ndarray, directions: np.ndarray,
                     radii: np.ndarray) -> np.ndarray:
    """Voxel coordinates (3, rays × samples) of the points origin + direction × radius of a volume whose index is
    ``to_index`` @ (mm, 1): the map is linear, so each ray's origin and step are mapped once, not every point."""
    origin = to_index[:3, :3] @ origin_mm + to_index[:3, 3]
    steps = directions @ to_index[:3, :3].T
    radii = np.broadcast_to(radii, (len(directions), np.shape(radii)[-1]))
    return np.stack([origin[axis] + steps[:, axis, None] * radii for axis in range(3)]).reshape(3, -1)


def _sample_model(frame: Frame, directions: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """The expected skull along rays from the centre: (rays, samples)."""
    to_index = np.diag([1.0 / frame.spacing] * 3 + [1.0])
    coordinates = _ray_coordinates(to_index, frame.centre, directions, radii)
    return sample(frame.expected, coordinates).reshape(len(directions), np.shape(radii)[-1])


def _sample_input(frame: Frame, directions: np.ndarray, radii: np.ndarray, order: int) -> np.ndarray:
    """The input's bone along rays from the centre: (rays, samples)."""
    coordinates = _ray_coordinates(frame.mm_to_input, frame.centre, directions, radii)
    return sample(frame.defective, coordinates, order).reshape(len(directions), np.shape(radii)[-1])


def _to_input_index(frame: Frame, points_mm: np.ndarray) -> np.ndarray:
    matrix = frame.mm_to_input
    return points_mm @ matrix[:3, :3].T + matrix[:3, 3]


def _inside_input(frame: Frame, points_mm: np.ndarray) -> np.ndarray:
    index = _to_input_index(frame, points_mm)
    return np.all((index >= -0.5) & (index <= frame.input_shape - 0.5), axis=-1)


def _mirrored_rays(frame: Frame, directions: np.ndarray) -> tuple[Frame, np.ndarray]:
    """The mirror images of rays from the centre: rays from the mirrored centre (a frame) along these directions."""
    mirrored_frame = replace(frame, centre=frame.mirror[:3, :3] @ frame.centre + frame.mirror[:3, 3])
    return mirrored_frame, directions @ frame.mirror[:3, :3].T


def _mirrored_directions(frame: Frame, directions: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Directions, seen from the centre, of the mirror images of the points at ``radii`` along ``directions``."""
    points = frame.centre + directions * radii[:, None]
    vectors = points @ frame.mirror[:3, :3].T + frame.mirror[:3, 3] - frame.centre
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def _segment_ends(profile: np.ndarray, radii: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Sub-sample radii where the OUTERMOST run of ``profile >= threshold`` starts and ends, per ray (NaN if none).

    The run's ends are located by linear interpolation between the samples on either side of the crossing.
    """
    above = profile >= threshold
    n_rays, n_samples = profile.shape
    has = above.any(axis=1)
    rows = np.arange(n_rays)
    last = n_samples - 1 - np.argmax(above[:, ::-1], axis=1)
    # Start of the outermost run: the last "below" sample before `last`, plus one.
    below_before = np.where(~above & (np.arange(n_samples)[None, :] < last[:, None]), np.arange(n_samples), -1)
    first = below_before.max(axis=1) + 1
    step = radii[1] - radii[0]

    def crossing(inner: np.ndarray, outer: np.ndarray) -> np.ndarray:
        a = profile[rows, np.clip(inner, 0, n_samples - 1)]
        b = profile[rows, np.clip(outer, 0, n_samples - 1)]
        fraction = np.clip((a - threshold) / np.where(np.abs(a - b) > 1e-6, a - b, 1.0), 0.0, 1.0)
        return radii[np.clip(inner, 0, n_samples - 1)] + fraction * step * np.sign(outer - inner)

    outer = np.where(last < n_samples - 1, crossing(last, last + 1), radii[-1])
    inner = np.where(first > 0, crossing(first, first - 1), radii[0])
    return np.where(has, outer, np.nan), np.where(has, inner, np.nan)


def expected_shell(frame: Frame, directions: np.ndarray, radial_step_mm: float,
                   radii_mm: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Outer and inner radius (mm) of the expected skull's outermost bone along each direction (NaN: none).

    ``radii_mm``: the range of radii to search (default: from the centre to the farthest expected bone).
    """
    # No bone lies in the middle of the cranial cavity: start a quarter of the way out.
    low, high = radii_mm if radii_mm is not None else (0.25 * frame.reach_mm, frame.reach_mm)
    radii = np.arange(low, high + radial_step_mm, radial_step_mm, dtype=np.float32)
    return _segment_ends(_sample_model(frame, directions, radii[None, :]), radii)


@dataclass
class RayProfile:
    """What the input's bone looks like along rays, in a window around the expected shell."""

    present: np.ndarray  # bone in the window
    outer: np.ndarray  # outer table radius (mm), NaN without bone
    inner: np.ndarray  # inner table radius (mm)
    in_view: np.ndarray  # the expected inner surface lies inside the input's field of view (a shell to judge)


def input_profile(
    frame: Frame, directions: np.ndarray, expected_outer: np.ndarray, expected_inner: np.ndarray, window_mm: float,
    radial_step_mm: float, order: int = 1, inward_mm: float | None = None, presence: float = 0.5,
) -> RayProfile:
    """The input's bone along each ray between ``expected_inner − inward`` and ``expected_outer + window``
    (``inward`` defaults to ``window``). ``presence``: the interpolated bone fraction that counts as bone there (below
    0.5 bridges cracks thinner than a voxel)."""
    start = np.nan_to_num(expected_inner, nan=0.0) - (window_mm if inward_mm is None else inward_mm)
    stop = np.nan_to_num(expected_outer, nan=0.0) + window_mm
    length = float(np.max(stop - start)) if len(start) else 0.0
    offsets = np.arange(0.0, length + radial_step_mm, radial_step_mm, dtype=np.float32)
    radii = start[:, None] + offsets[None, :]
    values = _sample_input(frame, directions, radii, order)
    values[radii > stop[:, None]] = 0.0
    above = values >= 0.5
    present = (values >= presence).any(axis=1) if presence < 0.5 else above.any(axis=1)
    # Outer table: the outermost crossing; inner table: the innermost one (the whole bone within the window).
    n_samples = values.shape[1]
    rows = np.arange(len(values))
    last = n_samples - 1 - np.argmax(above[:, ::-1], axis=1)
    first = np.argmax(above, axis=1)

    def crossing(inside: np.ndarray, outside: np.ndarray) -> np.ndarray:
        outside = np.clip(outside, 0, n_samples - 1)
        a, b = values[rows, inside], values[rows, outside]
        fraction = np.clip((a - 0.5) / np.where(np.abs(a - b) > 1e-6, a - b, 1.0), 0.0, 1.0)
        return radii[rows, inside] + fraction * (radii[rows, outside] - radii[rows, inside])

    outer = np.where(present, crossing(last, last + 1), np.nan)
    inner = np.where(present, crossing(first, first - 1), np.nan)
    tip = frame.centre + directions * np.nan_to_num(expected_inner, nan=0.0)[:, None]
    return RayProfile(present, outer, inner, _inside_input(frame, tip))


# ----------------------------------------------------------------------------------------------- holes

@dataclass
class HoleSeeds:
    """Holes found on the coarse sphere of directions."""

    directions: np.ndarray
    labels: np.ndarray  # hole index per direction, −1 for none
    expected_outer: np.ndarray
    count: int
    shell_fraction: float  # bone-free fraction of the expected shell


def find_holes(frame: Frame, options: RimOptions) -> HoleSeeds:
    """Directions where the expected skull has shell and the input has no bone near it, grouped into holes."""
    directions, graph, tree = detection_sphere(options.detection_step_deg)
    outer, inner = expected_shell(frame, directions, options.decode_step_mm)
    # Straight below the cranial cavity lie the skull base's openings (foramen magnum, jugular foramina):
    # never an implant site, and often cut by the field of view.
    has_shell = np.isfinite(outer) & (directions[:, 2] >= math.sin(math.radians(options.min_elevation_deg)))
    labels = np.full(len(directions), -1)
    if not has_shell.any():
        return HoleSeeds(directions, labels, outer, 0, 0.0)
    # Defects are found where bone is missing; sunken bone next to them (a depressed fracture) joins them in
    # fit_hole, measured against the rim. Sunken bone alone is no evidence: a decode may lie millimetres off.
    candidates = np.flatnonzero(has_shell)
    profile = input_profile(frame, directions[candidates], outer[candidates], inner[candidates], options.window_mm,
                            options.detection_radial_step_mm, presence=DETECTION_PRESENCE)
    candidates = candidates[~profile.present & profile.in_view]
    # A hole in the vault lets a ray pass from the cranial cavity into the open; natural openings seen from the
    # centre (orbits, canals) have bone behind them, deeper along the ray (checked on the few bone-free rays only).
    deep = input_profile(frame, directions[candidates], outer[candidates], inner[candidates], options.window_mm,
                         options.detection_radial_step_mm, inward_mm=options.detection_depth_mm,
                         presence=DETECTION_PRESENCE)
    open_ray = np.zeros(len(directions), bool)
    open_ray[candidates[~deep.present]] = True
    shell_fraction = float(open_ray.sum() / max(1, has_shell.sum()))
    if not open_ray.any():
        return HoleSeeds(directions, labels, outer, 0, shell_fraction)
    # A defect has a core: directions whose neighbours are all bone-free. Slivers where the decode's surface is
    # merely offset from the patient's, or where it blurs over a natural opening's edge, have none.
    closed_neighbours = graph @ (~open_ray).astype(np.int32)
    core = open_ray & (closed_neighbours == 0)
    chosen = np.flatnonzero(open_ray)
    count, component = csgraph.connected_components(graph[chosen][:, chosen], directed=False)
    ray_area = 4.0 * math.pi / len(directions) * outer[chosen] ** 2  # mm² per direction at the shell
    area = np.bincount(component, weights=ray_area, minlength=count)
    has_core = np.bincount(component, weights=core[chosen], minlength=count) > 0
    radii = np.where(np.isfinite(outer), outer, np.nanmedian(outer[has_shell]))
    partners = tree.query(_mirrored_directions(frame, directions, radii))[1]
    symmetric = mirrored_fraction(partners, open_ray, graph, chosen, component, count)
    height = np.bincount(component, weights=directions[chosen, 2], minlength=count) / np.bincount(
        component, minlength=count)
    in_vault = height >= 0.0
    # A hole high on the vault facing a larger defect on the other side is no natural pair: a hole never hides
    # another. Lower down, an orbit opposite a fronto-orbital defect (which took in the other orbit) is one.
    faces_defect = faces_larger_defect(partners, graph, chosen, component, count, area, options) & (
        height >= math.sin(math.radians(FACING_MIN_ELEVATION_DEG)))
    large = (area >= options.min_hole_mm2) & has_core & ((symmetric < options.max_mirrored_fraction) | faces_defect)
    # Small compact patches in the vault go on to the fine measurement, which sees a burr hole's core and area at
    # 1 mm (fit_hole); a sliver is several times longer than wide, so its directions lie far from their middle.
    # Below the vault (orbits, nose, the skull base) small bone-free patches are natural openings and thin bone.
    compact = _compact_components(directions[chosen], outer[chosen], component, count, area)
    one_sided = mirrored_fraction(partners, open_ray, graph, chosen, component, count, own_mirror=True)
    small = (area >= options.small_hole_fraction * options.min_hole_mm2) & compact & in_vault & (
        (one_sided < options.max_mirrored_fraction) | faces_defect)
    keep = np.flatnonzero(large | small)
    relabel = np.full(count, -1)
    relabel[keep] = np.arange(len(keep))
    labels[chosen] = relabel[component]
    return HoleSeeds(directions, labels, outer, len(keep), shell_fraction)


def _compact_components(directions: np.ndarray, radii: np.ndarray, component: np.ndarray, count: int,
                        area: np.ndarray) -> np.ndarray:
    """Per bone-free region: True when it is roughly round, i.e. no direction lies further (as arc length at the
    shell's ``radii``) from the region's middle than twice the radius of a disc of its area. A band or a sliver is
    long and narrow: its far ends fail."""
    sums = np.stack([np.bincount(component, weights=directions[:, axis], minlength=count) for axis in range(3)], 1)
    middles = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-9)
    angle = np.arccos(np.clip(np.sum(directions * middles[component], axis=1), -1.0, 1.0))
    farthest = np.zeros(count)
    np.maximum.at(farthest, component, angle * radii)
    return farthest <= 2.0 * np.sqrt(np.maximum(area, 0.0) / math.pi) + 1e-6


def partner_fractions(partners: np.ndarray, graph: sparse.csr_matrix, chosen: np.ndarray, component: np.ndarray,
                      count: int) -> np.ndarray:
    """(count, count): the fraction of region a's directions whose mirror image lies in region b or next to it."""
    n = graph.shape[0]
    membership = sparse.csr_matrix((np.ones(len(chosen)), (chosen, component)), shape=(n, count))
    near = ((graph @ membership + membership) > 0).astype(np.float64)  # a step of tolerance for pose and asymmetry
    owners = sparse.csr_matrix((np.ones(len(chosen)), (component, np.arange(len(chosen)))), shape=(count, len(chosen)))
    hits = np.asarray((owners @ near[partners[chosen]]).todense())
    return hits / np.maximum(np.bincount(component, minlength=count), 1)[:, None]


def faces_larger_defect(partners: np.ndarray, graph: sparse.csr_matrix, chosen: np.ndarray, component: np.ndarray,
                        count: int, area: np.ndarray, options: RimOptions) -> np.ndarray:
    """Per bone-free region: its mirror image lies mostly in another region at least twice its area whose own mirror
    image is mostly elsewhere. Natural openings pair up with their like (two orbits); a burr hole opposite a
    hemicraniectomy mirrors into the large defect, which does not mirror back into it."""
    if count < 2:
        return np.zeros(count, bool)
    fraction = partner_fractions(partners, graph, chosen, component, count)
    np.fill_diagonal(fraction, 0.0)
    level = options.max_mirrored_fraction
    facing = (fraction >= level) & (fraction.T < level) & (area[None, :] >= 2.0 * area[:, None])
    return facing.any(axis=1)


def mirrored_fraction(partners: np.ndarray, open_ray: np.ndarray, graph: sparse.csr_matrix, chosen: np.ndarray,
                      component: np.ndarray, count: int, own_mirror: bool = False) -> np.ndarray:
    """Per bone-free region: the fraction of its left-right mirror image that is bone-free and another region.

    Natural openings come in pairs (orbits, optic canals, foramina), one on each side of the mid-sagittal plane;
    a defect is one-sided, or one region across the midline whose mirror image is itself. ``partners``: per
    direction, the direction nearest to its point on the shell mirrored, seen from the centre. ``own_mirror``: a
    partner next to the region itself is its own mirror image widened by the step of tolerance (a burr hole on the
    midline, a few directions wide), not another opening.
    """
    near_open = open_ray | (graph @ open_ray.astype(np.int32) > 0)  # a step of tolerance for pose and asymmetry
    region = np.full(len(open_ray), -1)
    region[chosen] = component
    partner = partners[chosen]
    other_side = near_open[partner] & (region[partner] != component)
    if own_mirror:
        membership = sparse.csr_matrix((np.ones(len(chosen)), (chosen, component)), shape=(len(open_ray), count))
        other_side &= np.asarray((graph[partner] @ membership)[np.arange(len(chosen)), component]).ravel() == 0
    return np.bincount(component, weights=other_side, minlength=count) / np.bincount(component, minlength=count)


# ----------------------------------------------------------------------------------------------- patches

@dataclass
class Patch:
    """A grid of rays over one hole: latitude-longitude with the equator through the hole, or (``azimuthal``, for
    holes too wide for that) azimuthal equidistant about the hole's middle: grid offsets are the angle from the
    middle along e3 and e2, so the grid is regular everywhere but at the opposite direction."""

    axes: np.ndarray  # rows e1 (hole centre), e2, e3
    step: float  # radians between rays
    half_count: int  # the grid spans (−half_count … half_count) · step in latitude and longitude
    azimuthal: bool = False

    @property
    def size(self) -> int:
        return 2 * self.half_count + 1

    def directions(self) -> np.ndarray:
        angles = (np.arange(self.size) - self.half_count) * self.step
        lat, lon = np.meshgrid(angles, angles, indexing="ij")
        if self.azimuthal:
            theta = np.hypot(lat, lon)
            ratio = np.sin(theta) / np.maximum(theta, 1e-12)
            local = np.stack([np.cos(theta), lon * ratio, lat * ratio], axis=-1)
        else:
            local = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)
        return local @ self.axes  # (lat, lon, 3)

    def grid_coordinates(self, vectors: np.ndarray) -> np.ndarray:
        """Fractional (lat, lon) grid indices of direction vectors (any length), shape (..., 2), in their precision
        (float32 for the voxels of an implant's box: a millionth of a pixel is plenty, and 5× faster)."""
        dtype = vectors.dtype if vectors.dtype == np.float32 else np.float64
        local = vectors @ self.axes.T.astype(dtype)
        if self.azimuthal:
            sideways = np.hypot(local[..., 1], local[..., 2])
            scale = np.arctan2(sideways, local[..., 0]) / np.maximum(sideways, 1e-12)
            return np.stack([local[..., 2] * scale, local[..., 1] * scale], axis=-1) / self.step + self.half_count
        norm = np.linalg.norm(local, axis=-1)
        lat = np.arcsin(np.clip(local[..., 2] / np.maximum(norm, 1e-9), -1.0, 1.0))
        lon = np.arctan2(local[..., 1], local[..., 0])
        return np.stack([lat, lon], axis=-1) / self.step + self.half_count


def patch_for(directions: np.ndarray, radius_mm: float, options: RimOptions) -> Patch | None:
    """A patch covering these hole directions plus the intact margin; None when the hole is too wide."""
    centre = directions.mean(axis=0)
    centre /= np.linalg.norm(centre)
    up = np.array([0.0, 0.0, 1.0]) if abs(centre[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e3 = up - centre * (up @ centre)
    e3 /= np.linalg.norm(e3)
    e2 = np.cross(e3, centre)
    axes = np.stack([centre, e2, e3])
    local = directions @ axes.T
    half_angle = max(float(np.max(np.abs(np.arcsin(np.clip(local[:, 2], -1, 1))))),
                     float(np.max(np.abs(np.arctan2(local[:, 1], local[:, 0])))))
    margin = options.patch_margin_mm / radius_mm + math.radians(options.detection_step_deg)
    step = options.patch_step_mm / radius_mm
    if math.degrees(half_angle + margin) <= options.max_patch_half_angle_deg:
        return Patch(axes, step, int(math.ceil((half_angle + margin) / step)))
    widest = float(np.arccos(np.clip(local[:, 0], -1.0, 1.0)).max()) + margin
    if math.degrees(widest) > options.max_wide_patch_half_angle_deg:
        return None
    return Patch(axes, step, int(math.ceil(widest / step)), azimuthal=True)


def grid_adjacency(shape: tuple[int, int]) -> sparse.csr_matrix:
    """4-neighbour adjacency of the pixels of a 2-D grid (row-major)."""
    paths = [sparse.diags([1.0, 1.0], [-1, 1], shape=(n, n)) for n in shape]
    return (sparse.kron(paths[0], sparse.eye(shape[1])) + sparse.kron(sparse.eye(shape[0]), paths[1])).tocsr()


@functools.lru_cache(maxsize=8)
def _smoothness_operator(shape: tuple[int, int], order: int) -> sparse.csr_matrix:
    """The grid Laplacian L with natural (zero-flux) borders (order 1: the membrane's energy) or LᵀL (order 2: the
    thin plate's bending energy; at the grid's borders it also resists slope, which keeps a hole's surface from
    extrapolating the rim's slope; measured better than bending energy alone). One per patch size."""
    laplacian = grid_adjacency(shape)
    laplacian = (sparse.diags(np.asarray(laplacian.sum(axis=1)).ravel()) - laplacian).tocsr()
    return laplacian if order == 1 else (laplacian.T @ laplacian).tocsr()


def _solve_fixed(values: np.ndarray, known: np.ndarray, operator: sparse.csr_matrix) -> np.ndarray:
    """Minimise xᵀ·operator·x over the unknown pixels with the known ones fixed (NaN if none is known)."""
    filled = np.where(known, values, np.nan).astype(np.float64)
    if known.all() or not known.any():
        return filled
    # Every unknown pixel is connected to a known one (known pixels exist), so the system is regular.
    free, fixed = np.flatnonzero(~known.ravel()), np.flatnonzero(known.ravel())
    rhs = -(operator[free][:, fixed] @ values.ravel()[fixed].astype(np.float64))
    result = filled.ravel()
    result[free] = spsolve(operator[free][:, free].tocsc(), rhs, permc_spec=SYMMETRIC_ORDERING)
    return result.reshape(values.shape)


def interpolate_surface(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill the unknown pixels of a 2-D grid with the harmonic interpolant (the membrane) of the known ones.

    No overshoot and flat across a hole: robust to a noisy rim. NaN everywhere if no pixel is known.
    """
    return _solve_fixed(values, known, _smoothness_operator(tuple(values.shape), 1))


def thin_plate_surface(values: np.ndarray, known: np.ndarray, stiffness: float = 0.0) -> np.ndarray:
    """The thin plate through the known pixels: it carries the rim's slope and curvature across a hole.

    ``stiffness`` 0 interpolates the known values exactly; > 0 is the smoothing spline that minimises
    Σ_known (f − value)² + stiffness·Σ (Δf)² (pixels as units), which follows the rim without copying the noise of
    its voxels (an exact thin plate amplifies it). NaN everywhere if no pixel is known.
    """
    operator = _smoothness_operator(tuple(values.shape), 2)
    if stiffness <= 0 or not known.any():
        return _solve_fixed(values, known, operator)
    weights = known.ravel().astype(np.float64)
    system = (sparse.diags(weights) + stiffness * operator).tocsc()
    data = weights * np.nan_to_num(np.asarray(values, np.float64).ravel())
    return spsolve(system, data, permc_spec=SYMMETRIC_ORDERING).reshape(values.shape)


def components_touching(mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The connected components of ``mask`` that have at least one pixel in ``region``."""
    labels, _ = ndimage.label(mask)
    touching = np.unique(labels[region & mask])
    return np.isin(labels, touching[touching > 0])


@dataclass
class PatchFit:
    """Surfaces over one hole, on its patch."""

    patch: Patch
    fill: np.ndarray  # bool (lat, lon): directions that get implant
    outer: np.ndarray  # outer surface radius (mm)
    inner: np.ndarray
    hole: Hole


@dataclass
class PatchProfile:
    """What the rays of a hole's patch see: the expected shell and the input's bone, on the (lat, lon) grid."""

    patch: Patch
    radius: float  # typical outer radius of the expected shell here (mm)
    expected_outer: np.ndarray  # the decode's outer surface, smoothed (mm)
    expected_inner: np.ndarray  # its inner surface, smoothed (mm)
    present: np.ndarray  # the input has bone near the expected shell
    in_view: np.ndarray
    measurable: np.ndarray  # the whole search window lies in the field of view: the bone's radii are not cut
    outer: np.ndarray  # the input's outer and inner table radii (mm, NaN without bone)
    inner: np.ndarray
    hole: np.ndarray  # the defect's bone-free directions (and the bone they enclose)

    @property
    def pixel_mm(self) -> float:
        return self.patch.step * self.radius


def measure_patch(frame: Frame, seeds: HoleSeeds, label: int, options: RimOptions) -> PatchProfile | str:
    """Rays over one coarse hole and its intact surroundings: the expected shell, the input's tables, the hole."""
    members = seeds.labels == label
    radius = float(np.nanmedian(seeds.expected_outer[members]))
    patch = patch_for(seeds.directions[members], radius, options)
    if patch is None:
        return (f"a bone-free region wider than {2 * options.max_wide_patch_half_angle_deg:.0f}° seen from the skull's "
                "centre was not filled: it is too large to be a defect of this skull")
    directions = patch.directions().reshape(-1, 3)
    shape = (patch.size, patch.size)
    # The decode's shell near this hole: within the hole's radii, with room for the bone around it.
    seed_outer = seeds.expected_outer[members]
    search = (max(0.0, float(np.nanmin(seed_outer)) - options.patch_margin_mm - 30.0),
              float(np.nanmax(seed_outer)) + options.patch_margin_mm + 10.0)
    exp_outer, exp_inner = (values.reshape(shape) for values in
                            expected_shell(frame, directions, options.decode_step_mm, search))
    # Where the decode has no shell on a ray, carry its surfaces over from the neighbours.
    has_shell = np.isfinite(exp_outer)
    if not has_shell.any():
        return "the expected skull has no shell around a bone-free region"
    exp_outer = interpolate_surface(exp_outer, has_shell)
    exp_inner = interpolate_surface(exp_inner, has_shell)
    defined = np.isfinite(exp_outer) & np.isfinite(exp_inner)
    exp_outer = np.where(defined, exp_outer, radius)
    exp_inner = np.where(defined, exp_inner, radius)
    pixel_mm = patch.step * radius
    if options.shape_smoothing_mm > 0:
        sigma = options.shape_smoothing_mm / pixel_mm
        exp_outer = ndimage.gaussian_filter(exp_outer, sigma, mode="nearest")
        exp_inner = ndimage.gaussian_filter(exp_inner, sigma, mode="nearest")
    profile = input_profile(frame, directions, exp_outer.ravel(), exp_inner.ravel(), options.window_mm,
                            options.radial_step_mm)
    present, in_view = profile.present.reshape(shape), profile.in_view.reshape(shape)
    # The hole on the patch: bone-free, in view, connected to this hole's coarse directions.
    seed = np.zeros(shape, bool)
    coordinates = np.rint(patch.grid_coordinates(seeds.directions[members])).astype(int)
    inside = np.all((coordinates >= 0) & (coordinates < patch.size), axis=1)
    seed[coordinates[inside, 0], coordinates[inside, 1]] = True
    coarse_step = max(1, int(round(math.radians(options.detection_step_deg) * radius / pixel_mm)))  # in pixels
    seed = ndimage.binary_dilation(seed, iterations=coarse_step)
    hole = components_touching(~present & in_view & defined, seed)
    # An opening the healthy side has too (an orbit next to a fronto-orbital defect) is natural: not the defect.
    natural = open_on_healthy_side(frame, patch, directions, exp_outer.ravel(), exp_inner.ravel(), hole, options,
                                   other_holes(seeds, label, options))
    if natural.any():
        hole = components_touching(hole & ~natural, seed)
        # What is left must still have a core, like a hole on the coarse sphere: not just the edge of a natural
        # opening that its mirror image does not quite match (no two orbits are alike).
        hole = components_touching(hole, ndimage.binary_erosion(hole, iterations=coarse_step))
    # Bone enclosed by missing bone (a depressed or loose fragment, a bridge) lies inside the defect: the surfaces
    # are fitted to the rim outside it; the fragment itself stays as it is (the implant never covers input bone).
    hole = ndimage.binary_fill_holes(hole)
    window_end = frame.centre + directions * (exp_outer.ravel() + options.window_mm)[:, None]
    measurable = in_view & _inside_input(frame, window_end).reshape(shape)
    return PatchProfile(patch, radius, exp_outer, exp_inner, present, in_view, measurable,
                        profile.outer.reshape(shape), profile.inner.reshape(shape), hole)


def other_holes(seeds: HoleSeeds, label: int, options: RimOptions) -> np.ndarray:
    """Per detection direction: it lies in (or next to) one of the other holes found, not in hole ``label``."""
    _, graph, _ = detection_sphere(options.detection_step_deg)
    other = (seeds.labels >= 0) & (seeds.labels != label)
    return other | (graph @ other.astype(np.int32) > 0)


def open_on_healthy_side(frame: Frame, patch: Patch, directions: np.ndarray, expected_outer: np.ndarray,
                         expected_inner: np.ndarray, hole: np.ndarray, options: RimOptions,
                         other_defects: np.ndarray | None = None) -> np.ndarray:
    """Hole pixels whose mirror image (across the frame's mid-sagittal plane) is bone-free too and not part of this
    hole: natural openings, which come in pairs; a defect is one-sided or crosses the midline.

    ``other_defects`` (per detection direction): the other holes found. A mirror image inside one of them is no
    healthy side, so it says nothing (a small hole opposite a large defect stays a hole). Two separate holes that
    mirror each other exactly are taken for natural openings (the coarse detection does the same).
    """
    mirror_frame, mirrored = _mirrored_rays(frame, directions)
    mirrored_directions = _mirrored_directions(frame, directions, expected_outer)
    pixels = np.rint(patch.grid_coordinates(mirrored_directions)).astype(int)
    inside = np.all((pixels >= 0) & (pixels < patch.size), axis=1)
    mirror_in_hole = np.zeros(len(directions), bool)
    mirror_in_hole[inside] = hole[pixels[inside, 0], pixels[inside, 1]]
    if other_defects is not None and other_defects.any():
        _, _, tree = detection_sphere(options.detection_step_deg)
        mirror_in_hole |= other_defects[tree.query(mirrored_directions)[1]]
    candidates = np.flatnonzero(hole.ravel() & ~mirror_in_hole)
    natural = np.zeros(len(directions), bool)
    if candidates.size:
        profile = input_profile(mirror_frame, mirrored[candidates], expected_outer[candidates],
                                expected_inner[candidates], options.window_mm, options.detection_radial_step_mm,
                                presence=DETECTION_PRESENCE)
        natural[candidates] = ~profile.present & profile.in_view
    return natural.reshape(hole.shape)


def bone_beyond_window(frame: Frame, measured: PatchProfile, pixels: np.ndarray, options: RimOptions) -> np.ndarray:
    """Of the patch's ``pixels``, those whose ray meets the input's bone within ``outward_search_mm`` beyond the
    window searched around the expected outer surface."""
    beyond = np.zeros(pixels.shape, bool)
    if not pixels.any() or options.outward_search_mm <= 0:
        return beyond
    directions = measured.patch.directions()[pixels]
    start = measured.expected_outer[pixels] + options.window_mm
    # A wall is looked for, not measured: millimetre steps, and partly filled samples count (thin walls).
    profile = input_profile(frame, directions, start + options.outward_search_mm, start, 0.0, 1.0,
                            presence=DETECTION_PRESENCE)
    beyond[pixels] = profile.present
    return beyond


def rim_support(defect: np.ndarray, shell: np.ndarray, measurable: np.ndarray, skip: int) -> float:
    """The fraction of the ring around a defect (from ``skip`` to ``2·skip + 2`` pixels out) where the input's bone
    is a measurable shell; ring pixels outside the field of view do not count either way."""
    ring = ndimage.binary_dilation(defect, iterations=2 * skip + 2) & ~ndimage.binary_dilation(defect, iterations=skip)
    ring &= measurable
    return float((shell & ring).sum() / ring.sum()) if ring.any() else 0.0


def decode_shaped_thickness(measured: PatchProfile, thickness: np.ndarray, known: np.ndarray,
                            options: RimOptions) -> np.ndarray:
    """The bone's thickness across a hole: the decode's (smoothed) thickness, scaled by the rim's ratio of measured
    to decoded thickness, interpolated across the hole. The decode knows where the bone thickens (towards the
    brow, the occiput); the rim knows by how much this patient's bone differs from it."""
    decoded = np.maximum(measured.expected_outer - measured.expected_inner, options.min_thickness_mm)
    ratio = interpolate_surface(thickness / decoded, known)
    return np.clip(decoded * ratio, options.min_thickness_mm, options.max_thickness_mm)


def fit_hole(frame: Frame, seeds: HoleSeeds, label: int, options: RimOptions) -> PatchFit | str:
    """Measure the rim around one hole and interpolate the implant's surfaces across it (or say why not)."""
    measured = measure_patch(frame, seeds, label, options)
    if isinstance(measured, str):
        return measured
    if not measured.hole.any():
        return ""
    present, outer, inner, hole = measured.present, measured.outer, measured.inner, measured.hole
    pixel_mm = measured.pixel_mm
    thickness = outer - inner
    # Bone further out on the same ray (the front wall of a frontal sinus): the bone in the window is not the
    # patient's outer table there, so the ray neither guides the surfaces nor counts as sunken or cut.
    beyond = bone_beyond_window(frame, measured, present, options)
    plausible = present & ~beyond & (thickness >= options.min_thickness_mm) & (
        thickness <= options.max_thickness_mm)
    band = max(1, int(round(options.rim_band_mm / pixel_mm)))
    skip = max(1, int(round(options.rim_skip_mm / pixel_mm)))
    smoothing = options.shape_smoothing_mm / pixel_mm
    # The decode's outer surface carries the shape across the hole; its thickness is only trusted relative to the
    # rim's (a blurred decode is thin where it fills a hole): see decode_shaped_thickness.
    base_outer = measured.expected_outer if options.shape == "decode" else np.zeros(hole.shape)
    thin_plate = options.outer_interpolation == "thin_plate" and not (
        # An open rim (the field of view cuts it): a thin plate would extrapolate its slope out of view.
        ndimage.binary_dilation(hole, iterations=skip + 1) & ~measured.measurable).any()
    residual = outer - base_outer
    depressed = np.zeros(hole.shape, bool)
    reliable = plausible
    for final in (False, True):  # second pass: depressed bone joins the defect, outliers are re-estimated
        defect = hole | depressed
        known = reliable & ~ndimage.binary_dilation(defect, iterations=skip) & measured.measurable
        if not known.any():
            return "no intact bone around a bone-free region to fit the implant to"
        # The first pass only sorts the rim's rays: the membrane does that as well as the (slower) thin plate.
        fit_outer = base_outer + (thin_plate_surface(residual, known, options.thin_plate_stiffness)
                                  if thin_plate and final else interpolate_surface(residual, known))
        smooth_outer = ndimage.gaussian_filter(np.nan_to_num(fit_outer), smoothing)
        sunken = present & ~beyond & (outer < smooth_outer - options.depression_mm)
        # Sunken bone next to the missing bone (a depressed fracture's fragments) joins the defect.
        depressed = components_touching(sunken, ndimage.binary_dilation(hole, iterations=skip + 1))
        if final:
            break
        # Rays that graze a ragged or bevelled edge disagree with their smoothed neighbourhood.
        smooth_thickness = ndimage.gaussian_filter(np.nan_to_num(interpolate_surface(thickness, known)), smoothing)
        reliable = plausible & (np.abs(outer - smooth_outer) <= options.outlier_mm) & (
            np.abs(thickness - smooth_thickness) <= options.outlier_mm) & (
            thickness >= smooth_thickness - options.thin_outlier_mm)
    fit_thickness = (decode_shaped_thickness(measured, thickness, known, options) if options.thickness == "decode"
                     else interpolate_surface(thickness, known))
    fit_inner = fit_outer - fit_thickness
    defect = hole | depressed
    # Rays next to the defect that cross only part of the bone (a cut oblique to the rays, a bevel) get the rest.
    partial = present & ~beyond & (
        (outer < fit_outer - options.outlier_mm) | (inner > fit_inner + options.outlier_mm))
    fill = ndimage.binary_dilation(defect, iterations=band) | components_touching(
        partial, ndimage.binary_dilation(defect, iterations=skip + 1))
    fill &= np.isfinite(fit_outer) & np.isfinite(fit_inner)
    fit_inner = np.minimum(fit_inner, fit_outer)
    area = float(defect.sum()) * pixel_mm**2
    if area < options.min_hole_mm2:  # measured finely, the coarse hole was a thin spot, not missing bone
        logger.debug("a bone-free patch of %.0f mm² is below the smallest defect (%.0f mm²)", area,
                     options.min_hole_mm2)
        return ""
    if not ndimage.binary_erosion(defect, iterations=max(1, int(round(options.min_core_mm / pixel_mm)))).any():
        # A sliver (the decode's surface offset from the patient's along a band, a natural opening's blurred edge)
        # can reach the area without holding a disc anywhere: not missing bone.
        logger.debug("a bone-free patch of %.0f mm² is nowhere %.0f mm wide: not a defect", area,
                     2 * options.min_core_mm)
        return ""
    support = rim_support(defect, plausible, measured.measurable, skip)
    if support < options.min_rim_support:
        # Bone-free directions amid bone that is no shell either (the temporal fossa under the zygomatic arch, the
        # orbit's walls, thin bone lost to the threshold) where the decode merely expects some: not a defect.
        logger.debug("a bone-free patch of %.0f mm² has shell bone on only %.0f%% of its rim: not a defect", area,
                     100 * support)
        return ""
    sunken_area = float((defect & present).sum()) * pixel_mm**2  # bone inside the defect: sunken fragments
    kind = "depressed" if sunken_area >= options.min_hole_mm2 else "missing"
    return PatchFit(measured.patch, fill, fit_outer, fit_inner, Hole(measured.patch.axes[0], area, kind, sunken_area))


# ----------------------------------------------------------------------------------------------- voxels

def voxelise(frame: Frame, fit: PatchFit) -> tuple[np.ndarray, np.ndarray]:
    """One hole's implant on the input grid as a signed field on its own box: (field block, box lo corner).

    The field is > 0 exactly on implant voxels: min(r − inner, outer − r, distance into the filled directions) in
    mm, and negative on the input's bone. Each hole gets its own box, so distant holes never span the volume.
    On sub-millimetre grids it is evaluated coarse to fine: first every ~1.5 mm, then only near the implant.
    """
    directions = fit.patch.directions()[fit.fill]
    low = float(np.nanmin(fit.inner[fit.fill])) - 1.0
    high = float(np.nanmax(fit.outer[fit.fill])) + 1.0
    corners = np.concatenate([_to_input_index(frame, frame.centre + directions * radius) for radius in
                              (low - 1.0, high + 1.0)])
    limit = frame.input_shape.astype(int)
    lo = np.clip(np.floor(corners.min(axis=0)).astype(int) - 1, 0, limit)
    hi = np.clip(np.ceil(corners.max(axis=0)).astype(int) + 2, 0, limit)
    shape = tuple(int(v) for v in np.maximum(hi - lo, 0))
    block_field = np.full(shape, -1.0, np.float32, order="F")
    if 0 in shape:
        return block_field, lo
    input_to_mm = np.linalg.inv(frame.mm_to_input)
    # The vector from the centre of the box voxel with index b (relative to lo) is to_vector @ b + offset.
    to_vector = input_to_mm[:3, :3].astype(np.float32)
    offset = (input_to_mm[:3, :3] @ lo + input_to_mm[:3, 3] - frame.centre).astype(np.float32)
    # Only voxels within the cone of the filled directions (plus two rays) can be implant: a box's corners cannot.
    axis = fit.patch.axes[0].astype(np.float32)
    cone = math.cos(min(math.pi, float(np.arccos(np.clip(directions @ fit.patch.axes[0], -1, 1)).max())
                        + 2 * fit.patch.step))
    pixel_mm = fit.patch.step * float(np.nanmedian(fit.outer[fit.fill]))
    # The filled directions enter the field as a bilinear step (a sub-pixel edge); the coarse pass needs their
    # signed distance instead (mm at the shell, > 0 inside), which bounds how far away the edge is.
    signed_distance = (ndimage.distance_transform_edt(fit.fill) - ndimage.distance_transform_edt(~fit.fill)) * pixel_mm
    surfaces = np.stack([np.nan_to_num(grid, nan=0.0) for grid in (fit.fill.astype(float), fit.inner, fit.outer,
                                                                     signed_distance)]).astype(np.float32)

    def field_at(index: np.ndarray, coarse: bool = False) -> np.ndarray:
        """The field at box voxels (n, 3); coarse: a bound for the voxels around them (the patch's edge values
        continue past it, so a voxel just inside the patch is bounded by a node just outside)."""
        vector = index.astype(np.float32) @ to_vector.T + offset
        radius = np.sqrt(np.einsum("ij,ij->i", vector, vector))
        value = np.full(len(index), -1.0, np.float32)
        inside = np.ones(len(index), bool) if coarse else (
            (radius >= low) & (radius <= high) & (vector @ axis >= cone * radius))
        grid = fit.patch.grid_coordinates(vector[inside])
        fill, inner, outer = (ndimage.map_coordinates(surface, grid.T, order=1, mode="nearest", output=np.float32)
                              for surface in surfaces[[3 if coarse else 0, 1, 2]])
        r = radius[inside]
        inner_value = np.minimum(np.minimum(r - inner, outer - r), fill if coarse else (fill - 0.5) * pixel_mm)
        if not coarse:
            inner_value[np.any((grid < 0) | (grid > fit.patch.size - 1), axis=1)] = -1.0
        value[inside] = inner_value
        return value

    def evaluate(index: np.ndarray, coarse: bool = False) -> np.ndarray:
        return np.concatenate(_in_threads(functools.partial(field_at, coarse=coarse), index))

    spacing = np.linalg.norm(input_to_mm[:3, :3], axis=0)
    stride = np.maximum(1, np.floor(COARSE_CELL_MM / spacing)).astype(int)
    if stride.max() > 1:
        # Coarse nodes at multiples of the stride; each box voxel belongs to its nearest node (half a cell's
        # diagonal away at most), and the field changes by at most FIELD_SLOPE mm per mm: only the voxels of nodes
        # whose bound is above −FIELD_SLOPE × that distance can be implant. The rest stay −1.
        half = stride // 2
        nodes = np.stack(np.meshgrid(*[np.arange(0, (n - 1 + h) // k + 1) for n, h, k in zip(shape, half, stride,
                                                                                             strict=True)],
                                     indexing="ij"), axis=-1).reshape(-1, 3)
        bound = evaluate(nodes * stride, coarse=True)
        near = nodes[bound > -FIELD_SLOPE * 0.5 * np.linalg.norm(stride * spacing)]
        cell = np.stack(np.meshgrid(*[np.arange(k) for k in stride], indexing="ij"), axis=-1).reshape(-1, 3)
        index = (near[:, None, :] * stride - half + cell[None, :, :]).reshape(-1, 3)
        index = index[np.all((index >= 0) & (index < np.asarray(shape)), axis=1)]
    else:
        index = np.stack(np.unravel_index(np.arange(int(np.prod(shape))), shape), axis=1)
    block_field[index[:, 0], index[:, 1], index[:, 2]] = evaluate(index)
    bone = frame.defective[lo[0]: hi[0], lo[1]: hi[1], lo[2]: hi[2]].astype(bool)
    block_field[bone] = np.minimum(block_field[bone], -0.5)
    return block_field, lo


# ----------------------------------------------------------------------------------------------- the stage

def _mirror_in_model_mm(mm_to_ras: np.ndarray, centre: np.ndarray, mirror_ras: np.ndarray | None) -> np.ndarray:
    """The mid-sagittal reflection in model millimetres: ``mirror_ras`` carried over, or (without it) the flip of
    the R-L axis about the centre (the model grid is aligned with RAS)."""
    if mirror_ras is None:
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, 2.0 * centre[0]
        return flip
    return np.linalg.inv(mm_to_ras) @ np.asarray(mirror_ras, float) @ mm_to_ras


def fit_implant(expected: np.ndarray, defective: np.ndarray, mapping: GridMapping,
                options: RimOptions | None = None, mirror_ras: np.ndarray | None = None) -> RimFit:
    """The rim-conforming implant for ``defective`` (input grid) given the expected skull on the model grid.

    ``mirror_ras``: the 4×4 reflection about the patient's mid-sagittal plane (RAS), for the checks against the
    healthy side (a turned or tilted head); by default the plane x = const through the cranial centre.
    """
    options = options or RimOptions()
    implant = np.zeros(mapping.input_shape, np.uint8, order="F")
    spacing = float(mapping.grid.spacing_mm)
    centre = vault_sphere_centre(expected, spacing)
    if centre is None:
        return RimFit(implant, message="the decoded skull is empty or encloses no cranial cavity; no implant")
    mm_to_model = np.diag([1.0 / spacing] * 3 + [1.0])
    bone = np.argwhere(expected > 0.5) * spacing
    frame = Frame(
        reach_mm=float(np.sqrt(np.max(np.sum((bone - centre) ** 2, axis=1)))) + 2 * spacing,
        centre=centre,
        expected=np.ascontiguousarray(expected, dtype=np.float32),
        spacing=spacing,
        defective=defective.view(np.uint8) if defective.dtype == np.bool_ else defective.astype(np.uint8),
        mm_to_input=mapping.model_to_input @ mm_to_model,
        input_shape=np.asarray(mapping.input_shape, dtype=float),
        mirror=_mirror_in_model_mm(mapping.model_to_ras @ mm_to_model, centre, mirror_ras),
    )
    seeds = find_holes(frame, options)
    if seeds.shell_fraction > options.max_hole_fraction:
        return RimFit(implant, message=(
            f"{seeds.shell_fraction:.0%} of the expected skull has no bone in the input: this is not a defect the "
            "rim can be fitted to (is the input the whole skull, and the right way round?); no implant"))
    if seeds.count == 0:
        return RimFit(implant, message="no defect found: the input has bone wherever the decoded skull has shell")
    fits, messages = [], []
    for label in range(seeds.count):
        outcome = fit_hole(frame, seeds, label, options)
        if isinstance(outcome, PatchFit):
            fits.append(outcome)
        elif outcome:
            messages.append(outcome)
    if not fits:
        return RimFit(implant, message="; ".join(messages) or "no defect found")
    fields = [voxelise(frame, fit) for fit in fits]
    for block_field, lo in fields:
        hi = lo + np.asarray(block_field.shape)
        implant[lo[0]: hi[0], lo[1]: hi[1], lo[2]: hi[2]] |= (block_field > 0).view(np.uint8)
    holes = [fit.hole for fit in fits]
    logger.debug("rim fit: %d hole(s), areas %s mm²", len(holes), [round(h.area_mm2) for h in holes])
    return RimFit(implant, holes, "; ".join(messages), fields)
