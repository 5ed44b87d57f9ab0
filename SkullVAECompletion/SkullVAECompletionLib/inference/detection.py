"""Defect-class detection: the class head proposes, the position of the holes the rim stage finds decides.

The class head on μ (or the nearest class centroid, for a model without one) is right for most skulls, but it
confuses neighbouring regions and takes some small defects for complete skulls. Where the defect lies says its
region directly, by the same rule that labelled the training cases (:mod:`regions`).
:meth:`completion.SkullCompleter.complete` applies this when the class is "auto": the rim stage first finds the holes
in the class head's decode; when their centre lies in another class's region, that class is completed straight away
(one fit, not two); otherwise the implant fitted there says its region (its centre of mass), and where that differs
the completion is redone with the implant's class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .regions import COMPLETE, point_angles, region_from_angles

if TYPE_CHECKING:  # geometry imports torch; the Slicer module's MRML side imports this file without it
    from ..preprocessing.geometry import GridMapping
    from .results import CompletionResult

BY_CLASS_HEAD = "class head"
BY_DEFECT_POSITION = "defect position"


def implant_centre(implant: np.ndarray, fields: list[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray | None:
    """The implant's centre of mass (input index); from the rim stage's per-hole blocks when given (> 0 exactly on the
    implant's voxels: no scan of the whole volume). None when the implant is empty."""
    if fields:
        points = [np.argwhere(block > 0) + lo for block, lo in fields]
        points = np.concatenate(points) if points else np.zeros((0, 3))
    else:
        flat = np.flatnonzero(np.ravel(implant, order="F"))
        points = np.stack(np.unravel_index(flat, implant.shape, order="F"), axis=1)
    return points.mean(axis=0) if len(points) else None


def implant_cranial_region(implant: np.ndarray, mapping: GridMapping, model_input: np.ndarray,
                   fields: list[tuple[np.ndarray, np.ndarray]] | None = None) -> str | None:
    """The cranial region of an implant (input grid) seen from the cranial centre of the input's skull on the model
    grid (``model_input``); None when the implant is empty. ``fields``: see :func:`implant_centre`."""
    centre = implant_centre(implant, fields)
    return None if centre is None else region_at((mapping.input_to_model @ np.append(centre, 1.0))[:3], model_input)


def region_at(point: np.ndarray | None, model_input: np.ndarray) -> str | None:
    """The cranial region of a point of the model grid (index; e.g. the centre of the holes the rim stage found
    before fitting them, :meth:`~..extraction.rim.HoleSearch.centre_in_model`) seen from the cranial centre of the
    input's skull there (``model_input``); None without a point or a skull."""
    if point is None or not np.any(model_input > 0.5):
        return None
    return region_from_angles(*point_angles(point, model_input))


def located_class(head_class: str, implant: np.ndarray, mapping: GridMapping, model_input: np.ndarray,
                  classes: tuple[str, ...], fields: list[tuple[np.ndarray, np.ndarray]] | None = None
                  ) -> tuple[str, str]:
    """The detected class and what decided it: the implant's region when the rim stage found a hole and that region
    is one of the model's ``classes``, else the class head's choice ``head_class``."""
    region = implant_cranial_region(implant, mapping, model_input, fields)
    if region is not None and region in classes:
        return region, BY_DEFECT_POSITION
    return head_class, BY_CLASS_HEAD


def no_defect_is_complete(result: CompletionResult) -> CompletionResult:
    """A completion that found no defect (no hole, no implant) says so in its detected class too: "complete", decided
    by the holes found (none), whatever the class head proposed. Only the result says it: the encoding keeps its
    detection, as a later γ may find the hole."""
    if not result.holes and not np.any(result.implant):
        result.detected_type, result.detected_by = COMPLETE, BY_DEFECT_POSITION
    return result
