"""Trust: is the input a skull, and can the model read it?

Two checks, both before any implant is made:

1. The shape of the mask (:func:`check_skull_shell`): a skull is a shell of bone about the size of a head. A solid
   mask (a brain, a filled head or skin mask, a blob), a mask far too small or too large, or one with the
   proportions of another bone is refused with a message that says what was expected. No network is needed.
2. The model's reading of it (:func:`reconstruction_trust`): the decode at γ = 0 is the model's reconstruction of
   the input. On a skull it can read, the input's bone lies on or next to the decoded bone almost everywhere;
   on an input unlike its training population it lies elsewhere. The figure is the fraction of the input's bone
   (on the model grid) within ``tolerance_voxels`` of decoded bone. Below ``refuse_below`` the completion is
   refused; below ``warn_below`` it goes on with a warning. The thresholds travel with the model bundle
   (manifest key ``trust``), measured on its test split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ..errors import InputError, build_config

# A skull's bone fills 10–30 % of its convex hull (the bundle's population and the sample CT); solid masks fill
# 70 % or more. Half is far from both.
SHELL_MAX_HULL_FRACTION = 0.5
# Skull size (geometry.SkullFrame.size_mm): about 160 mm for an adult; older children from ~0.75 of that.
SKULL_SIZE_RANGE_MM = (90.0, 260.0)
# Width, length and height of a skull each lie within these factors of its size (cephalic index 0.65–0.95; the
# height may be cut short by the scan's field of view).
SKULL_PROPORTION_RANGE = (0.4, 1.6)
HULL_POINTS = 20000  # bone points the convex hull is built from (a subsample: the hull hardly changes)


class UntrustedInputError(InputError):
    """The model cannot read this input well enough to design an implant for it."""


@dataclass(frozen=True)
class TrustPolicy:
    """How the reconstruction figure is judged; a bundle's manifest may set it (key ``trust``)."""

    refuse_below: float = 0.55
    warn_below: float = 0.78
    tolerance_voxels: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrustPolicy:
        # "validation": the figures the thresholds were chosen from (training/aggregate.py), a record only
        return build_config(cls, {k: v for k, v in (data or {}).items() if k != "validation"}, "trust")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Trust:
    """The model's reading of one input: the figure, the thresholds it is judged by, and the verdict."""

    figure: float  # fraction of the input's bone the γ = 0 decode reproduces (within the tolerance)
    policy: TrustPolicy
    scale: float = 1.0  # the skull's size relative to the model's reference size

    @property
    def status(self) -> str:
        """"refuse", "warn" or "ok"."""
        if self.figure < self.policy.refuse_below:
            return "refuse"
        return "warn" if self.figure < self.policy.warn_below else "ok"

    def message(self, name: str = "input") -> str:
        """A sentence for the status line, the log and the summary ("" when all is well)."""
        figure = f"the model reproduces {self.figure:.0%} of its bone"
        if self.status == "refuse":
            return (f"{name}: the model cannot read this skull ({figure}; at least {self.policy.refuse_below:.0%} is "
                    "needed), so no implant is made. Check that the mask is the bone of one whole skull (not a brain, "
                    "skin or other body part), in its real size and geometry; a skull very unlike the model's "
                    "training population needs a model trained on such skulls.")
        if self.status == "warn":
            return (f"{name}: low trust: {figure} (below {self.policy.warn_below:.0%}); check the implant with "
                    "particular care")
        return ""

    def to_dict(self) -> dict[str, Any]:
        """The summary JSON's ``trust`` object."""
        return {
            "figure": round(self.figure, 4),
            "threshold": self.policy.refuse_below,
            "warn_below": self.policy.warn_below,
            "status": self.status,
            "measure": f"fraction of the input's bone within {self.policy.tolerance_voxels} model voxel(s) of the "
                       "decoded bone at gamma = 0",
            "size_scale": round(self.scale, 4),
        }


def policy_from_validation(figures: np.ndarray | list[float], default: TrustPolicy = TrustPolicy()) -> TrustPolicy:
    """Thresholds for a new model from its validation skulls' trust figures: a warning below the lowest of them
    (its 1st percentile), a refusal below 0.7 of that; never above the defaults. The bundled model's test skulls at
    sizes 0.75–1.25 score ≥ 0.81, the synthetic ellipsoid shells of the tests 0.64–0.66 (warned), masks that are no
    skull ≤ 0.47 (refused)."""
    low = float(np.percentile(np.asarray(figures, float), 1)) if len(figures) else 0.0
    return TrustPolicy(refuse_below=round(min(default.refuse_below, 0.7 * low), 3),
                       warn_below=round(min(default.warn_below, low), 3), tolerance_voxels=default.tolerance_voxels)


def reconstruction_trust(model_input: np.ndarray, decoded: np.ndarray, policy: TrustPolicy, scale: float = 1.0
                         ) -> Trust:
    """How much of the input's bone (model grid, bone fraction ≥ ½) lies within the tolerance of decoded bone."""
    bone = model_input >= 0.5
    count = int(np.count_nonzero(bone))
    if count == 0:
        return Trust(0.0, policy, scale)
    near = ndimage.binary_dilation(decoded >= 0.5, iterations=int(policy.tolerance_voxels))
    return Trust(float(np.count_nonzero(bone & near)) / count, policy, scale)


def check_skull_shell(points_ras: np.ndarray, bone_ml: float, size_mm: float, extents_mm: np.ndarray,
                      name: str = "input") -> None:
    """Refuse masks that are not a skull shell (see the module docstring); return quietly otherwise.

    ``points_ras``: bone positions (N×3 mm); ``bone_ml``: the bone's volume; ``size_mm`` and ``extents_mm``: the
    skull's size and its width, length and height (geometry.skull_frame).
    """
    what = ("Expected a binary mask of the bone of one skull (cranium, with or without the face), e.g. from "
            "'Skull from CT' or a bone threshold of a head CT.")
    low, high = SKULL_SIZE_RANGE_MM
    if not low <= size_mm <= high:
        raise InputError(f"{name}: the mask is {size_mm:.0f} mm across (width × length × height "
                         f"{_extents(extents_mm)}); a skull is {low:.0f}–{high:.0f} mm. Check the voxel spacing "
                         f"(mm, not cm or m) and that the mask is a skull. {what}")
    ratios = np.asarray(extents_mm, float) / size_mm
    if ratios.min() < SKULL_PROPORTION_RANGE[0] or ratios.max() > SKULL_PROPORTION_RANGE[1]:
        raise InputError(f"{name}: the mask's proportions are not a skull's (width × length × height "
                         f"{_extents(extents_mm)}): is it another bone, or a skull with one axis' spacing wrong? "
                         f"{what}")
    fraction = bone_ml / max(convex_hull_ml(points_ras), 1e-6)
    if fraction > SHELL_MAX_HULL_FRACTION:
        # The hull of voxel centres is half a voxel smaller than the mask: a solid mask can exceed 100 %.
        raise InputError(f"{name}: the mask is solid, not a shell of bone: it fills {min(fraction, 1.0):.0%} of its "
                         f"convex hull (a skull fills 10–30 %). A brain, skin or whole-head mask cannot be completed. "
                         f"{what}")


def convex_hull_ml(points_ras: np.ndarray) -> float:
    """Volume (ml) of the convex hull of points (mm), from an even subsample of at most HULL_POINTS of them."""
    if len(points_ras) < 4:
        return 0.0
    step = max(1, len(points_ras) // HULL_POINTS)
    try:
        return float(ConvexHull(points_ras[::step]).volume) / 1000.0
    except QhullError:  # all points in one plane: a sheet, no volume
        return 0.0


def _extents(extents_mm: np.ndarray) -> str:
    return " × ".join(f"{v:.0f}" for v in extents_mm) + " mm"
