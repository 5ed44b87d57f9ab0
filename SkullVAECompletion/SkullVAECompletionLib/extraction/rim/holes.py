"""Defect localisation on the sphere of directions: rays where the expected skull has shell and the input has no
bone near it, grouped into holes; natural openings (paired across the mid-sagittal plane), slivers and thin bone
are left out."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from .frame import Frame, mirrored_directions
from .options import RimOptions
from .profiles import DETECTION_PRESENCE, expected_shell, input_profile
from .sphere import detection_sphere

FACING_MIN_ELEVATION_DEG = 15.0  # above this (seen from the centre) no natural opening faces a defect: orbits lie lower


@dataclass
class HoleSeeds:
    """Holes found on the coarse sphere of directions."""

    directions: np.ndarray
    labels: np.ndarray  # hole index per direction, −1 for none
    expected_outer: np.ndarray  # the decode's shell per direction (mm from the centre; NaN where it has none)
    expected_inner: np.ndarray
    count: int
    shell_fraction: float  # bone-free fraction of the expected shell

    def centre_mm(self, origin: np.ndarray) -> np.ndarray | None:
        """Where the holes lie before any surface is fitted: the centre of mass (model mm) of the decode's shell
        over their directions, each weighing r² × its thickness there; None without holes."""
        chosen = self.labels >= 0
        if not chosen.any():
            return None
        outer, inner = self.expected_outer[chosen], self.expected_inner[chosen]
        has_inner = np.isfinite(inner)
        middle = np.where(has_inner, 0.5 * (outer + inner), outer)
        weight = middle**2 * np.where(has_inner, np.maximum(outer - inner, 0.5), 1.0)
        points = origin + self.directions[chosen] * middle[:, None]
        return weight @ points / weight.sum()


def find_holes(frame: Frame, options: RimOptions) -> HoleSeeds:
    """Directions where the expected skull has shell and the input has no bone near it, grouped into holes."""
    directions, graph, tree = detection_sphere(options.detection_step_deg)
    outer, inner = expected_shell(frame, directions, options.decode_step_mm)
    # Straight below the cranial cavity lie the skull base's openings (foramen magnum, jugular foramina):
    # never an implant site, and often cut by the field of view.
    has_shell = np.isfinite(outer) & (directions[:, 2] >= math.sin(math.radians(options.min_elevation_deg)))
    labels = np.full(len(directions), -1)
    if not has_shell.any():
        return HoleSeeds(directions, labels, outer, inner, 0, 0.0)
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
        return HoleSeeds(directions, labels, outer, inner, 0, shell_fraction)
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
    partners = tree.query(mirrored_directions(frame, directions, radii))[1]
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
    return HoleSeeds(directions, labels, outer, inner, len(keep), shell_fraction)


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
