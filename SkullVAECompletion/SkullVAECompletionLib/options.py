"""Every choice the module, the engine and the command line offer, and the option defaults, written once.

Imports nothing heavy (no torch, no scipy): the Slicer module builds its parameter node and its combo boxes from
these lists before PyTorch is installed. ``"auto"`` in a list means "let the model decide".
"""

from __future__ import annotations

from .regions import DEFECT_CLASSES

AUTO = "auto"

# Defect classes: the bundled model's regions (regions.DEFECT_CLASSES) and the classes of format-1 bundles.
LEGACY_DEFECT_CLASSES = ("cranial", "facial")
DEFECT_TYPES = (AUTO, *dict.fromkeys((*DEFECT_CLASSES, *LEGACY_DEFECT_CLASSES)))  # the GUI's list

# Where the expected skull comes from: the decoder with a latent shift (dev: class DEV, knn: DEV of the nearest
# training pairs, refine: + latent refinement), or the patient's own healthy side mirrored (mirror.py).
DECODER_METHODS = ("dev", "knn", "refine")
METHOD_CHOICES = (*DECODER_METHODS, "mirror")
METHODS = (AUTO, *METHOD_CHOICES)  # the GUI's list: "auto" = the model's default

# How the implant is cut from the decode: "rim" fits its surfaces to the patient's intact bone (rim.py);
# "decode" takes decoded-minus-input bone at the decode's own resolution (implant.py, the paper's way); "union" adds
# the decode's bone to the rim's implant (regions whose defect is more than the shell the rim's rays see).
EXTRACTION_CHOICES = ("rim", "decode", "union")
RIM_EXTRACTIONS = ("rim", "union")
DEFAULT_EXTRACTION = "rim"
EXTRACTIONS = (AUTO, *EXTRACTION_CHOICES)  # the GUI's list: "auto" = the model's choice for the class

DEVICE_CHOICES = (AUTO, "cpu", "cuda")  # "auto" = CUDA when available
GUI_DEVICES = (AUTO, "cpu")  # the GUI offers forcing the CPU; scripts may ask for "cuda"
PRECISION_CHOICES = ("float32", AUTO, "float16")

DEFAULT_BONE_THRESHOLD_HU = 300.0  # skull from CT: bone is above about 300 HU

# Implant design (design.DesignOptions); all defaults together change nothing.
MAX_DESIGN_OPTION_MM = 30.0  # larger values are typing errors (a 3 cm flange or plate is no cranial implant)
DEFAULT_FIXED_THICKNESS_MM = 3.0  # offered when the user asks for a plate of fixed thickness
DEFAULT_FLANGE_MM = 0.0
DEFAULT_FLANGE_THICKNESS_MM = 1.5
DEFAULT_CLEARANCE_MM = 0.0
DEFAULT_EDGE_RADIUS_MM = 0.5
