"""Defect classes by region: where on the skull a defect lies, from its mask.

The latent shift γ·DEV works when each class's defects sit in one place (the paper's SkullFix boxes at
the top, facial defects at the face). Defects anywhere on the vault break that premise, so the
training data's cranial defects are split into regions by the direction of the defect's centre seen
from the cranial centre: azimuth measured from anterior towards the right, elevation from the
horizontal plane (the same angles ``training/generate.py`` uses to place its defects).

Everything here works on the model grid (axes R, A, S; isotropic spacing), where left and right are
known, so a left-right flip of a volume maps its class through :data:`MIRRORED_CLASS`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..masks import skull_centre_voxel

COMPLETE = "complete"
FACIAL = "facial"
CRANIAL_REGIONS = (
    "frontal",
    "frontoorbital",
    "parietotemporal_left",
    "parietotemporal_right",
    "occipital",
    "vertex",
)
CLASS_NAMES = (COMPLETE, *CRANIAL_REGIONS, FACIAL)
DEFECT_CLASSES = (*CRANIAL_REGIONS, FACIAL)
MIRRORED_CLASS = {
    **{name: name for name in CLASS_NAMES},
    "parietotemporal_left": "parietotemporal_right",
    "parietotemporal_right": "parietotemporal_left",
}

# Where the cranial centre lies in the complete skull's bone bounding box (R, A, S fractions): the
# generator's ray origin, a little behind and above the box centre because the face and base hang low.
CENTRE_FRACTION = np.array([0.5, 0.45, 0.55])
VERTEX_ELEVATION_DEG = 50.0  # above this the defect is on the top of the head, whatever its azimuth
ORBITAL_ELEVATION_DEG = 12.0  # frontal defects below this reach the orbital roof
FRONT_AZIMUTH_DEG = 45.0  # |azimuth| up to this is frontal
BACK_AZIMUTH_DEG = 135.0  # |azimuth| from this is occipital


def is_cranial(name: str) -> bool:
    """A defect class of the vault (the rim-conforming stage applies), as opposed to complete/facial."""
    return name not in (COMPLETE, FACIAL)


def cranial_centre_voxel(skull: np.ndarray) -> np.ndarray:
    """The cranial centre (voxel coordinates) from the skull's bone bounding box (a little back and up of its
    middle: :data:`CENTRE_FRACTION`)."""
    return skull_centre_voxel(skull, CENTRE_FRACTION)


def defect_angles(defect: np.ndarray, skull: np.ndarray) -> tuple[float, float]:
    """(azimuth, elevation) in degrees of the centre of mass of the defect's largest hole (its heaviest connected
    piece: with several holes the largest one decides the class), seen from the cranial centre.

    ``defect`` may be a mask or an occupancy (bone fraction); ``skull`` is the complete skull (or the
    defective one: the bounding box hardly changes) on the same isotropic, RAS-aligned grid.
    """
    weights = np.asarray(defect, dtype=np.float64)
    if weights.sum() <= 0:
        raise ValueError("the defect mask is empty")
    labels, count = ndimage.label(weights > 0, structure=np.ones((3, 3, 3), bool))
    if count > 1:
        heaviest = 1 + int(np.argmax(ndimage.sum_labels(weights, labels, index=np.arange(1, count + 1))))
        weights = np.where(labels == heaviest, weights, 0.0)
    total = weights.sum()
    centre_of_mass = np.array([(weights.sum(axis=tuple(a for a in range(3) if a != axis))
                                * np.arange(weights.shape[axis])).sum() / total for axis in range(3)])
    return point_angles(centre_of_mass, skull)


def point_angles(point: np.ndarray, skull: np.ndarray) -> tuple[float, float]:
    """(azimuth, elevation) in degrees of a point (voxel coordinates of ``skull``'s grid) from the cranial centre."""
    right, anterior, superior = np.asarray(point, float) - cranial_centre_voxel(np.asarray(skull) > 0.5)
    azimuth = float(np.degrees(np.arctan2(right, anterior)))
    elevation = float(np.degrees(np.arctan2(superior, np.hypot(right, anterior))))
    return azimuth, elevation


def region_from_angles(azimuth: float, elevation: float) -> str:
    """The cranial region of a direction (degrees; azimuth from anterior towards right)."""
    if elevation >= VERTEX_ELEVATION_DEG:
        return "vertex"
    if abs(azimuth) <= FRONT_AZIMUTH_DEG:
        return "frontoorbital" if elevation < ORBITAL_ELEVATION_DEG else "frontal"
    if abs(azimuth) >= BACK_AZIMUTH_DEG:
        return "occipital"
    return "parietotemporal_right" if azimuth > 0 else "parietotemporal_left"


def defect_class(label: str, defect: np.ndarray | None, skull: np.ndarray | None) -> str:
    """The class of a training case: its label for complete and facial cases, the region for cranial ones.

    ``label`` is the data set's coarse label ("complete", "cranial" or "facial"). A cranial case needs
    its defect mask (the region is where that mask lies); without one it raises ValueError.
    """
    if label in (COMPLETE, FACIAL):
        return label
    if defect is None or skull is None or not np.asarray(defect).any():
        raise ValueError("a cranial case needs its defect (implant) mask and skull to find its region")
    return region_from_angles(*defect_angles(defect, skull))
