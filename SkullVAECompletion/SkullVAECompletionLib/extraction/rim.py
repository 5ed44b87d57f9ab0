"""Rim-conforming implant surfaces: the decode says *where* and *what shape*, the patient's bone says *exactly where*.

A decoded skull on a 2–3 mm model grid cannot place an implant's surfaces within a millimetre of the defect's
rim. This stage therefore uses the decode only as a locator and a shape prior, and takes the surfaces from the
patient's own intact bone at the input's full resolution:

1. **Rays from the cranial centre** (:func:`~.rim_frame.vault_sphere_centre`). Along each direction the decode gives an
   expected shell (its outermost bone segment); the input's bone is searched in a window around it.
2. **Defect localisation** (:func:`~.rim_holes.find_holes`): directions where the decode expects shell and the patient
   has no bone in the window, grouped into holes on the sphere. Natural openings are where the decode expects no
   bone; directions whose expected shell lies outside the input's field of view are never holes. A hole must be a
   gap in a shell: measurable shell bone around at least a third of it (:func:`~.rim_hole_fit.rim_support`, checked on
   its patch).
3. **Surfaces per hole** (:func:`~.rim_hole_fit.fit_hole`): in a latitude-longitude patch whose equator runs through the
   hole (no pole near it), the outer and inner table radii of the intact bone are measured with sub-voxel accuracy.
   Their offsets from the decode's surfaces are interpolated across the hole (the outer surface as a thin plate,
   which carries the rim's curvature; the thickness as the decode's, scaled by the rim's ratio to it as a
   membrane, robust to a noisy rim);
   rays near the rim, which graze a ragged or bevelled edge, and outliers are re-estimated, and bone that is
   present but sunken well below the interpolated outer table (a depressed fracture) joins the defect.
4. **Voxelisation on the input grid** (:func:`~.rim_voxels.voxelise`): a voxel belongs to the implant when its direction
   lies in the hole (plus a thin rim band) and its distance from the centre lies between the two surfaces; the same
   signed field gives the implant's surface.

All geometry is in "model millimetres": the model grid's index times its spacing (RAS axes, isotropic).

This module is the stage's entry point (:func:`fit_implant`); its steps live beside it, in the order it uses them:
``rim_options`` (:class:`RimOptions`), ``rim_frame`` (the centre and the maps between model millimetres, the
input's voxels and the mirror image), ``rim_sampling`` and ``rim_profiles`` (bone along rays), ``rim_sphere`` and
``rim_holes`` (defects on the sphere of directions), ``rim_patch``, ``rim_measurement``, ``rim_interpolation`` and
``rim_hole_fit`` (surfaces over each hole), ``rim_voxels`` (the signed field on the input grid) and ``rim_results``
(:class:`RimFit`, :class:`Hole`).
"""

from __future__ import annotations

import logging

import numpy as np

from ..preprocessing.geometry import GridMapping
from .rim_frame import Frame, vault_sphere_centre
from .rim_hole_fit import PatchFit, fit_hole
from .rim_holes import find_holes
from .rim_interpolation import interpolate_surface, thin_plate_surface
from .rim_options import RimOptions
from .rim_results import Hole, RimFit
from .rim_voxels import voxelise

__all__ = ["Hole", "RimFit", "RimOptions", "fit_implant", "interpolate_surface", "thin_plate_surface"]

logger = logging.getLogger(__name__)


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
