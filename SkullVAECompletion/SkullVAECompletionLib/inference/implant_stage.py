"""The implant stage: how a completion's implant is cut (rim fit, decode difference or their union) and the implant
cut from an expected skull, the mirror method's expected skull, and what the user should know before using it."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import InputError
from ..extraction.implant import BONE_THRESHOLD, decoded_implant_region, implant_at_input_resolution
from ..extraction.mirror import check_unilateral, mirror_skull
from ..extraction.rim import HoleSearch, RimOptions, fit_implant
from ..options import DEFAULT_EXTRACTION, EXTRACTION_CHOICES, RIM_EXTRACTIONS
from ..preprocessing.geometry import GridMapping, refined_mapping, to_model_grid
from .results import EncodedSkull

logger = logging.getLogger(__name__)

UNION_MARGIN_MM = 5.0  # "union": the decoded bone is added this close to the rim's defects (their boxes) only
MIRROR_GRID_MM = 2.0  # grid of the mirror method's expected skull
# Skull sizes (relative to the model's reference size) on which the size-normalised completion was validated.
VALIDATED_SCALE_RANGE = (0.75, 1.25)


def extraction_for(chosen: str, method: str, extraction: str | None, options: dict) -> str:
    """How the implant of a completion with class ``chosen`` and ``method`` is cut: ``extraction`` if given, else the
    bundle's choice for the class; checked, and adjusted where a choice cannot apply."""
    extraction = extraction or options.get("extraction_by_class", {}).get(chosen) or options.get(
        "extraction", DEFAULT_EXTRACTION)
    if extraction not in EXTRACTION_CHOICES:
        raise InputError(f"unknown extraction {extraction!r}; choose one of {', '.join(EXTRACTION_CHOICES)}")
    if extraction in RIM_EXTRACTIONS and chosen == "facial":
        # Rays from the cranial centre do not parameterise the face (several layers of bone on each ray).
        logger.debug("facial defect: the implant is the decoded bone (the rim fit is for the cranial vault)")
        return "decode"
    if extraction == "union" and method == "mirror":
        return "rim"  # the mirrored skull is the patient's own bone: nothing for a decode to add
    return extraction


def completion_warnings(encoded: EncodedSkull, defect_type: str) -> list[str]:
    """What the user should know about a completion before using its implant (summary ``warnings``)."""
    warnings = []
    if encoded.trust is not None and encoded.trust.status != "ok":
        warnings.append(encoded.trust.message())
    low, high = VALIDATED_SCALE_RANGE
    if not low <= encoded.mapping.scale <= high:
        warnings.append(f"the skull is {encoded.mapping.scale:.2f} times the model's reference size, outside the "
                        f"range it was validated on ({low}–{high}); check the implant with particular care")
    if defect_type == "facial":
        warnings.append("facial defect: the model's facial implants are rough (decoded bone, no rim fit); use this "
                        "one as a starting point only and check it slice by slice")
    return warnings


def mirrored_expectation(encoded: EncodedSkull) -> tuple[np.ndarray, GridMapping]:
    """The expected skull of the mirror method: the input and its mirror image (cached), on the model grid's
    placement refined to :data:`MIRROR_GRID_MM` (it is the patient's own bone: no need to blur it to the model's).

    :raises InputError: when the defect crosses the mid-sagittal plane (its mirror image is missing too).
    """
    if encoded.mirrored is None:
        bone = encoded.defective
        if encoded.mirror is None:
            encoded.mirror = mirror_skull(bone, encoded.mapping.ijk_to_ras)
        check_unilateral(bone, encoded.mapping.ijk_to_ras, encoded.mirror.plane)
        fine = refined_mapping(encoded.mapping, MIRROR_GRID_MM)
        encoded.mirrored = (to_model_grid(bone | encoded.mirror.mirrored.astype(bool), fine), fine)
    return encoded.mirrored


def extract_implant(
    encoded: EncodedSkull, probability: np.ndarray, extraction: str, options: dict, smoothing: bool = True,
    expected_mapping: GridMapping | None = None, defect_type: str = "", search: HoleSearch | None = None,
) -> tuple[np.ndarray, str, list, list | None]:
    """The implant (uint8, input grid) cut from an expected skull, a message when it is empty or partial, the holes
    and the rim stage's signed fields [(block, lo)] when there are any (for "union": of its rim part only).

    ``probability``: the expected skull on the model grid (or on ``expected_mapping``'s grid, for "rim").
    ``search``: the rim stage's holes already found in this ``probability`` (not searched again).
    ``defect_type``: picks the decode extraction's bone threshold from ``options["decode_threshold"]`` (per class;
    the decoder blurs thin facial bone below 0.5, so the bundle may lower it there).
    """
    if extraction == "decode":
        implant = decoded_implant(encoded, probability, options, smoothing, defect_type)
        message = "" if implant.any() else "no defect found: the decoded skull adds no bone away from the input's bone"
        return implant, message, [], None
    fit = fit_implant(probability, encoded.defective, expected_mapping or encoded.mapping,
                      RimOptions.from_dict(options.get("rim")), encoded.midsagittal_reflection(), search)
    if extraction == "rim":
        return fit.implant, fit.message, fit.holes, fit.fields or None
    if not fit.fields:
        return fit.implant, fit.message, fit.holes, None  # the rim found no defect: the decode has nothing to add
    # Near each defect the rim found (its box, grown by UNION_MARGIN_MM), the decoded bone is or-ed into the rim's
    # implant (in place, on that box only: no second full-size pass). One box per defect, not one around all of
    # them: decoded bone between two holes, where the input has its bone, is no implant.
    margin = np.ceil(UNION_MARGIN_MM / encoded.mapping.input_spacing).astype(int)
    implant = fit.implant
    for block, corner in fit.fields:
        box = (corner - margin, corner + np.asarray(block.shape) + margin)
        implant = decoded_implant(encoded, probability, options, smoothing, defect_type, out=implant, within=box)
    return implant, fit.message, fit.holes, fit.fields


def decoded_implant(encoded: EncodedSkull, probability: np.ndarray, options: dict, smoothing: bool = True,
                    defect_type: str = "", out: np.ndarray | None = None,
                    within: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Decoded minus input bone at the input's resolution (implant.py), with the class's bone threshold; ``out``:
    an implant (uint8, input grid) to add it to; ``within``: an input-index box (lo, hi) to confine it to."""
    threshold = float(options.get("decode_threshold", {}).get(defect_type, BONE_THRESHOLD))
    region = decoded_implant_region(probability, encoded.model_input, encoded.mapping.grid.spacing_mm,
                                    encoded.near_bone(), threshold)
    return implant_at_input_resolution(probability, region, encoded.defective, encoded.mapping, smoothing, threshold,
                                       out, within)

