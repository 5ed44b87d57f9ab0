"""Skull size and trust on the test split: how a bundle does on heads of other sizes, and what it refuses.

    python -m training.robustness --config training/configs/bundled_cpu.yaml [--scales 0.75 0.9 1 1.1 1.25]
                                  [--baseline-bundle FOLDER] [--out training/results]

Every test case (complete skulls included) is scaled by each factor: its voxel spacing and position are multiplied
by the factor (the voxels stay: a smaller head scanned with proportionally finer voxels), then completed with the
engine's default settings (class detected, the bundle's γ). Cranial and facial cases get DSC / bDSC / HD95 against
their scaled ground truth and the implant volume farther than 10 mm from the true defect; every case gets the trust
figure (trust.py). Then the non-skull inputs of ``synthetic.non_skull_mask``. ``--baseline-bundle`` repeats the
skulls with another bundle (e.g. the previous version, or one whose grid has no size normalisation).
Writes ``robustness.json`` and ``robustness.md`` into the results folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from SkullVAECompletionLib.errors import InputError
from SkullVAECompletionLib.inference.completion import SkullCompleter
from SkullVAECompletionLib.metrics import implant_metrics
from SkullVAECompletionLib.model.bundle import load_bundle
from SkullVAECompletionLib.preprocessing.geometry import voxel_spacing
from SkullVAECompletionLib.synthetic import NON_SKULL_KINDS, non_skull_mask
from training import data as datamod
from training.train import expand_path, load_config, split_records_of

log = logging.getLogger("training.robustness")

DEFAULT_SCALES = (0.75, 0.9, 1.0, 1.1, 1.25)
FAR_MM = 10.0  # implant farther than this from the true defect counts as "in the wrong place"


def scaled_geometry(ijk_to_ras: np.ndarray, scale: float) -> np.ndarray:
    """The same voxels describing a head ``scale`` times the size (spacing and position scaled about RAS 0)."""
    matrix = np.asarray(ijk_to_ras, float).copy()
    matrix[:3, :] *= scale
    return matrix


def far_volume_ml(implant: np.ndarray, truth: np.ndarray, spacing: np.ndarray, far_mm: float = FAR_MM) -> float:
    """Volume (ml) of the implant farther than ``far_mm`` from the true implant (all of it when there is none)."""
    implant = np.asarray(implant, bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if not implant.any():
        return 0.0
    if not np.any(truth):
        return float(np.count_nonzero(implant)) * voxel_ml
    distance = ndimage.distance_transform_edt(~np.asarray(truth, bool), sampling=spacing)
    return float(np.count_nonzero(implant & (distance > far_mm))) * voxel_ml


def run_case(completer: SkullCompleter, defective: np.ndarray, truth: np.ndarray, matrix: np.ndarray, name: str
             ) -> dict[str, Any]:
    """One completion with default settings; refusals are rows too (``refused``: "shape" or "trust")."""
    spacing = voxel_spacing(matrix)
    tick = time.perf_counter()
    try:
        encoded = completer.encode(defective, matrix, name=name, refuse_untrusted=False)
    except InputError as error:
        return {"refused": "shape", "message": str(error), "trust": None, "scale_estimate": None}
    row: dict[str, Any] = {"trust": round(encoded.trust.figure, 4), "trust_status": encoded.trust.status,
                           "scale_estimate": round(encoded.mapping.scale, 4),
                           "refused": "trust" if encoded.trust.status == "refuse" else ""}
    result = completer.complete(encoded)
    row.update(implant_metrics(result.implant, truth, defective, spacing) if np.any(truth) else {})
    row.update(detected=result.detected_type, implant_ml=round(result.implant_volume_ml, 2),
               far_ml=round(far_volume_ml(result.implant, truth, spacing), 2), message=result.message,
               warnings=len(result.warnings), seconds=round(time.perf_counter() - tick, 2))
    return row


def evaluate_sizes(completers: dict[str, SkullCompleter], records: list, scales: list[float]) -> list[dict[str, Any]]:
    rows = []
    for record in tqdm(records, desc="test cases"):
        defective, matrix = datamod.read_binary(record.defective)
        truth = datamod.read_binary(record.implant)[0] if record.implant else np.zeros_like(defective)
        for scale in scales:
            for grid, completer in completers.items():
                row = run_case(completer, defective, truth, scaled_geometry(matrix, scale), record.case_id)
                rows.append({"case_id": record.case_id, "label": record.label, "subtype": record.subtype,
                             "scale": scale, "grid": grid, **row})
    return rows


def evaluate_non_skulls(completer: SkullCompleter) -> list[dict[str, Any]]:
    rows = []
    for kind in NON_SKULL_KINDS:
        mask, matrix = non_skull_mask(kind)
        row = run_case(completer, mask, np.zeros_like(mask), matrix, kind)
        rows.append({"kind": kind, **row})
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per grid, scale and label: mean figures, the worst case, refusals and trust."""
    out = []
    keys = sorted({(r["grid"], r["scale"], r["label"]) for r in rows})
    for grid, scale, label in keys:
        group = [r for r in rows if (r["grid"], r["scale"], r["label"]) == (grid, scale, label)]
        done = [r for r in group if not r["refused"]]
        entry: dict[str, Any] = {"grid": grid, "scale": scale, "label": label, "n": len(group),
                                 "refused": len(group) - len(done)}
        trusts = [r["trust"] for r in group if r["trust"] is not None]
        entry["trust_min"] = round(min(trusts), 3) if trusts else None
        entry["trust_mean"] = round(float(np.mean(trusts)), 3) if trusts else None
        if label != "complete" and done:
            for metric in ("dsc", "bdsc", "hd95"):
                values = [r[metric] for r in done]
                entry[metric] = round(float(np.mean([v if np.isfinite(v) else 100.0 for v in values])), 4)
            entry["dsc_min"] = round(min(r["dsc"] for r in done), 4)
        entry["far_ml_max"] = round(max((r.get("far_ml", 0.0) for r in done), default=0.0), 2)
        entry["implant_ml_max"] = round(max((r.get("implant_ml", 0.0) for r in done), default=0.0), 2)
        out.append(entry)
    return out


def write_report(out: Path, results: dict[str, Any]) -> Path:
    lines = [
        "# Skull size and trust (test split)",
        "",
        f"Bundle {results['model_id']} {results['version']}, {results['n_cases']} test cases "
        f"({results['date']}); written by `python -m training.robustness`. Each case scaled by the factor (spacing "
        "and position), completed with the default settings. HD95 of an empty implant counts as 100 mm. "
        f"`far` = implant volume farther than {FAR_MM:g} mm from the true defect.",
        "",
        "| bundle | scale | cases | n | refused | DSC | bDSC | HD95 mm | worst DSC | far ml (max) | implant ml (max) |"
        " trust min / mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in results["summary"]:
        figures = " | ".join(f"{e[m]:.3f}" if m in e else "–" for m in ("dsc", "bdsc")) + " | " + (
            f"{e['hd95']:.1f}" if "hd95" in e else "–") + " | " + (f"{e['dsc_min']:.3f}" if "dsc_min" in e else "–")
        trust = "–" if e["trust_min"] is None else f"{e['trust_min']:.2f} / {e['trust_mean']:.2f}"
        lines.append(f"| {e['grid']} | {e['scale']:g} | {e['label']} | {e['n']} | {e['refused']} | {figures} | "
                     f"{e['far_ml_max']:.1f} | {e['implant_ml_max']:.1f} | {trust} |")
    lines += ["", "## Inputs that are not a skull", "", "| input | refused by | trust | message |", "|---|---|---|---|"]
    for r in results["non_skull"]:
        refused = r["refused"] or "not refused"
        trust = "–" if r["trust"] is None else f"{r['trust']:.2f}"
        lines.append(f"| {r['kind']} | {refused} | {trust} | {r.get('message', '')[:160]} |")
    policy = results["trust_policy"]
    lines += ["", f"Trust thresholds of the bundle: refuse below {policy['refuse_below']}, warn below "
              f"{policy['warn_below']} (fraction of the input's bone within {policy['tolerance_voxels']} model voxel "
              "of the decode at γ = 0).", ""]
    path = out / "robustness.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def robustness(cfg: dict, scales: list[float], out: Path, bundle_dir: Path | None = None,
               baseline_dir: Path | None = None) -> dict:
    torch.set_num_threads(int(cfg.get("threads", 0)) or torch.get_num_threads())
    bundle = load_bundle(bundle_dir or expand_path(cfg["aggregate"]["bundle_dir"]))
    device = cfg.get("device", "auto")
    completers = {bundle.version: SkullCompleter(bundle, device=device)}
    if baseline_dir is not None:
        baseline = load_bundle(baseline_dir)
        completers[f"{baseline.version} (baseline)"] = SkullCompleter(baseline, device=device)
    records = split_records_of(cfg, ("test",))
    rows = evaluate_sizes(completers, records, scales)
    non_skull = evaluate_non_skulls(completers[bundle.version])
    results = {"model_id": bundle.model_id, "version": bundle.version, "date": time.strftime("%Y-%m-%d %H:%M"),
               "n_cases": len(records), "scales": scales, "summary": summarise(rows), "rows": rows,
               "non_skull": non_skull, "trust_policy": completers[bundle.version].trust_policy.to_dict()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    log.info("report written to %s", write_report(out, results))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Skull size and trust of a bundle on the test split")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: aggregate.bundle_dir)")
    parser.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES))
    parser.add_argument("--baseline-bundle", type=Path, default=None, metavar="FOLDER",
                        help="also run the skulls with this bundle, for comparison")
    parser.add_argument("--out", type=Path, default=Path("training/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    robustness(load_config(args.config), args.scales, args.out, args.bundle, args.baseline_bundle)


if __name__ == "__main__":
    main()
