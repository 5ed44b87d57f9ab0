"""Synthetic skull population from one complete template, with defective counterparts and implants.

Per source deformation (deterministic from (seed, source id)):
  template frame T (mm, RAS axes, origin on the template's midline / box centre)
  -> optional L/R mirror, vault height, cephalic index and size scaling, smooth random displacement,
  small pose change; sampled onto a fresh axis-aligned grid (random spacing, padded / bottom-cropped
  field of view) by backward mapping (map_coordinates, order 1, on the float mask, threshold 0.5).
Per source: the complete skull plus defects (SkullBreak-style sphere defects in landmark regions,
SkullFix-style top boxes, facial boxes). Implant = complete AND NOT defective, all on one grid.
Sphere and facial defects are defined in the template frame (each output voxel's template coordinate is
known), so they sit in the same anatomical region whatever the deformation, and deform with the skull.

CLI: `python -m training.generate --config training/configs/data_small.yaml --out DIR`.
Output: DIR/sources/src_XXX/*.nrrd, DIR/cases.csv (one row per case), DIR/cases.json (full metadata).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import ndimage

from SkullVAECompletionLib.imageio.volumes import read_mask, write_mask

log = logging.getLogger(__name__)

CSV_FIELDS = ["case_id", "source_id", "split", "label", "subtype", "complete", "defective", "implant",
              "implant_ml", "shape", "spacing_mm"]
FACIAL = "facial"
SKULLFIX = "skullfix"


# ----------------------------------------------------------------------------- template

@dataclass
class Template:
    """Complete template as a float mask with the T-frame geometry."""

    vol: np.ndarray  # float32 (i, j, k), slightly blurred occupancy
    ras_to_index: np.ndarray  # 4x4: T-frame mm -> template index
    bone_min: np.ndarray  # T-frame bounding box of the bone (mm)
    bone_max: np.ndarray
    points: np.ndarray  # (N, 3) subsample of T-frame bone points (for output bounds)


def make_template(mask: np.ndarray, ijk_to_ras: np.ndarray, blur_vox: float = 0.5) -> Template:
    """Put the template mask in its T frame: x origin at the bone centroid (≈ midline), y/z at the box centre."""
    m = np.asarray(ijk_to_ras, float)
    idx = np.argwhere(mask > 0)
    ras = idx @ m[:3, :3].T + m[:3, 3]
    lo, hi = ras.min(0), ras.max(0)
    origin = np.array([ras[:, 0].mean(), (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2])
    t_to_ras = np.eye(4)
    t_to_ras[:3, 3] = origin
    ras_to_index = np.linalg.inv(m) @ t_to_ras
    vol = ndimage.gaussian_filter(mask.astype(np.float32), blur_vox) if blur_vox > 0 else mask.astype(np.float32)
    pts = ras[:: max(1, len(ras) // 20000)] - origin
    return Template(vol, ras_to_index, lo - origin, hi - origin, pts)


def synthetic_template(spacing: float = 2.0, semi_axes_mm: tuple[float, float, float] = (70.0, 90.0, 75.0),
                       thickness_mm: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoidal shell (cut flat below) as a stand-in complete skull for tests (no download needed)."""
    a = np.asarray(semi_axes_mm, float)
    n = np.ceil(2 * (a + 10) / spacing).astype(int)
    m = np.diag([spacing, spacing, spacing, 1.0])
    m[:3, 3] = -(n - 1) / 2 * spacing
    g = np.meshgrid(*[np.arange(k) * spacing + m[c, 3] for c, k in enumerate(n)], indexing="ij")
    r_out = np.sqrt(sum((g[c] / a[c]) ** 2 for c in range(3)))
    r_in = np.sqrt(sum((g[c] / (a[c] - thickness_mm)) ** 2 for c in range(3)))
    shell = (r_out <= 1.0) & (r_in > 1.0) & (g[2] > -0.6 * a[2])
    return shell.astype(np.uint8), m


def load_template(spec: str | Path, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`auto` = the repaired Cranium template (built and cached on first use), else a mask file."""
    if str(spec) == "auto":
        from training.template import load_or_build_template

        return load_or_build_template(cache)
    mask, matrix, _ = read_mask(spec)
    return (np.asarray(mask) > 0).astype(np.uint8), matrix


# ----------------------------------------------------------------------------- sampling helpers

def _u(rng: np.random.Generator, lohi: Any) -> float:
    lo, hi = lohi
    return float(rng.uniform(lo, hi))


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sample_shape_params(rng: np.random.Generator, tpl: Template, cfg: dict) -> dict:
    """Random size / cephalic index / vault height / deformation / pose parameters of one source."""
    s = cfg["shape"]
    ext = tpl.bone_max - tpl.bone_min
    ci_t = ext[0] / ext[1]  # template width / length
    scale = _u(rng, s["scale"])
    r = _u(rng, s["cephalic_index"]) / ci_t
    p = cfg["pose"]
    return {
        "mirror": bool(rng.random() < s["mirror_prob"]),
        "scale": scale,
        "cephalic_index_target": float(r * ci_t),
        "scale_xyz": [scale * np.sqrt(r), scale / np.sqrt(r), scale],
        "vault_height": _u(rng, s["vault_height"]),
        "vault_level_mm": float(tpl.bone_min[2] + s["vault_level_frac"] * ext[2]),
        "deform_amplitude_mm": _u(rng, s["deformation"]["amplitude_mm"]),
        "rotation_deg": rng.uniform(-p["max_rotation_deg"], p["max_rotation_deg"], 3).tolist(),
        "translation_mm": rng.uniform(-p["max_translation_mm"], p["max_translation_mm"], 3).tolist(),
    }


@dataclass
class Warp:
    """Backward map world RAS -> template frame T, and its approximate forward map for bounds."""

    rot: np.ndarray
    trans: np.ndarray
    scale: np.ndarray
    vault_level: float
    vault_h: float
    mirror: bool
    ctrl: np.ndarray  # (3, nx, ny, nz) displacement control grid (mm)
    ctrl_origin: np.ndarray
    ctrl_spacing: float

    def forward_no_disp(self, t: np.ndarray) -> np.ndarray:
        """T-frame points (N, 3) -> world (ignores the small displacement field)."""
        u = t.copy()
        if self.mirror:
            u[:, 0] = -u[:, 0]
        above = u[:, 2] > self.vault_level
        u[above, 2] = self.vault_level + self.vault_h * (u[above, 2] - self.vault_level)
        u = u * self.scale
        return u @ self.rot.T + self.trans

    def backward(self, axes: list[np.ndarray], stride: int = 4) -> list[np.ndarray]:
        """World coordinates of an axis-aligned grid (per-axis 1-D RAS coords) -> T coords (3 arrays)."""
        rinv = self.rot.T
        ax = [a.astype(np.float32) - np.float32(self.trans[c]) for c, a in enumerate(axes)]
        shape = tuple(len(a) for a in axes)
        u = []
        for c in range(3):  # separable affine: u_c = sum_d R^T[c, d] * (w_d - t_d)
            v = (rinv[c, 0] * ax[0][:, None, None] + rinv[c, 1] * ax[1][None, :, None]
                 + rinv[c, 2] * ax[2][None, None, :]).astype(np.float32)
            u.append(v / np.float32(self.scale[c]))
        z = u[2]
        above = z > self.vault_level
        z[above] = self.vault_level + (z[above] - self.vault_level) / self.vault_h
        # Smooth displacement: cubic interpolation of the control grid on a strided grid, then linear upsampling.
        sub = tuple(slice(None, None, stride) for _ in range(3))
        pos = [(u[c][sub] - self.ctrl_origin[c]) / self.ctrl_spacing for c in range(3)]
        for c in range(3):
            d = ndimage.map_coordinates(self.ctrl[c], pos, order=3, mode="nearest").astype(np.float32)
            if d.shape != shape:
                d = ndimage.zoom(d, np.array(shape) / np.array(d.shape), order=1, mode="nearest", grid_mode=False)
            u[c] += d
        if self.mirror:
            u[0] = -u[0]
        return u


def make_warp(rng: np.random.Generator, tpl: Template, params: dict, cfg: dict) -> Warp:
    dcfg = cfg["shape"]["deformation"]
    spacing = float(dcfg["control_spacing_mm"])
    lo, hi = tpl.bone_min - 2 * spacing, tpl.bone_max + 2 * spacing
    n = np.ceil((hi - lo) / spacing).astype(int) + 1
    ctrl = rng.normal(0.0, params["deform_amplitude_mm"], (3, *n)).astype(np.float32)
    # No spline prefilter on purpose: cubic interpolation of raw noise (B-spline smoothing) keeps it smooth.
    return Warp(_rotation(np.deg2rad(params["rotation_deg"])), np.asarray(params["translation_mm"], float),
                np.asarray(params["scale_xyz"], float), params["vault_level_mm"], params["vault_height"],
                params["mirror"], ctrl, lo.astype(np.float32), spacing)


def sample_grid(rng: np.random.Generator, tpl: Template, warp: Warp, cfg: dict) -> tuple[list[np.ndarray], dict]:
    """Random spacing and field of view around the deformed skull; returns per-axis RAS coords."""
    g = cfg["grid"]
    sp = np.array([_u(rng, g["spacing_inplane_mm"])] * 2 + [_u(rng, g["spacing_slice_mm"])])
    pts = warp.forward_no_disp(tpl.points)
    margin = 3 * float(cfg["shape"]["deformation"]["amplitude_mm"][1])
    lo = pts.min(0) - margin - rng.uniform(*g["pad_mm"], 3)
    hi = pts.max(0) + margin + rng.uniform(*g["pad_mm"], 3)
    crop = _u(rng, g["crop_bottom_mm"])
    lo[2] = pts[:, 2].min() + crop
    axes, flips = [], []
    for c in range(3):
        a = lo[c] + np.arange(int(np.ceil((hi[c] - lo[c]) / sp[c])) + 1) * sp[c]
        flip = bool(rng.random() < g.get("index_flip_prob", 0.0))
        axes.append(a[::-1].copy() if flip else a)
        flips.append(flip)
    return axes, {"spacing_mm": sp.tolist(), "crop_bottom_mm": crop, "index_flips": flips}


def grid_affine(axes: list[np.ndarray]) -> np.ndarray:
    """IJK->RAS of the axis-aligned grid given by per-axis RAS coordinates."""
    m = np.eye(4)
    for c, a in enumerate(axes):
        m[c, c] = a[1] - a[0] if len(a) > 1 else 1.0
        m[c, 3] = a[0]
    return m


def warp_template(tpl: Template, t_coords: list[np.ndarray]) -> np.ndarray:
    """Sample the template at T coordinates (order 1) and threshold at 0.5."""
    a = tpl.ras_to_index
    idx = [a[c, 0] * t_coords[0] + a[c, 1] * t_coords[1] + a[c, 2] * t_coords[2] + a[c, 3] for c in range(3)]
    return ndimage.map_coordinates(tpl.vol, idx, order=1, mode="constant", cval=0.0) >= 0.5


# ----------------------------------------------------------------------------- defects

def _direction(az_deg: float, el_deg: float) -> np.ndarray:
    """Unit vector: azimuth from anterior (+A) towards right (+R), elevation towards superior (+S)."""
    az, el = np.deg2rad(az_deg), np.deg2rad(el_deg)
    return np.array([np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), np.sin(el)])


def surface_point(tpl: Template, start: np.ndarray, direction: np.ndarray, max_mm: float = 250.0) -> np.ndarray:
    """Outermost template bone point along a ray from `start` (T frame)."""
    t = np.arange(0.0, max_mm, 0.5)
    p = start[None, :] + t[:, None] * direction[None, :]
    idx = (np.c_[p, np.ones(len(p))] @ tpl.ras_to_index.T)[:, :3].T
    v = ndimage.map_coordinates(tpl.vol, idx, order=1, mode="constant")
    hit = np.flatnonzero(v >= 0.5)
    return p[hit[-1]] if len(hit) else p[-1]


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    r = np.maximum(np.floor(radius_mm / spacing).astype(int), 0)
    g = np.meshgrid(*[np.arange(-k, k + 1) * s for k, s in zip(r, spacing, strict=True)], indexing="ij")
    return sum(x ** 2 for x in g) <= radius_mm ** 2 + 1e-6


def _crop_for(t_coords: list[np.ndarray], lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...] | None:
    """Index bounding box of voxels whose T coords fall in [lo, hi]."""
    inside = np.ones(t_coords[0].shape, bool)
    for c in range(3):
        inside &= (t_coords[c] >= lo[c]) & (t_coords[c] <= hi[c])
    if not inside.any():
        return None
    sl = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(inside.any(axis=other))
        sl.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(sl)


def sphere_defect(rng: np.random.Generator, tpl: Template, t_coords: list[np.ndarray], spacing: np.ndarray,
                  region: dict, cfg: dict) -> tuple[np.ndarray, dict]:
    """SkullBreak-style region: main sphere at a surface point in the landmark region + secondary spheres."""
    scfg = cfg["defects"]["sphere"]
    side = float(rng.choice([-1.0, 1.0])) if region.get("both_sides") else 1.0
    az, el = side * _u(rng, region["azimuth_deg"]), _u(rng, region["elevation_deg"])
    start = tpl.bone_min + np.asarray(cfg["defects"]["vault_centre_frac"]) * (tpl.bone_max - tpl.bone_min)
    centre = surface_point(tpl, start, _direction(az, el))
    r_main = max(8.0, float(rng.normal(*region["main_radius_mm"])))
    spheres = [(centre, r_main)]
    for _ in range(int(rng.integers(scfg["secondary_count"][0], scfg["secondary_count"][1] + 1))):
        d = rng.normal(size=3)
        r2 = max(4.0, float(rng.normal(*scfg["secondary_radius_mm"])))
        spheres.append((centre + r_main * d / np.linalg.norm(d), r2))
    reach = max(np.linalg.norm(c - centre) + r for c, r in spheres) + scfg["boundary_noise_mm"] * 3
    sl = _crop_for(t_coords, centre - reach, centre + reach)
    region_mask = np.zeros(t_coords[0].shape, bool)
    if sl is not None:
        tc = [t[sl] for t in t_coords]
        sdf = np.full(tc[0].shape, np.inf, np.float32)
        for c, r in spheres:
            sdf = np.minimum(sdf, np.sqrt(sum((tc[k] - np.float32(c[k])) ** 2 for k in range(3))) - np.float32(r))
        # Smooth random border (in the template frame, so it deforms with the skull).
        ns = float(scfg["noise_spacing_mm"])
        n = int(np.ceil(2 * reach / ns)) + 2
        noise = rng.normal(0, scfg["boundary_noise_mm"], (n, n, n)).astype(np.float32)
        pos = [(tc[k] - np.float32(centre[k] - reach)) / np.float32(ns) for k in range(3)]
        sdf += ndimage.map_coordinates(noise, pos, order=1, mode="nearest")
        local = sdf < 0
        ball = _ball(float(scfg["opening_mm"]), spacing)
        local = ndimage.binary_opening(np.pad(local, max(ball.shape)), ball)
        p = max(ball.shape)
        region_mask[sl] = local[p:-p, p:-p, p:-p]
    params = {"azimuth_deg": az, "elevation_deg": el, "centre_T_mm": centre.tolist(), "main_radius_mm": r_main,
              "n_secondary": len(spheres) - 1}
    return region_mask, params


def skullfix_defect(rng: np.random.Generator, complete: np.ndarray, axes: list[np.ndarray],
                    cfg: dict) -> tuple[np.ndarray, dict]:
    """SkullFix-style: axis-aligned box from ~3/4 of the skull height to the top of the volume."""
    f = cfg["defects"][SKULLFIX]
    idx = [np.flatnonzero(complete.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    lo = [min(axes[c][idx[c][0]], axes[c][idx[c][-1]]) for c in range(3)]
    hi = [max(axes[c][idx[c][0]], axes[c][idx[c][-1]]) for c in range(3)]
    z0 = lo[2] + _u(rng, f["top_frac"]) * (hi[2] - lo[2])
    size = [_u(rng, f["size_mm"]), _u(rng, f["size_mm"])]
    ctr = [lo[c] + _u(rng, f["centre_frac"]) * (hi[c] - lo[c]) for c in range(2)]
    sel = [(axes[c] >= ctr[c] - size[c] / 2) & (axes[c] <= ctr[c] + size[c] / 2) for c in range(2)]
    sel.append(axes[2] >= z0)
    region = sel[0][:, None, None] & sel[1][None, :, None] & sel[2][None, None, :]
    return region, {"box_centre_ras_mm": ctr, "box_size_mm": size, "z_from_mm": z0}


def facial_defect(rng: np.random.Generator, tpl: Template, t_coords: list[np.ndarray],
                  cfg: dict) -> tuple[np.ndarray, dict]:
    """Box (template frame) removing the front of the face: from the most anterior bone backwards."""
    f = cfg["defects"][FACIAL]
    depth, hw = _u(rng, f["depth_mm"]), _u(rng, f["half_width_mm"])
    ztop = tpl.bone_min[2] + _u(rng, f["top_frac"]) * (tpl.bone_max[2] - tpl.bone_min[2])
    y0 = tpl.bone_max[1] - depth
    region = (t_coords[1] >= y0) & (t_coords[2] <= ztop) & (np.abs(t_coords[0]) <= hw)
    return region, {"depth_mm": depth, "half_width_mm": hw, "top_T_mm": float(ztop), "y_from_T_mm": float(y0)}


# Clinical defect families (``defects.clinical`` in the config): what cranioplasty patients have, larger and less
# round than SkullBreak's spheres. Each family has a ``kind``: "cap" (a craniectomy flap: hemicraniectomy,
# bifrontal, large vertex or occipital), "box" (a SkullFix-style box anywhere on the vault), "multi" (two or three
# sphere defects of different sizes in different regions), "burr" (10-15 mm burr holes, alone or beside a defect).
CLINICAL_KINDS = ("cap", "box", "multi", "burr")


def _tangent_frame(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to ``direction`` and to each other (the first horizontal where possible)."""
    first = np.cross([0.0, 0.0, 1.0], direction)
    if np.linalg.norm(first) < 1e-6:  # straight up or down
        first = np.array([1.0, 0.0, 0.0])
    first /= np.linalg.norm(first)
    return first, np.cross(direction, first)


def _vault_start(tpl: Template, cfg: dict) -> np.ndarray:
    return tpl.bone_min + np.asarray(cfg["defects"]["vault_centre_frac"]) * (tpl.bone_max - tpl.bone_min)


def _side(rng: np.random.Generator, family: dict) -> float:
    return float(rng.choice([-1.0, 1.0])) if family.get("both_sides") else 1.0


def cap_defect(rng: np.random.Generator, tpl: Template, t_coords: list[np.ndarray], family: dict,
               cfg: dict) -> tuple[np.ndarray, dict]:
    """A craniectomy flap: the bone seen from the vault centre inside an angular ellipse around one direction,
    above an elevation floor (the skull base stays), with a smooth irregular border."""
    az, el = _side(rng, family) * _u(rng, family["azimuth_deg"]), _u(rng, family["elevation_deg"])
    half_a, half_b = np.deg2rad(_u(rng, family["half_width_deg"])), np.deg2rad(_u(rng, family["half_height_deg"]))
    floor = _u(rng, family["floor_elevation_deg"])
    axis = _direction(az, el)
    first, second = _tangent_frame(axis)
    rel = [t - np.float32(c) for t, c in zip(t_coords, _vault_start(tpl, cfg), strict=True)]
    along = sum(r * np.float32(a) for r, a in zip(rel, axis, strict=True))
    a = np.arctan2(sum(r * np.float32(f) for r, f in zip(rel, first, strict=True)), along)
    b = np.arctan2(sum(r * np.float32(f) for r, f in zip(rel, second, strict=True)), along)
    radius = np.sqrt(sum(r**2 for r in rel))
    elevation = np.degrees(np.arcsin(np.clip(rel[2] / np.maximum(radius, 1e-3), -1.0, 1.0)))
    # Border noise: a smooth random field over the ellipse's angular coordinates (radians, 0.25 rad grid).
    step, n = 0.25, 16
    noise = rng.normal(0.0, float(family.get("border_noise", 0.06)), (n, n)).astype(np.float32)
    wobble = ndimage.map_coordinates(noise, [(a + np.pi / 2) / step, (b + np.pi / 2) / step], order=1, mode="nearest")
    region = (along > 0) & ((a / half_a) ** 2 + (b / half_b) ** 2 <= (1.0 + wobble) ** 2) & (elevation >= floor)
    return region, {"azimuth_deg": az, "elevation_deg": el, "half_width_deg": float(np.degrees(half_a)),
                    "half_height_deg": float(np.degrees(half_b)), "floor_elevation_deg": floor}


def box_defect(rng: np.random.Generator, tpl: Template, t_coords: list[np.ndarray], family: dict,
               cfg: dict) -> tuple[np.ndarray, dict]:
    """A SkullFix-style box anywhere on the vault: square in the skull's tangent plane, through the bone."""
    az, el = _u(rng, (-180.0, 180.0)), _u(rng, family["elevation_deg"])
    normal = _direction(az, el)
    centre = surface_point(tpl, _vault_start(tpl, cfg), normal)
    first, second = _tangent_frame(normal)
    sides = (_u(rng, family["size_mm"]), _u(rng, family["size_mm"]))
    inside, outside = family["depth_mm"]
    rel = [t - np.float32(c) for t, c in zip(t_coords, centre, strict=True)]
    u = sum(r * np.float32(f) for r, f in zip(rel, first, strict=True))
    v = sum(r * np.float32(f) for r, f in zip(rel, second, strict=True))
    w = sum(r * np.float32(f) for r, f in zip(rel, normal, strict=True))
    region = (np.abs(u) <= sides[0] / 2) & (np.abs(v) <= sides[1] / 2) & (w >= -inside) & (w <= outside)
    return region, {"azimuth_deg": az, "elevation_deg": el, "centre_T_mm": centre.tolist(), "size_mm": list(sides)}


def burr_defect(rng: np.random.Generator, tpl: Template, t_coords: list[np.ndarray], family: dict,
                cfg: dict) -> tuple[np.ndarray, dict]:
    """Round 10-15 mm burr holes through the vault, at least ``min_separation_mm`` apart."""
    start = _vault_start(tpl, cfg)
    region = np.zeros(t_coords[0].shape, bool)
    holes: list[dict] = []
    for _ in range(int(rng.integers(family["count"][0], family["count"][1] + 1))):
        for _attempt in range(20):
            axis = _direction(_u(rng, (-180.0, 180.0)), _u(rng, family["elevation_deg"]))
            centre = surface_point(tpl, start, axis)
            if all(np.linalg.norm(centre - np.asarray(h["centre_T_mm"])) >= family["min_separation_mm"]
                   for h in holes):
                break
        diameter = _u(rng, family["diameter_mm"])
        reach = diameter + 30.0
        sl = _crop_for(t_coords, centre - reach, centre + reach)
        if sl is None:
            continue
        rel = [t[sl] - np.float32(c) for t, c in zip(t_coords, centre, strict=True)]
        along = sum(r * np.float32(a) for r, a in zip(rel, axis, strict=True))
        across = np.sqrt(np.maximum(sum(r**2 for r in rel) - along**2, 0.0))
        region[sl] |= (across <= diameter / 2) & (along >= -25.0) & (along <= 10.0)
        holes.append({"centre_T_mm": centre.tolist(), "diameter_mm": diameter})
    return region, {"holes": holes}


def multi_defect(rng: np.random.Generator, tpl: Template, t_coords: list[np.ndarray], spacing: np.ndarray,
                 family: dict, cfg: dict) -> tuple[np.ndarray, dict]:
    """Two or three sphere defects in different regions, the first large, the others small."""
    names = list(cfg["defects"]["regions"])
    count = int(rng.integers(family["holes"][0], family["holes"][1] + 1))
    chosen = [str(n) for n in rng.choice(names, size=min(count, len(names)), replace=False)]
    region = np.zeros(t_coords[0].shape, bool)
    holes = []
    for index, name in enumerate(chosen):
        radius = _u(rng, family["main_radius_mm"] if index == 0 else family["other_radius_mm"])
        spec = {**cfg["defects"]["regions"][name], "main_radius_mm": [radius, 0.01]}
        sphere_cfg = {**cfg, "defects": {**cfg["defects"], "sphere": {**cfg["defects"]["sphere"],
                                                                      "secondary_count": [0, 2 if index else 4]}}}
        mask, params = sphere_defect(rng, tpl, t_coords, spacing, spec, sphere_cfg)
        region |= mask
        holes.append({"region": name, **params})
    return region, {"holes": holes}


def clinical_defect(rng: np.random.Generator, tpl: Template, t_coords: list[np.ndarray], spacing: np.ndarray,
                    family: dict, cfg: dict) -> tuple[np.ndarray, dict]:
    """One defect of a clinical family (its ``kind``: see CLINICAL_KINDS); a burr family may add a sphere defect."""
    kind = family["kind"]
    if kind == "cap":
        return cap_defect(rng, tpl, t_coords, family, cfg)
    if kind == "box":
        return box_defect(rng, tpl, t_coords, family, cfg)
    if kind == "multi":
        return multi_defect(rng, tpl, t_coords, spacing, family, cfg)
    if kind == "burr":
        region, params = burr_defect(rng, tpl, t_coords, family, cfg)
        if rng.random() < float(family.get("with_other_prob", 0.0)):
            name = str(rng.choice(list(cfg["defects"]["regions"])))
            other, other_params = sphere_defect(rng, tpl, t_coords, spacing, cfg["defects"]["regions"][name], cfg)
            region |= other
            params["with"] = {"region": name, **other_params}
        return region, params
    raise ValueError(f"unknown clinical defect kind {kind!r}; one of {CLINICAL_KINDS}")


def plan_clinical(rng: np.random.Generator, cfg: dict) -> list[str]:
    """Which clinical families this source gets (drawn without replacement by weight; none by default)."""
    d = cfg["defects"]
    weights = d.get("clinical_subtypes") or {}
    names = [n for n, w in weights.items() if w > 0]
    k = min(int(d.get("clinical_per_source", 0)), len(names))
    if not k:
        return []
    w = np.asarray([weights[n] for n in names], float)
    return [str(c) for c in rng.choice(names, size=k, replace=False, p=w / w.sum())]


# ----------------------------------------------------------------------------- one source

def plan_defects(rng: np.random.Generator, cfg: dict) -> list[str]:
    """Which defect subtypes this source gets (cranial ones drawn without replacement by weight)."""
    d = cfg["defects"]
    names = list(d["cranial_subtypes"].keys())
    w = np.asarray([d["cranial_subtypes"][n] for n in names], float)
    k = min(int(d["cranial_per_source"]), int((w > 0).sum()))
    chosen = list(rng.choice(names, size=k, replace=False, p=w / w.sum())) if k else []
    return [str(c) for c in chosen] + [FACIAL] * int(d["facial_per_source"])


def generate_source(source_id: int, tpl: Template, cfg: dict) -> dict:
    """Complete + defective volumes of one source deformation (arrays, not written)."""
    rng = np.random.default_rng([int(cfg["seed"]), int(source_id)])
    params = sample_shape_params(rng, tpl, cfg)
    warp = make_warp(rng, tpl, params, cfg)
    axes, gparams = sample_grid(rng, tpl, warp, cfg)
    params.update(gparams)
    t_coords = warp.backward(axes)
    complete = warp_template(tpl, t_coords)
    spacing = np.abs([a[1] - a[0] for a in axes])
    vox_ml = float(np.prod(spacing)) / 1000.0
    defects = []
    for n, subtype in enumerate(plan_defects(rng, cfg)):
        for attempt in range(int(cfg["defects"]["max_tries"])):  # noqa: B007 (used after the loop)
            if subtype == SKULLFIX:
                region, dparams = skullfix_defect(rng, complete, axes, cfg)
            elif subtype == FACIAL:
                region, dparams = facial_defect(rng, tpl, t_coords, cfg)
            else:
                region, dparams = sphere_defect(rng, tpl, t_coords, spacing, cfg["defects"]["regions"][subtype], cfg)
            implant = complete & region
            if implant.sum() * vox_ml >= cfg["defects"]["min_implant_ml"]:
                break
        else:
            log.warning("source %d: %s defect below min_implant_ml after %d tries", source_id, subtype, attempt + 1)
        dparams["tries"] = attempt + 1
        defects.append({"subtype": subtype, "label": "facial" if subtype == FACIAL else "cranial",
                        "index": n, "defective": complete & ~region, "implant": implant,
                        "implant_ml": float(implant.sum() * vox_ml), "params": dparams})
    # Clinical families come after the others, so adding them leaves every earlier defect of a source unchanged.
    for n, subtype in enumerate(plan_clinical(rng, cfg), start=len(defects)):
        family = cfg["defects"]["clinical"][subtype]
        for attempt in range(int(cfg["defects"]["max_tries"])):  # noqa: B007 (used after the loop)
            region, dparams = clinical_defect(rng, tpl, t_coords, spacing, family, cfg)
            implant = complete & region
            if implant.sum() * vox_ml >= float(family.get("min_implant_ml", cfg["defects"]["min_implant_ml"])):
                break
        dparams["tries"] = attempt + 1
        defects.append({"subtype": subtype, "label": "cranial", "index": n, "defective": complete & ~region,
                        "implant": implant, "implant_ml": float(implant.sum() * vox_ml), "params": dparams})
    return {"source_id": source_id, "complete": complete, "ijk_to_ras": grid_affine(axes), "params": params,
            "defects": defects}


def write_source(result: dict, out: Path, split: str, compression_level: int) -> list[dict]:
    """Write one source's volumes; return its case records."""
    sid = result["source_id"]
    folder = out / "sources" / f"src_{sid:03d}"
    m = result["ijk_to_ras"]
    comp = write_mask(folder / "complete.nrrd", result["complete"], m, True, compression_level=compression_level)
    shape = "x".join(str(s) for s in result["complete"].shape)
    spacing = "x".join(f"{s:.3f}" for s in result["params"]["spacing_mm"])
    rel = lambda p: str(p.relative_to(out))  # noqa: E731
    rows = [{"case_id": f"src{sid:03d}_complete", "source_id": sid, "split": split, "label": "complete",
             "subtype": "complete", "complete": rel(comp), "defective": rel(comp), "implant": "",
             "implant_ml": 0.0, "shape": shape, "spacing_mm": spacing, "params": result["params"]}]
    for d in result["defects"]:
        stem = f"{d['subtype']}_{d['index']}"
        dp = write_mask(folder / f"{stem}_defective.nrrd", d["defective"], m, True, compression_level=compression_level)
        ip = write_mask(folder / f"{stem}_implant.nrrd", d["implant"], m, True, compression_level=compression_level)
        rows.append({"case_id": f"src{sid:03d}_{stem}", "source_id": sid, "split": split, "label": d["label"],
                     "subtype": d["subtype"], "complete": rel(comp), "defective": rel(dp), "implant": rel(ip),
                     "implant_ml": round(d["implant_ml"], 3), "shape": shape, "spacing_mm": spacing,
                     "params": {**result["params"], "defect": d["params"]}})
    return rows


# ----------------------------------------------------------------------------- population

def assign_splits(n_sources: int, fractions: dict[str, float], seed: int,
                  extra_train_sources: int = 0) -> dict[int, str]:
    """Split by source deformation id (a source's cases never straddle splits). `extra_train_sources` more
    ids (n_sources, n_sources + 1, ...) all go to "train": a larger training population whose validation and
    test sources are exactly those of the `n_sources` population (results stay comparable)."""
    order = np.random.default_rng([int(seed), 999_999]).permutation(n_sources)
    names = list(fractions)
    total = sum(fractions.values())
    bounds = np.round(np.cumsum([fractions[n] / total for n in names]) * n_sources).astype(int)
    out, start = {}, 0
    for name, end in zip(names, bounds, strict=True):
        for sid in order[start:end]:
            out[int(sid)] = name
        start = end
    out.update(dict.fromkeys(range(n_sources, n_sources + int(extra_train_sources)), "train"))
    return out


_WORKER: dict = {}


def _init_worker(tpl: Template, cfg: dict, out: str) -> None:
    _WORKER.update(tpl=tpl, cfg=cfg, out=Path(out))


def _run_one(args: tuple[int, str]) -> list[dict]:
    sid, split = args
    w = _WORKER
    res = generate_source(sid, w["tpl"], w["cfg"])
    return write_source(res, w["out"], split, int(w["cfg"].get("compression_level", 1)))


def load_config(path: str | Path) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def generate_dataset(cfg: dict, out: Path, template: tuple[np.ndarray, np.ndarray] | None = None,
                     progress: bool = True) -> list[dict]:
    """Generate the whole population into `out`; returns the case records (also written as cases.csv/json)."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mask, m = template if template is not None else load_template(cfg.get("template", "auto"))
    tpl = make_template(mask, m)
    splits = assign_splits(int(cfg["n_sources"]), cfg["splits"], int(cfg["seed"]),
                           int(cfg.get("extra_train_sources", 0)))
    jobs = sorted(splits.items())
    workers = int(cfg.get("workers", 1))
    t0 = time.time()
    rows: list[dict] = []
    if workers <= 1:
        _init_worker(tpl, cfg, str(out))
        for job in tqdm(jobs, desc="sources", disable=not progress):
            rows += _run_one(job)
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(tpl, cfg, str(out))) as pool:
            for r in tqdm(pool.map(_run_one, jobs), total=len(jobs), desc="sources", disable=not progress):
                rows += r
    write_index(rows, out, cfg)
    log.info("generated %d cases from %d sources in %.1f s", len(rows), len(jobs), time.time() - t0)
    return rows


def write_index(rows: list[dict], out: Path, cfg: dict) -> None:
    with open(out / "cases.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with open(out / "cases.json", "w") as fh:
        json.dump({"format": "skullvae-generated", "version": 1, "config": cfg, "cases": rows}, fh, indent=1,
                  default=float)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Generate the synthetic skull population")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-sources", type=int, default=None, help="override n_sources")
    p.add_argument("--workers", type=int, default=None, help="override workers")
    p.add_argument("--extra-train-sources", type=int, default=None,
                   help="override extra_train_sources (more training sources; validation / test unchanged)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    if args.n_sources is not None:
        cfg["n_sources"] = args.n_sources
    if args.workers is not None:
        cfg["workers"] = args.workers
    if args.extra_train_sources is not None:
        cfg["extra_train_sources"] = args.extra_train_sources
    generate_dataset(cfg, args.out)


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------------------- figure

def depth_render(skull: np.ndarray, implant: np.ndarray, axis: int, from_high: bool) -> np.ndarray:
    """Pseudo-3D view: first bone voxel along `axis`, shaded by depth; implant voxels hit first in red."""
    vol = (skull > 0) | (implant > 0)
    v, imp = np.moveaxis(vol, axis, 0), np.moveaxis(implant > 0, axis, 0)
    if from_high:
        v, imp = v[::-1], imp[::-1]
    hit = v.any(0)
    first = np.argmax(v, axis=0)
    shade = np.where(hit, 1.0 - 0.75 * first / max(1, v.shape[0] - 1), 0.0)
    is_imp = np.take_along_axis(imp, first[None], 0)[0] & hit
    rgb = np.stack([shade] * 3, -1)
    rgb[is_imp] = np.stack([shade[is_imp], 0.25 * shade[is_imp], 0.2 * shade[is_imp]], -1)
    return rgb


def save_examples_figure(out: Path, path: Path, n_sources: int = 2) -> Path:
    """Examples of generated cases (frontal and lateral views, implant in red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    rows = json.loads((Path(out) / "cases.json").read_text())["cases"]
    sids = sorted({r["source_id"] for r in rows})[:n_sources]
    cases = [r for r in rows if r["source_id"] in sids]
    fig, axes = plt.subplots(2, len(cases), figsize=(2.3 * len(cases), 5.0), squeeze=False)
    for col, r in enumerate(cases):
        skull, m, _ = read_mask(out / r["defective"])
        imp = read_mask(out / r["implant"])[0] if r["implant"] else np.zeros_like(skull)
        # Reorient to RAS index order so views are comparable whatever the stored axis directions.
        for ax in range(3):
            if m[ax, ax] < 0:
                skull, imp = np.flip(skull, ax), np.flip(imp, ax)
        sp = np.abs(np.diag(m)[:3])
        front = depth_render(skull, imp, axis=1, from_high=True)  # looking from anterior
        side = depth_render(skull, imp, axis=0, from_high=False)  # looking from the right... (x low side)
        axes[0, col].imshow(np.transpose(front, (1, 0, 2))[::-1, ::-1], aspect=sp[2] / sp[0])
        axes[1, col].imshow(np.transpose(side, (1, 0, 2))[::-1], aspect=sp[2] / sp[1])
        axes[0, col].set_title(f"src {r['source_id']} {r['subtype']}\n{r['split']}, {r['implant_ml']:.0f} ml",
                               fontsize=8)
        for a in axes[:, col]:
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
