"""What the completion engine hands around: a skull encoded once (:class:`EncodedSkull`, reused for every γ) and one
completion of it on the input grid (:class:`CompletionResult`)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..extraction.implant import near_input_bone
from ..extraction.mirror import quick_midsagittal_plane
from ..options import DEFAULT_EXTRACTION
from ..preprocessing.geometry import GridMapping
from .detection import BY_CLASS_HEAD
from .trust import Trust

if TYPE_CHECKING:  # μ and log σ² are torch tensors; the results themselves need no torch to be read
    import torch


@dataclass
class EncodedSkull:
    """A skull mapped to the model grid and encoded; reused for every γ."""

    mapping: GridMapping
    defective: np.ndarray  # bool, input grid (i, j, k); the caller's data, never modified
    model_input: np.ndarray  # float32 bone fraction on the model grid
    mu: torch.Tensor  # (1, latent) on the CPU
    logvar: torch.Tensor
    class_probabilities: dict[str, float]
    decode_cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    near_bone_mask: np.ndarray | None = field(default=None, repr=False)  # model voxels near its bone; cached
    mirror: Any = field(default=None, repr=False)  # mirror.MirrorResult of the input; γ-independent, cached
    midsagittal: Any = field(default=None, repr=False)  # mirror.Plane for the rim stage's healthy-side checks
    mirrored: tuple | None = field(default=None, repr=False)  # (input ∪ its mirror image, its grid); cached
    # (class, what decided it) once an "auto" completion has located the defect (detection.py); γ-independent.
    located: tuple[str, str] | None = None
    trust: Trust | None = None  # how well the model reads this input (trust.py)
    check_seconds: dict[str, float] = field(default_factory=dict)  # what the shell check and the trust cost

    def midsagittal_reflection(self) -> np.ndarray | None:
        """The 4×4 RAS reflection about the skull's mid-sagittal plane (the mirror method's when it has run, else a
        quick fit on the model grid; cached), or None when no plane can be found."""
        if self.midsagittal is None:
            self.midsagittal = self.mirror.plane if self.mirror is not None else quick_midsagittal_plane(
                self.model_input, self.mapping.model_to_ras)
        return None if self.midsagittal is None else self.midsagittal.matrix()

    def near_bone(self) -> np.ndarray:
        """Model voxels near the input's bone (implant.near_input_bone): γ-independent, made once."""
        if self.near_bone_mask is None:
            self.near_bone_mask = near_input_bone(self.model_input, self.mapping.grid.spacing_mm)
        return self.near_bone_mask

    @property
    def head_type(self) -> str:
        """The class head's (or nearest centroid's) most likely class."""
        return max(self.class_probabilities, key=self.class_probabilities.get)

    @property
    def detected_type(self) -> str:
        """The detected class: where the defect lies once an "auto" completion has located it, else the head's."""
        return self.located[0] if self.located else self.head_type

    @property
    def detected_by(self) -> str:
        return self.located[1] if self.located else BY_CLASS_HEAD


@dataclass
class CompletionResult:
    """One completion on the input grid. ``completed`` (uint8 0/1) = ``defective`` ∪ ``implant``, made on first use:
    a γ step that only updates the implant's box (the module's slider) does not pay for a whole-volume pass."""

    defective: np.ndarray = field(repr=False)  # the input skull (bool or 0/1), never modified
    implant: np.ndarray  # uint8 0/1 on the input grid
    defect_type: str
    detected_type: str
    confidence: float
    gamma: float
    method: str
    uncertainty: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    implant_volume_ml: float = 0.0
    extraction: str = DEFAULT_EXTRACTION
    message: str = ""  # why the implant is empty or partial (e.g. "no defect found"); "" when all went well
    holes: list = field(default_factory=list)  # rim.Hole per defect found by the rim stage
    # The rim stage's signed fields [(block, lo corner)], > 0 exactly on the implant's voxels: the STL's surfaces.
    implant_field: list | None = field(default=None, repr=False)
    # The rim stage's fields of the defects it found, also when the implant is more than they describe ("union"):
    # where the defect lies decides its class (detection.py).
    defect_fields: list | None = field(default=None, repr=False)
    class_probabilities: dict[str, float] = field(default_factory=dict)  # the model's, for the detection
    detected_by: str = BY_CLASS_HEAD  # what decided detected_type: the class head or the defect's position
    trust: Trust | None = None  # how well the model reads the input (trust.py)
    warnings: list[str] = field(default_factory=list)  # what the user should know before using the implant
    _completed: np.ndarray | None = field(default=None, init=False, repr=False)

    @property
    def completed(self) -> np.ndarray:
        """The completed skull, uint8 0/1 on the input grid (made once, then kept)."""
        if self._completed is None:
            self._completed = self.completed_in(np.zeros(3, int), np.asarray(self.implant.shape))
        return self._completed

    def completed_into(self, out: np.ndarray) -> np.ndarray:
        """The completed skull written into ``out`` (uint8, the input's shape; e.g. an image's own voxels)."""
        if self._completed is not None:
            np.copyto(out, self._completed)
            return out
        defective = self.defective.view(np.uint8) if self.defective.dtype == np.bool_ else self.defective != 0
        return np.bitwise_or(defective, self.implant, out=out)

    def completed_in(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """The completed skull inside the input-index box [lo, hi) only (uint8 0/1)."""
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        if self._completed is not None:
            return self._completed[box]
        defective = self.defective[box]
        # A bool array viewed as uint8 (no copy) or-ed with the implant: one pass over the box.
        return (defective.view(np.uint8) if defective.dtype == np.bool_ else defective.astype(np.uint8)) | \
            self.implant[box]
