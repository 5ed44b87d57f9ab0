"""Complete template from the real Cranium skull: repair its fronto-temporal defect from the mirrored side.

Steps: find the mid-sagittal plane (reflection that best overlaps the skull with itself, the defect
excluded), mirror the skull about it, and inside a smooth region around the defect blend the original
towards the mirror (weight 1 in the defect box, falling to 0 over `margin_mm`), threshold, close,
keep the largest component. The "mirrored reference implant" (mirrored bone that the real skull lacks
inside the defect region) is the symmetric reference used to judge implants on the real case.

CLI: `python -m training.template --out DIR [--deb PATH | --inv3 PATH]`.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize

from SkullVAECompletionLib.imageio.volumes import read_mask, write_mask
from SkullVAECompletionLib.preprocessing.geometry import voxel_spacing
from training.fetch_cranium import cache_dir, largest_component, load_cranium_skull

log = logging.getLogger(__name__)

# Index box (i, j, k) = (x, y, z) of the real defect in the original Cranium matrix, inclusive bounds.
CRANIUM_DEFECT_BOX = ((80, 109), (163, 205), (50, 85))


@dataclass
class MirrorPlane:
    """Plane n.p = d in index-scaled mm coordinates p = ijk * spacing (not RAS)."""

    theta: float  # rotation of the normal about the k axis (rad)
    phi: float  # elevation of the normal towards k (rad)
    d: float

    @property
    def normal(self) -> np.ndarray:
        return np.array([np.cos(self.theta) * np.cos(self.phi), np.sin(self.theta) * np.cos(self.phi),
                         np.sin(self.phi)])

    def reflect(self, p: np.ndarray) -> np.ndarray:
        """Reflect points p (3, ...) in mm."""
        n = self.normal.reshape((3,) + (1,) * (p.ndim - 1))
        return p - 2.0 * ((n * p).sum(0) - self.d) * n


@dataclass
class TemplateResult:
    complete: np.ndarray  # uint8 (i, j, k): repaired skull
    original: np.ndarray  # uint8 (i, j, k): the real defective skull
    reference_implant: np.ndarray  # uint8 (i, j, k): mirrored healthy bone missing in the real skull
    mirrored: np.ndarray  # uint8: the whole skull mirrored about the plane
    region_weight: np.ndarray  # float32 blending weight (1 in the defect box)
    ijk_to_ras: np.ndarray
    plane: MirrorPlane
    info: dict = field(default_factory=dict)


def _grid_mm(shape: tuple[int, ...], spacing: np.ndarray) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing, strict=True)],
                                indexing="ij"))


def mirror_volume(vol: np.ndarray, spacing: np.ndarray, plane: MirrorPlane, order: int = 1) -> np.ndarray:
    """vol reflected about the plane (resampled with map_coordinates)."""
    p = _grid_mm(vol.shape, spacing)
    q = plane.reflect(p) / spacing.reshape(3, 1, 1, 1)
    return ndimage.map_coordinates(vol.astype(np.float32), q, order=order, mode="constant", cval=0.0)


def box_weight(shape: tuple[int, ...], spacing: np.ndarray, box: tuple[tuple[int, int], ...],
               margin_mm: float) -> np.ndarray:
    """1 inside the index box, smoothstep down to 0 at `margin_mm` outside it (Euclidean, in mm)."""
    inside = np.zeros(shape, bool)
    inside[tuple(slice(lo, hi + 1) for lo, hi in box)] = True
    dist = ndimage.distance_transform_edt(~inside, sampling=spacing)
    t = np.clip(1.0 - dist / margin_mm, 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def find_mirror_plane(mask: np.ndarray, spacing: np.ndarray, exclude: np.ndarray | None = None,
                      factor: int = 2, max_angle_deg: float = 8.0) -> MirrorPlane:
    """Mid-sagittal plane (normal ~ i axis) maximising the overlap of the blurred mask with its mirror.

    Works on a `factor`-downsampled, blurred mask (smooth objective); `exclude` (bool, full res) removes
    the defect and its mirror image from the score so the damage does not bias the plane.
    """
    small = mask[::factor, ::factor, :].astype(np.float32)
    sp = spacing * np.array([factor, factor, 1.0])
    f = ndimage.gaussian_filter(small, 1.0)
    w = np.ones_like(f) if exclude is None else (~exclude[::factor, ::factor, :]).astype(np.float32)
    p = _grid_mm(f.shape, sp)
    centre = (p * small[None]).sum((1, 2, 3)) / small.sum()

    def score(x: np.ndarray) -> float:
        pl = MirrorPlane(float(x[1]), float(x[2]), float(x[0]))
        q = pl.reflect(p) / sp.reshape(3, 1, 1, 1)
        g = ndimage.map_coordinates(f, q, order=1, mode="constant")
        gw = ndimage.map_coordinates(w, q, order=0, mode="constant")
        ww = w * gw
        return -float((ww * f * g).sum() / np.sqrt((ww * f * f).sum() * (ww * g * g).sum() + 1e-9))

    ds = np.arange(-15.0, 15.5, 1.0) + centre[0]
    d0 = ds[int(np.argmin([score(np.array([d, 0.0, 0.0])) for d in ds]))]
    lim = np.deg2rad(max_angle_deg)
    res = optimize.minimize(score, np.array([d0, 0.0, 0.0]), method="Powell",
                            bounds=[(d0 - 5, d0 + 5), (-lim, lim), (-lim, lim)], options={"xtol": 1e-3})
    plane = MirrorPlane(float(res.x[1]), float(res.x[2]), float(res.x[0]))
    log.info("mirror plane: d=%.2f mm theta=%.2f deg phi=%.2f deg, overlap %.4f", plane.d,
             np.rad2deg(plane.theta), np.rad2deg(plane.phi), -res.fun)
    return plane


def repair_with_mirror(mask: np.ndarray, ijk_to_ras: np.ndarray, box: tuple[tuple[int, int], ...],
                       margin_mm: float = 10.0, closing_radius: int = 1,
                       min_implant_voxels: int = 200) -> TemplateResult:
    """Repair the defect in `box` from the mirrored skull; return the template and reference implant."""
    spacing = voxel_spacing(ijk_to_ras)
    orig = mask > 0
    weight = box_weight(mask.shape, spacing, box, margin_mm)
    region = weight > 0
    # Exclude the defect region and its mirror image (approx. a plane about the volume centre) from the fit.
    excl = region | region[::-1]
    plane = find_mirror_plane(orig, spacing, exclude=excl)
    mirrored_f = mirror_volume(orig, spacing, plane)
    blended = weight * mirrored_f + (1.0 - weight) * orig.astype(np.float32)
    complete = blended >= 0.5
    if closing_radius > 0:
        ball = ndimage.generate_binary_structure(3, 1)
        ball = ndimage.iterate_structure(ball, closing_radius)
        closed = ndimage.binary_closing(np.pad(complete, closing_radius + 1), ball)
        closed = closed[tuple(slice(closing_radius + 1, -closing_radius - 1) for _ in range(3))]
        complete = complete | (closed & region)  # close only where we edited
    complete = largest_component(complete)
    mirrored = mirrored_f >= 0.5
    implant = mirrored & ~orig & (weight >= 0.5)
    lab, n = ndimage.label(implant, structure=np.ones((3, 3, 3), bool))
    if n:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        implant = np.isin(lab, np.flatnonzero(sizes >= min_implant_voxels))
    info = {"plane_d_mm": plane.d, "plane_theta_deg": float(np.rad2deg(plane.theta)),
            "plane_phi_deg": float(np.rad2deg(plane.phi)), "added_voxels": int((complete & ~orig).sum()),
            "removed_voxels": int((orig & ~complete).sum()), "implant_voxels": int(implant.sum()),
            "implant_ml": float(implant.sum() * np.prod(spacing) / 1000.0)}
    log.info("template repair: %s", info)
    return TemplateResult(complete.astype(np.uint8), orig.astype(np.uint8), implant.astype(np.uint8),
                          mirrored.astype(np.uint8), weight, np.asarray(ijk_to_ras, float), plane, info)


def save_repair_figure(result: TemplateResult, path: Path, box: tuple[tuple[int, int], ...]) -> Path:
    """Three orthogonal slices through the defect centre: original (top) and repaired (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp = voxel_spacing(result.ijk_to_ras)
    c = [int(round((lo + hi) / 2)) for lo, hi in box]
    fig, axes = plt.subplots(2, 3, figsize=(13, 8.5))
    views = [(f"axial k={c[2]} (x: patient R to L, y up = anterior)", lambda v: v[:, :, c[2]].T, sp[1] / sp[0]),
             (f"coronal j={c[1]} (z up = superior)", lambda v: v[:, c[1], :].T, sp[2] / sp[0]),
             (f"sagittal i={c[0]} (y right = anterior)", lambda v: v[c[0], :, :].T, sp[2] / sp[1])]
    for row, (title, vol) in enumerate([("original (real defect)", result.original),
                                        ("repaired template", result.complete)]):
        for col, (vt, cut, aspect) in enumerate(views):
            ax = axes[row, col]
            rgb = np.zeros(cut(vol).shape + (3,), np.float32)
            base = cut(result.original).astype(np.float32)
            rgb[..., :] = (cut(vol) > 0)[..., None] * 0.85
            if row == 1:
                added = (cut(vol) > 0) & (base == 0)
                rgb[added] = (1.0, 0.55, 0.1)  # bone added by the repair
            imp = cut(result.reference_implant) > 0
            if row == 0:
                rgb[imp] = (0.2, 0.5, 1.0)  # mirrored reference implant
            ax.imshow(rgb, origin="lower", aspect=aspect, interpolation="nearest")
            ax.set_title(f"{title}\n{vt}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Cranium template repair (blue: mirrored reference implant; orange: bone added)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def template_paths(cache: Path | None = None) -> dict[str, Path]:
    root = (cache or cache_dir()) / "template"
    return {"complete": root / "CraniumTemplateComplete.nrrd",
            "implant": root / "CraniumMirroredReferenceImplant.nrrd",
            "defective": root / "CraniumSkull.nrrd"}


def build_cranium_template(cache: Path | None = None, deb: Path | None = None, inv3: Path | None = None,
                           margin_mm: float = 10.0) -> TemplateResult:
    """Fetch the real skull and repair it."""
    mask, m = load_cranium_skull(deb, inv3, cache)
    return repair_with_mirror(mask, m, CRANIUM_DEFECT_BOX, margin_mm=margin_mm)


def load_or_build_template(cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The complete template (uint8 (i, j, k), IJK->RAS), built once and cached as NRRD."""
    paths = template_paths(cache)
    if not paths["complete"].exists():
        res = build_cranium_template(cache)
        write_mask(paths["complete"], res.complete, res.ijk_to_ras, overwrite=True)
        write_mask(paths["implant"], res.reference_implant, res.ijk_to_ras, overwrite=True)
        write_mask(paths["defective"], res.original, res.ijk_to_ras, overwrite=True)
    arr, m, _ = read_mask(paths["complete"])
    return (arr > 0).astype(np.uint8), m


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Build the complete Cranium template and the mirrored reference implant")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: cache/template)")
    p.add_argument("--deb", type=Path)
    p.add_argument("--inv3", type=Path)
    p.add_argument("--margin-mm", type=float, default=10.0)
    p.add_argument("--figure", type=Path, default=Path(__file__).parent / "figures" / "template_repair.png")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    res = build_cranium_template(deb=args.deb, inv3=args.inv3, margin_mm=args.margin_mm)
    paths = template_paths()
    if args.out is not None:
        paths = {k: args.out / v.name for k, v in paths.items()}
    write_mask(paths["complete"], res.complete, res.ijk_to_ras, overwrite=True)
    write_mask(paths["implant"], res.reference_implant, res.ijk_to_ras, overwrite=True)
    write_mask(paths["defective"], res.original, res.ijk_to_ras, overwrite=True)
    save_repair_figure(res, args.figure, CRANIUM_DEFECT_BOX)
    log.info("wrote %s and %s", ", ".join(str(v) for v in paths.values()), args.figure)


if __name__ == "__main__":
    main()
