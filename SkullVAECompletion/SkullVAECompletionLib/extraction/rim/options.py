"""Parameters of the rim stage (stored in a bundle's ``completion_options["rim"]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import build_config

SHAPE_SOURCES = ("decode", "rim")
OUTER_INTERPOLATIONS = ("thin_plate", "harmonic")


@dataclass(frozen=True)
class RimOptions:
    """Parameters of the rim-conforming stage (stored in a bundle's ``completion_options["rim"]``)."""

    detection_step_deg: float = 2.5  # spacing of the directions that look for holes
    detection_radial_step_mm: float = 0.5  # along the input's bone: thin bone is not stepped over
    decode_step_mm: float = 2.0  # along the decode's 2–3 mm voxels (its surface crossings are interpolated)
    window_mm: float = 6.0  # bone is searched this far inside and outside the expected shell
    detection_depth_mm: float = 20.0  # a hole is bone-free from this far inside the expected shell outwards
    patch_step_mm: float = 1.0  # spacing of a hole's rays, as arc length at the shell
    radial_step_mm: float = 0.5  # sampling step along a hole's rays (sub-sample radii by interpolated crossings)
    patch_margin_mm: float = 12.0  # intact bone measured around each hole
    rim_band_mm: float = 1.5  # the implant reaches this far past the bone-free directions, into the rim's bevel
    rim_skip_mm: float = 4.5  # rays this close to a hole may graze its edge: their radii are re-estimated
    outlier_mm: float = 2.0  # intact rays this far from the interpolated surface are re-estimated
    thin_outlier_mm: float = 0.5  # ... or this much thinner (near a defect a ray may have lost bone, never gained it)
    depression_mm: float = 3.0  # bone next to a defect sunken this far below the fitted outer table joins it
    outward_search_mm: float = 15.0  # ...unless bone lies this far beyond the window (a sinus' front wall)
    min_thickness_mm: float = 0.8
    max_thickness_mm: float = 25.0
    min_hole_mm2: float = 60.0  # smaller bone-free patches (a gap under ≈ 9 mm across: thin bone) are not a defect
    # A coarse bone-free patch this fraction of min_hole_mm2, without a coarse core, is measured finely all the same:
    # the detection sphere's 2.5° (3–4 mm at the shell) cannot give a 10–13 mm burr hole a core of its own.
    small_hole_fraction: float = 0.3
    min_core_mm: float = 3.0  # a defect holds a disc of this radius (fine patch): a sliver under 6 mm wide does not
    max_hole_fraction: float = 0.5  # a "hole" over this fraction of the expected shell: the input is not this skull
    min_rim_support: float = 1 / 3  # a defect is a gap in a shell: at least this much of the ring around it is shell
    max_patch_half_angle_deg: float = 80.0  # of a latitude-longitude patch (singular at its poles)
    # A wider hole (a hemicraniectomy reaching low, a third of the vault) gets an azimuthal equidistant patch about its
    # middle, regular up to the opposite direction, out to this angle from the middle.
    max_wide_patch_half_angle_deg: float = 125.0
    min_elevation_deg: float = -35.0  # directions further below the horizontal point at the skull base and face
    max_mirrored_fraction: float = 0.5  # a region whose mirror image is another bone-free region is a natural pair
    shape_smoothing_mm: float = 12.0  # smoothing of the decode's surfaces: its shape stays, its voxels' ripple goes
    shape: str = "decode"  # "decode": decoded surfaces + rim offsets; "rim": the rim's radii interpolated alone
    thickness: str = "decode"  # "decode": the decode's thickness × the rim's ratio to it; "rim": the rim's alone
    outer_interpolation: str = "thin_plate"  # of the outer surface across a hole: "thin_plate" or "harmonic"
    thin_plate_stiffness: float = 10.0  # the thin plate's smoothing of the rim's voxel noise (0: exact)

    def __post_init__(self) -> None:
        if self.shape not in SHAPE_SOURCES:
            raise ValueError(f"rim shape must be one of {SHAPE_SOURCES}, got {self.shape!r}")
        if self.thickness not in SHAPE_SOURCES:
            raise ValueError(f"rim thickness must be one of {SHAPE_SOURCES}, got {self.thickness!r}")
        if self.outer_interpolation not in OUTER_INTERPOLATIONS:
            raise ValueError(f"rim outer_interpolation must be one of {OUTER_INTERPOLATIONS}, "
                             f"got {self.outer_interpolation!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RimOptions:
        return build_config(cls, data or {}, "rim options")
