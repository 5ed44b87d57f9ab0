"""Per defect family on a split: what a bundle does with each kind of defect, with the engine's default settings.

    python -m training.families --config training/configs/clinical_cpu.yaml [--bundle FOLDER] [--split test]
                                [--out training/results] [--figures]

Every case of the split (complete skulls included) is completed as a user would (class detected, the bundle's γ).
Per family (the generator's subtype, or the data set's label): implant DSC / bDSC / HD95, the worst case, the implant
volume farther than 10 mm from the true defect, and for every true hole of at least 1 ml (connected piece of the
true implant) its recall; a hole counts as found at recall ≥ 0.5. ``metrics.error_by_rim_distance`` gives each case's
disagreement and surface error by distance from the defect's rim. Writes ``families.json`` and ``families.md`` (and with
``--figures`` one preview per family).
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
from SkullVAECompletionLib.imageio.renders import write_preview_png
from SkullVAECompletionLib.inference.completion import SkullCompleter
from SkullVAECompletionLib.metrics import RIM_DISTANCE_BINS_MM, error_by_rim_distance, implant_metrics
from SkullVAECompletionLib.model.bundle import load_bundle
from SkullVAECompletionLib.preprocessing.geometry import voxel_spacing
from training import data as datamod
from training.robustness import far_volume_ml
from training.train import expand_path, load_config, split_records_of

log = logging.getLogger("training.families")

MIN_HOLE_ML = 1.0  # true holes smaller than this are not counted (slivers where a defect grazes thin bone)
FOUND_RECALL = 0.5  # a hole is found when the implant covers at least this share of it


def hole_recalls(implant: np.ndarray, truth: np.ndarray, spacing: np.ndarray) -> list[dict[str, float]]:
    """Recall of every true hole (connected piece of the true implant) of at least MIN_HOLE_ML."""
    labels, count = ndimage.label(np.asarray(truth, bool), structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return []
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    covered = np.bincount(labels.ravel(), weights=np.asarray(implant, bool).ravel(), minlength=count + 1)
    return [{"ml": round(float(sizes[i]) * voxel_ml, 2), "recall": round(float(covered[i] / sizes[i]), 4)}
            for i in range(1, count + 1) if sizes[i] * voxel_ml >= MIN_HOLE_ML]


def evaluate_case(completer: SkullCompleter, record: Any, figure_dir: Path | None) -> dict[str, Any]:
    defective, matrix = datamod.read_binary(record.defective)
    truth = datamod.read_binary(record.implant)[0] if record.implant else np.zeros_like(defective)
    spacing = voxel_spacing(matrix)
    row: dict[str, Any] = {"case_id": record.case_id, "label": record.label, "family": record.subtype}
    tick = time.perf_counter()
    try:
        result = completer.run(defective, matrix)
    except InputError as error:
        return {**row, "refused": str(error), "dsc": 0.0, "bdsc": 0.0, "hd95": float("inf"), "holes": [],
                "rim": [], "implant_ml": 0.0, "far_ml": 0.0}
    row.update(refused="", detected=result.detected_type, implant_ml=round(result.implant_volume_ml, 2),
               message=result.message, warnings=result.warnings, seconds=round(time.perf_counter() - tick, 2),
               trust=None if result.trust is None else round(result.trust.figure, 4),
               far_ml=round(far_volume_ml(result.implant, truth, spacing), 2))
    if np.any(truth):
        row.update(implant_metrics(result.implant, truth, defective, spacing))
        row["holes"] = hole_recalls(result.implant, truth, spacing)
        row["rim"] = error_by_rim_distance(result.implant, truth, defective, spacing)
    if figure_dir is not None:
        write_preview_png(figure_dir / f"family_{record.subtype}.png", result.completed, result.implant, matrix,
                          f"{record.subtype} ({record.case_id}): DSC {row.get('dsc', 0.0):.2f}, "
                          f"implant {result.implant_volume_ml:.1f} ml")
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for family in sorted({r["family"] for r in rows}):
        group = [r for r in rows if r["family"] == family]
        entry: dict[str, Any] = {"family": family, "n": len(group), "refused": sum(bool(r["refused"]) for r in group),
                                 "implant_ml_max": max(r["implant_ml"] for r in group),
                                 "far_ml_max": max(r["far_ml"] for r in group)}
        scored = [r for r in group if "dsc" in r and r["label"] != "complete"]
        if scored:
            entry.update({m: round(float(np.mean([min(r[m], 100.0) for r in scored])), 4)
                          for m in ("dsc", "bdsc", "hd95")})
            entry["dsc_min"] = round(min(r["dsc"] for r in scored), 4)
            holes = [h for r in scored for h in r.get("holes", [])]
            entry["holes"] = len(holes)
            entry["holes_found"] = sum(h["recall"] >= FOUND_RECALL for h in holes)
            entry["holes_recall_0.7"] = sum(h["recall"] >= 0.7 for h in holes)
        out.append(entry)
    return out


def rim_profile(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Over all cranial cases, per band of distance from the rim: the share of the true implant's volume where
    implant and truth disagree, and the mean of the cases' mean surface errors."""
    out = []
    for low, high in zip(RIM_DISTANCE_BINS_MM[:-1], RIM_DISTANCE_BINS_MM[1:], strict=True):
        bands = [b for r in rows if r["label"] == "cranial" for b in r.get("rim", []) if b["from_mm"] == low]
        truth = sum(b["truth_ml"] for b in bands)
        surface = [b["surface_mean_mm"] for b in bands if np.isfinite(b["surface_mean_mm"])]
        out.append({"from_mm": low, "to_mm": high, "truth_ml": round(truth, 1),
                    "disagreement": round(sum(b["disagreement_ml"] for b in bands) / truth, 3) if truth else None,
                    "surface_mean_mm": round(float(np.mean(surface)), 2) if surface else None})
    return out


def write_report(out: Path, results: dict[str, Any]) -> Path:
    lines = [f"# Defect families ({results['split']} split)", "",
             f"Bundle {results['model_id']} {results['version']}, {results['n_cases']} cases ({results['date']}); "
             "written by `python -m training.families`. Default settings (class detected, the bundle's γ). HD95 "
             f"of an empty implant counts as 100 mm. A hole is a connected piece of the true implant of at least "
             f"{MIN_HOLE_ML:g} ml; found = recall ≥ {FOUND_RECALL}. `far` = implant farther than 10 mm from the true "
             "defect.", "",
             "| family | n | refused | DSC | bDSC | HD95 mm | worst DSC | holes found / ≥ 0.7 recall / all | "
             "far ml (max) | implant ml (max) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in results["summary"]:
        if "dsc" in e:
            figures = (f"{e['dsc']:.3f} | {e['bdsc']:.3f} | {e['hd95']:.1f} | {e['dsc_min']:.3f} | "
                       f"{e['holes_found']} / {e['holes_recall_0.7']} / {e['holes']}")
        else:
            figures = "– | – | – | – | –"
        lines.append(f"| {e['family']} | {e['n']} | {e['refused']} | {figures} | {e['far_ml_max']:.1f} | "
                     f"{e['implant_ml_max']:.1f} |")
    lines += ["", "Error of the cranial cases by distance from the defect's rim: the volume where implant and truth "
              "disagree (as a share of the true implant in that band) and the mean surface error:", "",
              "| from the rim | true implant ml | disagreement | surface error mm |", "|---|---|---|---|"]
    for b in results["rim_profile"]:
        to = "∞" if not np.isfinite(b["to_mm"]) else f"{b['to_mm']:g}"
        lines.append(f"| {b['from_mm']:g}–{to} mm | {b['truth_ml']} | {b['disagreement']} | {b['surface_mean_mm']} |")
    path = out / "families.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def families(cfg: dict, out: Path, bundle_dir: Path | None = None, split: str = "test", figures: bool = False
             ) -> dict[str, Any]:
    torch.set_num_threads(int(cfg.get("threads", 0)) or torch.get_num_threads())
    bundle = load_bundle(bundle_dir or expand_path(cfg["aggregate"]["bundle_dir"]))
    completer = SkullCompleter(bundle, device=cfg.get("device", "auto"))
    records = split_records_of(cfg, (split,))
    out.mkdir(parents=True, exist_ok=True)
    shown: set[str] = set()
    rows = []
    for record in tqdm(records, desc=f"{split} cases"):
        figure_dir = out if figures and record.subtype not in shown else None
        shown.add(record.subtype)
        rows.append(evaluate_case(completer, record, figure_dir))
    results = {"model_id": bundle.model_id, "version": bundle.version, "split": split,
               "date": time.strftime("%Y-%m-%d %H:%M"), "n_cases": len(rows), "summary": summarise(rows),
               "rim_profile": rim_profile(rows), "rows": rows}
    (out / "families.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    log.info("report written to %s", write_report(out, results))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A bundle's implants per defect family")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: aggregate.bundle_dir)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=Path("training/results"))
    parser.add_argument("--figures", action="store_true", help="a preview PNG of one case per family")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    families(load_config(args.config), args.out, args.bundle, args.split, args.figures)


if __name__ == "__main__":
    main()
