"""What the rays of a hole's patch see: the expected shell, the input's outer and inner tables, and the hole on the
patch (natural openings that the healthy side has too are left out)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .frame import Frame, inside_input, mirrored_directions, mirrored_rays
from .holes import HoleSeeds
from .interpolation import interpolate_surfaces
from .options import RimOptions
from .patch import Patch, patch_for
from .profiles import DETECTION_PRESENCE, expected_shell, input_profile
from .sphere import detection_sphere


def components_touching(mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The connected components of ``mask`` that have at least one pixel in ``region``."""
    labels, _ = ndimage.label(mask)
    touching = np.unique(labels[region & mask])
    return np.isin(labels, touching[touching > 0])


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
    exp_outer, exp_inner = interpolate_surfaces(exp_outer, exp_inner, known=has_shell)
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
    measurable = in_view & inside_input(frame, window_end).reshape(shape)
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
    mirror_frame, mirrored = mirrored_rays(frame, directions)
    mirror_directions = mirrored_directions(frame, directions, expected_outer)
    pixels = np.rint(patch.grid_coordinates(mirror_directions)).astype(int)
    inside = np.all((pixels >= 0) & (pixels < patch.size), axis=1)
    mirror_in_hole = np.zeros(len(directions), bool)
    mirror_in_hole[inside] = hole[pixels[inside, 0], pixels[inside, 1]]
    if other_defects is not None and other_defects.any():
        _, _, tree = detection_sphere(options.detection_step_deg)
        mirror_in_hole |= other_defects[tree.query(mirror_directions)[1]]
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
