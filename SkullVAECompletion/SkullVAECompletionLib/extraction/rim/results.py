"""What the rim stage gives back: the implant on the input grid, the holes found and their signed fields."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Hole:
    """One defect found on the sphere of directions."""

    direction: np.ndarray  # unit vector (model frame) through the hole's middle
    area_mm2: float  # at the expected outer surface
    kind: str = "missing"  # "missing" bone, or "depressed": sunken bone (≥ min_hole_mm2) inside the defect
    sunken_mm2: float = 0.0  # area of the directions where the defect still has (sunken) bone


@dataclass
class RimFit:
    """The implant of the rim-conforming stage, on the input grid."""

    implant: np.ndarray  # uint8 (i, j, k), Fortran order, like the input
    holes: list[Hole] = field(default_factory=list)
    message: str = ""  # why the implant is empty or partial; "" when all went well
    # Per hole: a signed field (> 0 exactly on implant voxels) on its box, and the box's lo corner (input index).
    fields: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
