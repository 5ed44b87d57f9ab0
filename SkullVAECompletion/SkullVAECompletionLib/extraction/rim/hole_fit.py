"""The implant's surfaces over one hole: the rim's outer and inner tables interpolated across it, with rays that
graze the edge and outliers re-estimated and sunken bone (a depressed fracture) joined to the defect."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .frame import Frame
from .holes import HoleSeeds
from .interpolation import interpolate_surface, interpolate_surfaces, thin_plate_surface
from .measurement import PatchProfile, bone_beyond_window, components_touching, measure_patch
from .options import RimOptions
from .patch import Patch
from .results import Hole

logger = logging.getLogger(__name__)


@dataclass
class PatchFit:
    """Surfaces over one hole, on its patch."""

    patch: Patch
    fill: np.ndarray  # bool (lat, lon): directions that get implant
    outer: np.ndarray  # outer surface radius (mm)
    inner: np.ndarray
    hole: Hole


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
        if final:
            fit_outer = base_outer + (thin_plate_surface(residual, known, options.thin_plate_stiffness)
                                      if thin_plate else interpolate_surface(residual, known))
        else:
            residual_surface, thickness_surface = interpolate_surfaces(residual, thickness, known=known)
            fit_outer = base_outer + residual_surface
        smooth_outer = ndimage.gaussian_filter(np.nan_to_num(fit_outer), smoothing)
        sunken = present & ~beyond & (outer < smooth_outer - options.depression_mm)
        # Sunken bone next to the missing bone (a depressed fracture's fragments) joins the defect.
        depressed = components_touching(sunken, ndimage.binary_dilation(hole, iterations=skip + 1))
        if final:
            break
        # Rays that graze a ragged or bevelled edge disagree with their smoothed neighbourhood.
        smooth_thickness = ndimage.gaussian_filter(np.nan_to_num(thickness_surface), smoothing)
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
