"""The rim stage's entry point: the holes of a defective skull found and each fitted, then voxelised."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ...preprocessing.geometry import GridMapping
from .frame import Frame, vault_sphere_centre
from .hole_fit import PatchFit, fit_hole
from .holes import HoleSeeds, find_holes
from .options import RimOptions
from .results import RimFit
from .voxels import voxelise

logger = logging.getLogger(__name__)


def _mirror_in_model_mm(mm_to_ras: np.ndarray, centre: np.ndarray, mirror_ras: np.ndarray | None) -> np.ndarray:
    """The mid-sagittal reflection in model millimetres: ``mirror_ras`` carried over, or (without it) the flip of
    the R-L axis about the centre (the model grid is aligned with RAS)."""
    if mirror_ras is None:
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, 2.0 * centre[0]
        return flip
    return np.linalg.inv(mm_to_ras) @ np.asarray(mirror_ras, float) @ mm_to_ras


@dataclass
class HoleSearch:
    """The rim stage's first step on one decode: the frame of rays and the holes found (not yet fitted)."""

    frame: Frame | None
    seeds: HoleSeeds | None
    message: str = ""  # why nothing can be fitted (an empty decode, an input that is not this skull)

    def centre_in_model(self) -> np.ndarray | None:
        """Where the holes lie on the model grid (index), or None when none were found."""
        if self.frame is None or self.seeds is None or self.message:
            return None
        centre = self.seeds.centre_mm(self.frame.centre)
        return None if centre is None else centre / self.frame.spacing


def find_holes_in(expected: np.ndarray, defective: np.ndarray, mapping: GridMapping,
                  options: RimOptions | None = None, mirror_ras: np.ndarray | None = None) -> HoleSearch:
    """The holes of ``defective`` (input grid) where the expected skull (model grid) has shell.

    ``mirror_ras``: the 4×4 reflection about the patient's mid-sagittal plane (RAS), for the checks against the
    healthy side (a turned or tilted head); by default the plane x = const through the cranial centre.
    """
    options = options or RimOptions()
    spacing = float(mapping.grid.spacing_mm)
    centre = vault_sphere_centre(expected, spacing)
    if centre is None:
        return HoleSearch(None, None, "the decoded skull is empty or encloses no cranial cavity; no implant")
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
        return HoleSearch(frame, seeds, (
            f"{seeds.shell_fraction:.0%} of the expected skull has no bone in the input: this is not a defect the "
            "rim can be fitted to (is the input the whole skull, and the right way round?); no implant"))
    if seeds.count == 0:
        return HoleSearch(frame, seeds, "no defect found: the input has bone wherever the decoded skull has shell")
    return HoleSearch(frame, seeds)


def fit_holes(search: HoleSearch, input_shape: tuple[int, ...], options: RimOptions | None = None) -> RimFit:
    """The implant (input grid of ``input_shape``) over every hole of ``search`` that can be fitted."""
    options = options or RimOptions()
    implant = np.zeros(input_shape, np.uint8, order="F")
    if search.message or search.frame is None or search.seeds is None:
        return RimFit(implant, message=search.message)
    fits, messages = [], []
    for label in range(search.seeds.count):
        outcome = fit_hole(search.frame, search.seeds, label, options)
        if isinstance(outcome, PatchFit):
            fits.append(outcome)
        elif outcome:
            messages.append(outcome)
    if not fits:
        return RimFit(implant, message="; ".join(messages) or "no defect found")
    fields = [voxelise(search.frame, fit) for fit in fits]
    for block_field, lo in fields:
        hi = lo + np.asarray(block_field.shape)
        implant[lo[0]: hi[0], lo[1]: hi[1], lo[2]: hi[2]] |= (block_field > 0).view(np.uint8)
    holes = [fit.hole for fit in fits]
    logger.debug("rim fit: %d hole(s), areas %s mm²", len(holes), [round(h.area_mm2) for h in holes])
    return RimFit(implant, holes, "; ".join(messages), fields)


def fit_implant(expected: np.ndarray, defective: np.ndarray, mapping: GridMapping,
                options: RimOptions | None = None, mirror_ras: np.ndarray | None = None,
                search: HoleSearch | None = None) -> RimFit:
    """The rim-conforming implant for ``defective`` (input grid) given the expected skull on the model grid:
    :func:`find_holes_in` (or ``search``, its result for this same decode), then :func:`fit_holes`."""
    search = search or find_holes_in(expected, defective, mapping, options, mirror_ras)
    return fit_holes(search, mapping.input_shape, options)
