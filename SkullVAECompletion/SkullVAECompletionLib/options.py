"""Every choice the module, the engine and the command line offer, the option defaults and the option objects
(:class:`DesignOptions`, :class:`CompletionOptions`), written once.

Imports nothing heavy (no torch, no scipy): the Slicer module builds its parameter node and its combo boxes from
these lists before PyTorch is installed. ``"auto"`` in a list means "let the model decide".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .inference.regions import DEFECT_CLASSES

AUTO = "auto"

# Defect classes: the bundled model's regions (regions.DEFECT_CLASSES) and the classes of format-1 bundles.
LEGACY_DEFECT_CLASSES = ("cranial", "facial")
DEFECT_TYPES = (AUTO, *dict.fromkeys((*DEFECT_CLASSES, *LEGACY_DEFECT_CLASSES)))  # the GUI's list

# Where the expected skull comes from: the decoder with a latent shift (dev: class DEV, knn: DEV of the nearest
# training pairs, refine: + latent refinement), or the patient's own healthy side mirrored (mirror.py).
DECODER_METHODS = ("dev", "knn", "refine")
METHOD_CHOICES = (*DECODER_METHODS, "mirror")
METHODS = (AUTO, *METHOD_CHOICES)  # the GUI's list: "auto" = the model's default

# How the implant is cut from the decode: "rim" fits its surfaces to the patient's intact bone (extraction/rim);
# "decode" takes decoded-minus-input bone at the decode's own resolution (implant.py, the paper's way); "union" adds
# the decode's bone to the rim's implant (regions whose defect is more than the shell the rim's rays see).
EXTRACTION_CHOICES = ("rim", "decode", "union")
RIM_EXTRACTIONS = ("rim", "union")
DEFAULT_EXTRACTION = "rim"
EXTRACTIONS = (AUTO, *EXTRACTION_CHOICES)  # the GUI's list: "auto" = the model's choice for the class

DEVICE_CHOICES = (AUTO, "cpu", "cuda")  # "auto" = CUDA when available
GUI_DEVICES = (AUTO, "cpu")  # the GUI offers forcing the CPU; scripts may ask for "cuda"
PRECISION_CHOICES = ("float32", AUTO, "float16")
DEFAULT_PRECISION = "float32"
STL_COORDINATES = ("LPS", "RAS")  # the STL's frame; Slicer writes LPS
DEFAULT_STL_COORDINATES = "LPS"

DEFAULT_BONE_THRESHOLD_HU = 300.0  # skull from CT: bone is above about 300 HU

# Implant design (design.DesignOptions); all defaults together change nothing.
MAX_DESIGN_OPTION_MM = 30.0  # larger values are typing errors (a 3 cm flange or plate is no cranial implant)
DEFAULT_FIXED_THICKNESS_MM = 3.0  # offered when the user asks for a plate of fixed thickness
DEFAULT_FLANGE_MM = 0.0
DEFAULT_FLANGE_THICKNESS_MM = 1.5
DEFAULT_CLEARANCE_MM = 0.0
DEFAULT_EDGE_RADIUS_MM = 0.5

# The distance map: the implant surface coloured by its distance to the skull (quality.py, mrml.py, io.py's PNG).
DISTANCE_ARRAY = "DistanceToSkull_mm"
DISTANCE_RANGE_MM = (0.0, 4.0)  # blue on the bone, red 4 mm or more away


@dataclass(frozen=True)
class DesignOptions:
    """How to shape the implant. All defaults together change nothing (the completion's implant as it is).

    * ``thickness_mm``: None keeps the completion's plate (its surfaces follow the patient's bone around the
      rim); a number makes a plate of that thickness, measured along the surface normal from the outer surface
      inward.
    * ``flange_mm``: width by which the implant's outer part extends over the intact bone all around the rim,
      lying on the outer table, ``flange_thickness_mm`` thick (an onlay over the defect and the rim).
    * ``clearance_mm``: gap between the implant and the defect's bony edge: no implant voxel centre within this
      distance of an input bone voxel centre (a flange still rests on the outer table).
    * ``edge_radius_mm``: the designed edges are rounded by a smoothing of this width (0: sharp voxel edges).
    """

    thickness_mm: float | None = None
    flange_mm: float = DEFAULT_FLANGE_MM
    flange_thickness_mm: float = DEFAULT_FLANGE_THICKNESS_MM
    clearance_mm: float = DEFAULT_CLEARANCE_MM
    edge_radius_mm: float = DEFAULT_EDGE_RADIUS_MM

    def __post_init__(self) -> None:
        values = {
            "thickness_mm": self.thickness_mm,
            "flange_mm": self.flange_mm,
            "flange_thickness_mm": self.flange_thickness_mm,
            "clearance_mm": self.clearance_mm,
            "edge_radius_mm": self.edge_radius_mm,
        }
        for name, value in values.items():
            if value is None:
                continue
            limit = MAX_DESIGN_OPTION_MM
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0 or value > limit:
                raise InputError(f"design option {name} = {value!r}: give a number of mm from 0 to {limit:g}")
        if self.thickness_mm is not None and self.thickness_mm <= 0:
            raise InputError("design option thickness_mm must be > 0 mm (or None to keep the completion's thickness)")
        if self.flange_mm > 0 and self.flange_thickness_mm <= 0:
            raise InputError("a flange needs flange_thickness_mm > 0")

    @property
    def changes_shape(self) -> bool:
        return self.thickness_mm is not None or self.flange_mm > 0 or self.clearance_mm > 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DesignOptions:
        """Options from a summary JSON / node attributes; unknown keys are refused (a typo must not pass)."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            known = [f.name for f in dataclasses.fields(cls)]
            raise InputError(f"unknown design options {sorted(unknown)}; known: {known}")
        return cls(**data)



@dataclass(frozen=True)
class CompletionOptions:
    """Everything a completion run is asked to do, besides its input: the Slicer module builds it from its
    parameter node, the command line from its arguments, scripts by hand (all defaults: the model's choices).

    * ``gamma``: the latent shift factor; None: the model's default for the defect class.
    * ``defect_type``: "auto" (detected) or one of the model's classes.
    * ``method``, ``extraction``: None (or "auto"): the model's choice; see :data:`METHOD_CHOICES`,
      :data:`EXTRACTION_CHOICES`.
    * ``device``: "auto", "cpu" or "cuda"; ``precision``: :data:`PRECISION_CHOICES`.
    * ``model_path``: a model bundle folder; None: the bundled model.
    * ``smoothing``: smooth the decoded implant; ``uncertainty_samples``: > 0 adds an uncertainty map.
    * ``design``: how the implant is shaped (:class:`DesignOptions`).
    * ``distance_map``: measure the implant's distance to the skull on its surface (the quality report's map).
    * ``stl_folder`` (the module; the command line writes into its output folder), ``max_triangles`` (None: the
      full surface), ``stl_coordinates``: the implant STL.
    """

    gamma: float | None = None
    defect_type: str = AUTO
    method: str | None = None
    extraction: str | None = None
    device: str = AUTO
    precision: str = DEFAULT_PRECISION
    model_path: str | None = None
    smoothing: bool = True
    uncertainty_samples: int = 0
    design: DesignOptions = field(default_factory=DesignOptions)
    distance_map: bool = True
    stl_folder: str | None = None
    max_triangles: int | None = None
    stl_coordinates: str = DEFAULT_STL_COORDINATES

    def __post_init__(self) -> None:
        # "auto" and None mean the same for the model's choices: keep one spelling (None) so options compare equal.
        for name in ("method", "extraction"):
            if getattr(self, name) == AUTO:
                object.__setattr__(self, name, None)
        if self.method is not None and self.method not in METHOD_CHOICES:
            raise InputError(f"method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.extraction is not None and self.extraction not in EXTRACTION_CHOICES:
            raise InputError(f"extraction {self.extraction!r}: choose one of {', '.join(EXTRACTIONS)}")
        if self.device not in DEVICE_CHOICES:
            raise InputError(f"device {self.device!r}: choose one of {', '.join(DEVICE_CHOICES)}")
        if self.precision not in PRECISION_CHOICES:
            raise InputError(f"precision {self.precision!r}: choose one of {', '.join(PRECISION_CHOICES)}")
        if self.stl_coordinates not in STL_COORDINATES:
            raise InputError(f"STL coordinates {self.stl_coordinates!r}: choose one of {', '.join(STL_COORDINATES)}")
        if self.uncertainty_samples < 0:
            raise InputError("uncertainty_samples must be 0 (no map) or more")
        if not self.max_triangles:
            object.__setattr__(self, "max_triangles", None)  # 0 (the module's "all") and None: the full surface

    def replace(self, **changes: Any) -> CompletionOptions:
        """A copy with ``changes`` (checked like a new one)."""
        return dataclasses.replace(self, **changes)
