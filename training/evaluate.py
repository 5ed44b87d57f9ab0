"""Evaluation report of a trained bundle on the TEST split: Markdown + PNG figures + results.json.

    python -m training.evaluate --config training/configs/bundled_cpu.yaml [--bundle FOLDER] [--out DIR]

All implant figures (DSC, bDSC within 10 mm, HD95 in mm) are measured at each test case's own (input)
resolution through the engine (:class:`SkullCompleter`), exactly as a user would run it. Nothing here
is tuned: γ and the completion method were chosen on the validation split by ``training/aggregate.py``
(the comparison models get their γ chosen on validation the same way).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from SkullVAECompletionLib.errors import InputError
from SkullVAECompletionLib.extraction.implant import decoded_implant_region
from SkullVAECompletionLib.inference import regions
from SkullVAECompletionLib.inference.completion import SkullCompleter
from SkullVAECompletionLib.inference.implant_stage import extract_implant
from SkullVAECompletionLib.inference.results import CompletionResult, EncodedSkull
from SkullVAECompletionLib.metrics import defect_area_fill, defect_fill, implant_metrics
from SkullVAECompletionLib.model.bundle import ModelBundle, load_bundle, save_bundle
from SkullVAECompletionLib.model.networks import bone_probability
from SkullVAECompletionLib.options import EXTRACTION_CHOICES
from SkullVAECompletionLib.preprocessing.geometry import to_model_grid
from training.aggregate import (
    Stage1Decoding,
    defect_classes_of,
    encode_set,
    latent_statistics,
    memory_bundle,
    model_grid_cases,
    paired_latents,
    pick_cases,
    select_on_validation,
)
from training.train import (
    CHECKPOINT_NAME,
    LOG_NAME,
    VolumeSet,
    entry_volume,
    expand_path,
    full_resolution_case,
    load_config,
    load_model_from_checkpoint,
    load_volumes,
    parse_overrides,
    stage_dir,
)

log = logging.getLogger("training.evaluate")
METRICS = ("dsc", "bdsc", "hd95")
# The true complete skull in place of the decode: what a perfect decoder (on the model grid) would reach. Row name
# suffix → (extraction, rim option overrides). A real decode's surfaces need the bundle's 12 mm of smoothing (their
# errors at that scale are noise); a perfect one needs little, so the rim's ceiling is shown both ways.
CEILING = "true complete skull as the decode"
CEILINGS = {
    "rim stage (ceiling of a perfect decoder)": ("rim", {}),
    "rim stage, decode smoothing 4 mm": ("rim", {"shape_smoothing_mm": 4.0}),
    "decode extraction": ("decode", {}),
}
NO_GAMMA = float("nan")  # one object, so that rows without a γ group together


# ----------------------------------------------------------------------------- comparison models

@dataclasses.dataclass
class Variant:
    """One way of completing: a completer (model + centroids/DEV), a method and its validation-chosen γ."""

    name: str
    completer: SkullCompleter
    method: str
    gamma: dict[str, float]
    own_encoder: bool = False  # True: encode again (another encoder); False: reuse the bundle's encoding
    extraction: str | None = None  # None: the bundle's default (the rim-conforming stage)


def comparison_completer(model: torch.nn.Module, train: VolumeSet, manifest: dict, device: str) -> SkullCompleter:
    """A completer whose centroids/DEV come from ``model``'s own encoder on the training split."""
    latents, _ = encode_set(model, train.volumes)
    stats = latent_statistics(latents, train.classes)
    pairs = paired_latents(latents, train.classes, train.groups, defect_classes_of(stats["dev"]))
    patched = {**manifest, "centroids": {k: v.tolist() for k, v in stats["centroids"].items()},
               "dev": {k: v.tolist() for k, v in stats["dev"].items()},
               "defect_classes": defect_classes_of(stats["dev"])}
    return SkullCompleter(memory_bundle(model, patched, pairs), device=device)


def case_class(bundle: ModelBundle, volume_set: VolumeSet, index: int) -> str:
    """The true class of a case in ``bundle``'s terms: its region class, or cranial/facial for a format-1 bundle."""
    if "cranial" in bundle.defect_classes:
        return volume_set.labels[index]
    return volume_set.classes[index] if volume_set.classes else volume_set.labels[index]


def completable(bundle: ModelBundle, kind: str) -> str:
    """``kind`` if the model has a DEV for it, else "auto" (a class without training cases has no shift)."""
    return kind if kind in bundle.defect_classes else "auto"


NO_FILL = {"defect_fill": float("nan"), "defect_area_fill": float("nan")}  # no defect, or no decode to measure


def decode_fills(probability: np.ndarray, defect: np.ndarray | None, skull: np.ndarray) -> dict[str, float]:
    """How much of the true defect (model grid) the decoded skull fills: voxel by voxel (``defect_fill``) and as
    area, seen from the cranial centre (``defect_area_fill``); NaN without a defect."""
    if defect is None or not (defect >= 0.5).any():
        return dict(NO_FILL)
    decoded, inside = probability > 0.5, defect >= 0.5
    return {"defect_fill": defect_fill(decoded, inside),
            "defect_area_fill": defect_area_fill(decoded, inside, skull >= 0.5)}


def build_variants(cfg: dict, bundle: ModelBundle, data: dict[str, VolumeSet], device: str) -> list[Variant]:
    """Aggregated VAE (dev / knn / refine), the large-β stage-1 VAE alone and, if trained, the small-β VAE."""
    manifest = bundle.manifest
    main = SkullCompleter(bundle, device=device)
    selection = manifest["training"].get("selection_on_validation", {})
    best = selection.get("best_gamma", {})
    default = bundle.default_gamma
    variants = [Variant("aggregated VAE, DEV", main, "dev", best.get("dev", default))]
    if bundle.paired_latents:
        variants.append(Variant("aggregated VAE, k-NN DEV", main, "knn", best.get("knn", default)))
    # The bundle's default method first: it is the primary variant of the γ sweep.
    variants.sort(key=lambda v: v.method != bundle.completion_options.get("method", "dev"))
    variants.append(Variant("aggregated VAE, DEV + refine", main, "refine", best.get("refine", default)))
    # The same decode, with the implant cut out of it as decoded-minus-input bone (the paper's way, implant.py).
    primary_method = bundle.completion_options.get("method", "dev")
    primary = next(v for v in variants if v.method == primary_method)
    variants.append(dataclasses.replace(primary, name=f"{primary.name}, decode extraction", extraction="decode"))
    # Baseline without the network: the patient's healthy side mirrored (unilateral defects only).
    variants.append(Variant("mirrored healthy side (no network)", main, "mirror", default))
    cache = expand_path(cfg["data"]["cache"]) if cfg["data"].get("cache") else None
    val_cases = model_grid_cases(data["val"], cache, cfg["aggregate"].get("val_cases_per_type"))
    gammas = [float(g) for g in cfg["aggregate"]["gamma_grid"]]
    stage1 = comparison_completer(Stage1Decoding(bundle.model), data["train"], manifest, device)
    _, gamma, _, _ = select_on_validation(stage1, val_cases, gammas, refine=False)
    variants.append(Variant(f"stage-1 VAE alone (β = {cfg['stage1']['beta']:g})", stage1, "dev", gamma))
    for name, checkpoint in reference_runs(cfg).items():
        other, _ = load_model_from_checkpoint(checkpoint)
        other_completer = comparison_completer(Stage1Decoding(other), data["train"], manifest, device)
        _, gamma, _, _ = select_on_validation(other_completer, val_cases, gammas, refine=False)
        variants.append(Variant(name, other_completer, "dev", gamma, own_encoder=True))
    baseline_cfg = cfg["evaluate"].get("baseline_config")
    if baseline_cfg:
        path = stage_dir(load_config(baseline_cfg), "baseline") / CHECKPOINT_NAME
        if path.exists():
            small, _ = load_model_from_checkpoint(path)
            small_completer = comparison_completer(Stage1Decoding(small), data["train"], manifest, device)
            _, gamma, _, _ = select_on_validation(small_completer, val_cases, gammas, refine=False)
            variants.append(Variant("small-β VAE (β = 1e-4)", small_completer, "dev", gamma, own_encoder=True))
        else:
            log.warning("no small-β baseline checkpoint at %s; the comparison leaves it out", path)
    return variants


def reference_runs(cfg: dict) -> dict[str, Path]:
    """Extra stage-1 VAEs to compare (``evaluate.reference_runs``: name → checkpoint), those that exist."""
    runs = {name: expand_path(path) for name, path in (cfg["evaluate"].get("reference_runs") or {}).items()}
    missing = [name for name, path in runs.items() if not path.exists()]
    for name in missing:
        log.warning("reference run %r not found at %s; left out", name, runs.pop(name))
    return runs


def reuse_encoding(encoded: EncodedSkull, completer: SkullCompleter, own_encoder: bool) -> EncodedSkull:
    """The same mapped input for another completer: fresh decode cache, re-encoded when the encoder differs."""
    mu, logvar = encoded.mu, encoded.logvar
    if own_encoder:
        with torch.inference_mode():
            mu, logvar = completer.model.encode(torch.from_numpy(encoded.model_input)[None, None].to(completer.device))
        mu, logvar = mu.float().cpu(), logvar.float().cpu()
    return dataclasses.replace(encoded, mu=mu, logvar=logvar, decode_cache=OrderedDict(),
                               class_probabilities=completer.class_probabilities(mu[0].numpy()))


# ----------------------------------------------------------------------------- test-split evaluation

def evaluate_cases(variants: list[Variant], test: VolumeSet, gammas: list[float], per_type: int | None,
                   cache: Path | None = None) -> list[dict[str, Any]]:
    """Full-resolution metrics: the γ sweep for the primary variant (with the share of the true defect its decode
    fills, on the model grid), each variant at its chosen γ with the true class, and the primary variant with the
    class it detects itself ("auto", what a user gets)."""
    rows = []
    primary = variants[0]
    bundle = primary.completer.bundle
    for index in tqdm(pick_cases(test.classes, per_type), desc="test cases"):
        case = full_resolution_case(test.entries[index])
        kind, case_id = case_class(bundle, test, index), test.case_ids[index]
        if not np.any(case["implant"]):
            continue
        model_defect = entry_volume(test.entries[index], cache, "implant")
        spacing = np.linalg.norm(np.asarray(case["ijk_to_ras"])[:3, :3], axis=0)
        tick = time.perf_counter()
        encoded = primary.completer.encode(case["defective"], case["ijk_to_ras"], name=case_id)
        encode_s = time.perf_counter() - tick
        region = test.entries[index]["case"].get("subtype", kind)
        asked_class = completable(bundle, kind)
        runs = [(primary, g, "sweep", asked_class) for g in gammas]
        runs += [(v, v.gamma.get(kind, 1.0), "variant", asked_class) for v in variants]
        runs.append((primary, None, "auto", "auto"))
        for variant, gamma, role, asked in runs:
            enc = encoded if variant.completer is primary.completer else reuse_encoding(
                encoded, variant.completer, variant.own_encoder)
            tick = time.perf_counter()
            try:
                result = variant.completer.complete(enc, gamma=gamma, defect_type=asked, method=variant.method,
                                                    extraction=variant.extraction)
            except InputError as error:  # e.g. the mirror method on a defect across the midline
                result = empty_result(case["defective"], kind, gamma or 0.0, variant, str(error))
            seconds = time.perf_counter() - tick
            scores = implant_metrics(result.implant, case["implant"], case["defective"], spacing)
            fills = dict(NO_FILL)
            if role != "variant" and variant.method != "mirror" and result.defect_type in bundle.defect_classes:
                decoded = variant.completer.expected_skull(enc, result.gamma, result.defect_type, variant.method)
                fills = decode_fills(decoded, model_defect, enc.model_input)
            rows.append({"case_id": case_id, "type": kind, "label": test.labels[index], "region": region,
                         "variant": variant.name, "role": role, "gamma": result.gamma, "used_class": result.defect_type,
                         "method": variant.method, "extraction": result.extraction, **scores,
                         "implant_ml": result.implant_volume_ml, **fills,
                         "detected": enc.detected_type, "seconds": round(seconds + encode_s, 2),
                         "message": result.message})
        if test.labels[index] != "facial":  # the rim stage is for the vault (facial defects use the decode)
            rows += ceiling_rows(bundle, encoded, case, spacing, {
                "case_id": case_id, "type": kind, "label": test.labels[index], "region": region})
    return rows


def ceiling_rows(bundle: ModelBundle, encoded: EncodedSkull, case: dict[str, np.ndarray], spacing: np.ndarray,
                 identity: dict[str, Any]) -> list[dict[str, Any]]:
    """The engine's extractions with the true complete skull (input ∪ true implant, on the model grid) as the
    expected skull: how much of what is lost comes from the decoder, and how much from the extraction itself."""
    complete = (np.asarray(case["defective"]) > 0) | (np.asarray(case["implant"]) > 0)
    expected = to_model_grid(complete, encoded.mapping)
    rows = []
    for suffix, (extraction, rim_overrides) in CEILINGS.items():
        options = {**bundle.completion_options,
                   "rim": {**(bundle.completion_options.get("rim") or {}), **rim_overrides}}
        tick = time.perf_counter()
        # The engine's own stages (the rim's healthy-side checks about the skull's mid-sagittal plane included).
        implant, message, _, _ = extract_implant(encoded, expected, extraction, options, defect_type=identity["type"])
        seconds = time.perf_counter() - tick
        scores = implant_metrics(implant, case["implant"], case["defective"], spacing)
        volume_ml = float(implant.sum()) * float(np.prod(spacing)) / 1000.0
        rows.append({**identity, "variant": f"{CEILING}: {suffix}", "role": "variant", "gamma": NO_GAMMA,
                     "used_class": identity["type"], "method": "truth", "extraction": extraction, **scores,
                     "implant_ml": volume_ml, **NO_FILL, "detected": encoded.detected_type,
                     "seconds": round(seconds, 2), "message": message})
    return rows


def empty_result(defective: np.ndarray, kind: str, gamma: float, variant: Variant, message: str) -> CompletionResult:
    """What a refused completion counts as in the tables: an empty implant (DSC 0), with the reason."""
    empty = np.zeros(defective.shape, np.uint8)
    return CompletionResult(defective=defective, implant=empty, defect_type=kind,
                            detected_type=kind, confidence=0.0, gamma=gamma, method=variant.method,
                            extraction=variant.extraction or "rim", message=message)


def template_mirror_check(completer: SkullCompleter, radius_mm: float = 25.0) -> dict[str, Any] | None:
    """The undeformed sample skull (the repaired Cranium template) with a unilateral synthetic parietal defect:
    the mirror method against the model, both through the rim-conforming stage, and the mirror's decode extraction."""
    from SkullVAECompletionLib.imageio.volumes import read_mask
    from training.template import template_paths

    path = template_paths()["complete"]
    if not path.exists():
        log.warning("template %s not found; no mirror check on the sample skull", path)
        return None
    complete, matrix, _ = read_mask(path)
    complete = np.asarray(complete) > 0
    ras = np.argwhere(complete) @ matrix[:3, :3].T + matrix[:3, 3]
    centre = 0.5 * (ras.min(axis=0) + ras.max(axis=0))
    direction = np.array([-0.8, -0.2, 0.55])  # patient's right (the template's original side), parietal
    direction /= np.linalg.norm(direction)
    along = (ras - centre) @ direction
    near_ray = np.linalg.norm((ras - centre) - along[:, None] * direction, axis=1) < 3.0
    surface = ras[near_ray][np.argmax(along[near_ray])]
    index = np.indices(complete.shape).reshape(3, -1).T @ matrix[:3, :3].T + matrix[:3, 3]
    ball = (np.linalg.norm(index - surface, axis=1) <= radius_mm).reshape(complete.shape)
    defective, truth = complete & ~ball, complete & ball
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    encoded = completer.encode(defective, matrix, name="template with a synthetic defect")
    out: dict[str, Any] = {"defect": f"ball of {radius_mm:g} mm on the right parietal outer surface",
                           "truth_ml": round(float(truth.sum() * np.prod(spacing) / 1000), 2)}
    for label, method, extraction in (("mirror, rim", "mirror", "rim"), ("mirror, decode extraction", "mirror",
                                      "decode"), ("model, rim", None, "rim")):
        result = completer.complete(encoded, method=method, extraction=extraction)
        out[label] = {k: round(float(v), 4) for k, v in implant_metrics(result.implant, truth, defective,
                                                                         spacing).items()}
    out["detected"] = encoded.detected_type
    return out


def natural_openings_check(completer: SkullCompleter, test: VolumeSet) -> list[dict[str, Any]]:
    """Complete (defect-free) test skulls completed with the class the model detects (a defect class: a complete
    skull is completed as its most likely defect class): every implant voxel here fills a natural opening."""
    rows = []
    for index in [i for i, label in enumerate(test.labels) if label == "complete"]:
        case = full_resolution_case(test.entries[index])
        encoded = completer.encode(case["defective"], case["ijk_to_ras"], name=test.case_ids[index])
        for extraction in EXTRACTION_CHOICES:
            result = completer.complete(encoded, extraction=extraction)
            rows.append({"case_id": test.case_ids[index], "extraction": extraction, "used_class": result.defect_type,
                         "detected": result.detected_type,
                         "implant_ml": round(result.implant_volume_ml, 2), "message": result.message})
    return rows


RESOLUTION_CHECK_MM = 0.48  # the resolution check's spacing (``evaluate.resolution_check_mm``; null: no check)


def resolution_check(completer: SkullCompleter, test: VolumeSet, spacing_mm: float = RESOLUTION_CHECK_MM
                     ) -> dict[str, Any] | None:
    """One cranial test case at its own resolution and resampled to ``spacing_mm``: the same implant DSC?"""
    index = next((i for i, label in enumerate(test.labels) if label == "cranial"), None)
    if index is None:
        return None
    kind = completable(completer.bundle, case_class(completer.bundle, test, index))
    case = full_resolution_case(test.entries[index])
    matrix = np.asarray(case["ijk_to_ras"], float)
    factors = np.linalg.norm(matrix[:3, :3], axis=0) / spacing_mm
    fine = {name: np.asfortranarray(ndimage.zoom(np.asarray(case[name], np.float32), factors, order=1) > 0.5)
            for name in ("defective", "implant")}
    # zoom maps the first and last voxel centres onto each other: the new spacing follows from the sizes.
    scale = (np.asarray(case["defective"].shape) - 1) / (np.asarray(fine["defective"].shape) - 1)
    fine_matrix = matrix.copy()
    fine_matrix[:3, :3] = matrix[:3, :3] * scale
    out = {"case_id": test.case_ids[index]}
    for label, defective, truth, ijk_to_ras in (("original", case["defective"], case["implant"], matrix),
                                                ("resampled", fine["defective"], fine["implant"], fine_matrix)):
        tick = time.perf_counter()
        result = completer.run(defective, ijk_to_ras, defect_type=kind)
        spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
        scores = implant_metrics(result.implant, truth, defective, spacing)
        out[label] = {"shape": list(defective.shape), "spacing_mm": [round(float(v), 3) for v in spacing],
                      **{k: round(float(v), 4) for k, v in scores.items()},
                      "seconds": round(time.perf_counter() - tick, 2)}
    out["dsc_difference"] = round(abs(out["original"]["dsc"] - out["resampled"]["dsc"]), 4)
    return out


def confusion_summary(truth: list[str], predicted: list[str], names: list[str], by: str,
                      confidence: list[float] | None = None) -> dict[str, Any]:
    """Accuracy, per-class accuracy and the confusion matrix (rows: true class) of a detection."""
    confusion = {t: {p: int(sum(1 for a, b in zip(truth, predicted, strict=True) if a == t and b == p))
                     for p in names} for t in names}
    correct = [a == b for a, b in zip(truth, predicted, strict=True)]
    per_class = {t: float(np.mean([c for c, a in zip(correct, truth, strict=True) if a == t]))
                 for t in names if t in truth}
    summary = {"accuracy": float(np.mean(correct)), "per_class": per_class, "confusion": confusion,
               "n": len(correct), "by": by}
    if confidence is not None:
        summary["mean_confidence"] = float(np.mean(confidence))
    return summary


def detection_accuracy(completer: SkullCompleter, test: VolumeSet) -> dict[str, Any]:
    """The class the model's class head (or, without one, the nearest centroid) gives every test volume from its μ
    (complete skulls included)."""
    latents, _ = encode_set(completer.model.cpu(), test.volumes)
    completer.model.to(completer.device)
    truth = [case_class(completer.bundle, test, i) for i in range(len(test))]
    probabilities = [completer.class_probabilities(latent) for latent in latents]
    predicted = [max(p, key=p.get) for p in probabilities]
    by = "class head on μ" if completer.model.classifier is not None else "nearest centroid of μ"
    return confusion_summary(truth, predicted, list(completer.bundle.class_names), by,
                             [p[b] for p, b in zip(probabilities, predicted, strict=True)])


def located_detection(rows: list[dict[str, Any]], openings: list[dict[str, Any]], names: list[str]
                      ) -> dict[str, Any]:
    """The detection a user gets with "auto": the class head proposes, the position of the defect the rim stage
    finds decides (detection.py). Defective test cases from their "auto" completion, complete skulls from theirs."""
    pairs = [(r["type"], r["detected"]) for r in rows if r["role"] == "auto"]
    pairs += [(regions.COMPLETE, r["detected"]) for r in openings if r["extraction"] == "rim"]
    return confusion_summary([t for t, _ in pairs], [p for _, p in pairs], names,
                             "class head, then the position of the defect the rim stage finds")


def figure_confusion(detection: dict[str, Any], out: Path) -> Path:
    """The detection's confusion matrix (rows: true class, columns: detected)."""
    plt = _plt()
    names = list(detection["confusion"])
    matrix = np.array([[detection["confusion"][t][p] for p in names] for t in names])
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(names), 0.8 + 0.65 * len(names)))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=9,
                    color="white" if value > matrix.max() / 2 else "black")
    short = [n.replace("parietotemporal", "PT").replace("_left", " L").replace("_right", " R") for n in names]
    ax.set_xticks(range(len(names)), short, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), short, fontsize=8)
    ax.set(xlabel="detected", ylabel="true", title=f"Detection on the test split: accuracy {detection['accuracy']:.2f}")
    return _save(plt, fig, out / "detection_confusion.png")


def figure_shift(rows: list[dict[str, Any]], out: Path) -> Path:
    """Per class: the share of the true defect the decode fills, and the implant's volume, against γ."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    sweep = [r for r in rows if r["role"] == "sweep"]
    for kind in sorted({r["type"] for r in sweep}):
        gammas = sorted({r["gamma"] for r in sweep if r["type"] == kind})
        for ax, key in zip(axes, ("defect_area_fill", "defect_fill", "implant_ml"), strict=True):
            means = [np.nanmean([r[key] for r in sweep if r["type"] == kind and r["gamma"] == g]) for g in gammas]
            ax.plot(gammas, means, marker="o", label=kind)
    for ax in axes[:2]:
        ax.axhline(0.3, color="grey", ls=":", lw=1)
        ax.axhline(0.8, color="grey", ls=":", lw=1)
        ax.set(xlabel="γ", ylim=(0, 1.02))
    axes[0].set_title("share of the defect's area the decode closes")
    axes[1].set_title("share of the defect's voxels the decode fills")
    axes[2].set(title="implant volume (ml, rim stage)", xlabel="γ")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(plt, fig, out / "shift_vs_gamma.png")


def summarise(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Mean ± sd of each metric per group (HD95 over finite values; 'empty' counts empty implants)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        entry = dict(zip(keys, key, strict=True))
        entry["n"] = len(members)
        for metric in METRICS:
            values = np.array([m[metric] for m in members], float)
            finite = values[np.isfinite(values)]
            entry[metric] = float(finite.mean()) if finite.size else float("nan")
            entry[f"{metric}_sd"] = float(finite.std()) if finite.size else float("nan")
        entry["empty"] = int(sum(1 for m in members if not np.isfinite(m["hd95"])))
        for extra in ("defect_fill", "defect_area_fill", "implant_ml"):
            values = np.array([m.get(extra, np.nan) for m in members], float)
            entry[extra] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out, write (90 dpi) and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def read_log(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, newline="") as stream:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(stream)]


def figure_losses(cfg: dict, out: Path) -> Path:
    """Training curves: Dice loss and KLD of the large-β VAE, the decoupled decoder and the small-β VAE."""
    plt = _plt()
    curves = {f"VAE β = {cfg['stage1']['beta']:g} (stage 1)": read_log(stage_dir(cfg, "stage1") / LOG_NAME),
              "decoupled decoder (stage 2)": read_log(stage_dir(cfg, "stage2") / LOG_NAME)}
    if cfg["evaluate"].get("baseline_config"):
        curves["VAE β = 1e-4 (baseline)"] = read_log(stage_dir(load_config(cfg["evaluate"]["baseline_config"]),
                                                               "baseline") / LOG_NAME)
    for name, checkpoint in reference_runs(cfg).items():
        curves[name] = read_log(checkpoint.parent / LOG_NAME)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for name, rows in curves.items():
        if not rows:
            continue
        epochs = [r["epoch"] for r in rows]
        line = axes[0].plot(epochs, [r["train_dice_loss"] for r in rows], label=f"{name} train")[0]
        axes[0].plot(epochs, [r.get("val_dice_loss", np.nan) for r in rows], "--", color=line.get_color(),
                     label=f"{name} val")
        axes[1].plot(epochs, [r.get("val_dice", np.nan) for r in rows], color=line.get_color(), label=name)
        if "decoder" not in name:
            axes[2].semilogy(epochs, [max(r["train_kld"], 1e-6) for r in rows], color=line.get_color(), label=name)
    axes[0].set(title="Dice loss (soft, 2 classes)", xlabel="epoch")
    axes[1].set(title="validation Dice of the bone (argmax, μ decoded)", xlabel="epoch")
    axes[2].set(title="KL divergence (train, per volume)", xlabel="epoch")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(plt, fig, out / "loss_curves.png")


def figure_latents(models: dict[str, torch.nn.Module], train: VolumeSet, out: Path) -> Path:
    """2-D PCA of the training latents per class with centroids and DEV arrows, one panel per model."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.8), squeeze=False)
    palette = plt.get_cmap("tab10")
    names = [n for n in (*regions.CLASS_NAMES, "cranial") if n in (train.classes or train.labels)]
    colours = {n: palette(i) for i, n in enumerate(names)}
    labels = np.asarray(train.classes or train.labels)
    for ax, (name, model) in zip(axes[0], models.items(), strict=True):
        latents, logvar = encode_set(model, train.volumes)
        centre = latents.mean(0)
        _, singular, vt = np.linalg.svd(latents - centre, full_matrices=False)
        explained = singular**2 / np.sum(singular**2)
        axes_2d = vt[:2].T
        points = (latents - centre) @ axes_2d
        for kind, colour in colours.items():
            chosen = labels == kind
            ax.scatter(points[chosen, 0], points[chosen, 1], s=9, alpha=0.5, color=colour, label=kind)
        stats = latent_statistics(latents, list(labels))
        cents = {k: (v - centre) @ axes_2d for k, v in stats["centroids"].items()}
        for kind, c in cents.items():
            ax.scatter(*c, s=140, marker="X", color=colours[kind], edgecolor="black", zorder=5)
        for kind in cents:
            if kind != regions.COMPLETE:
                start, end = cents[kind], cents["complete"]
                ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "lw": 2, "color": colours[kind]})
        sigma = float(np.exp(0.5 * logvar).mean())
        ax.set_title(f"{name}\nPC1/PC2 explain {explained[0]:.0%}/{explained[1]:.0%}; mean σ {sigma:.2f}; "
                     f"μ sd {latents.std(0).mean():.3f}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Training latents (μ), class centroids (X) and DEV arrows (defective → complete)")
    return _save(plt, fig, out / "latent_pca.png")


def depth_view(volume: np.ndarray, highlight: np.ndarray, axis: int, from_high: bool) -> np.ndarray:
    """Pseudo-3D view of a RAS-ordered mask: nearest bone shaded by depth, highlighted voxels in red."""
    from training.generate import depth_render

    rgb = np.transpose(depth_render(volume, highlight, axis=axis, from_high=from_high), (1, 0, 2))[::-1]
    # As a viewer standing there sees it: from the front the patient's right is on the left; from the left side
    # the face is on the left. (The top view, anterior up, already has the patient's right on the right.)
    return rgb[:, ::-1] if axis in (0, 1) else rgb


def figure_gamma_sweep(bundle: ModelBundle, test: VolumeSet, gammas: list[float], out: Path) -> Path | None:
    """Decoded skull (model grid) of one cranial and one facial test case for each γ; new bone in red."""
    plt = _plt()
    picks = [(k, pick_cases(test.labels, 1, (k,))) for k in ("cranial", "facial")]
    picks = [(k, p[0]) for k, p in picks if p]
    picks += [(k, p[0]) for k, p in ((k, pick_cases(test.classes, 1, (k,))) for k in ("parietotemporal_right",
                                                                                      "frontoorbital")) if p]
    if not picks:
        return None
    fig, axes = plt.subplots(len(picks), len(gammas) + 1, figsize=(2.1 * (len(gammas) + 1), 2.3 * len(picks)),
                             squeeze=False)
    model = bundle.model.eval()
    for row, (kind, index) in enumerate(picks):
        x = test.volumes[index : index + 1].float()
        bone = x[0, 0].numpy() >= 0.5
        view = (1, True) if kind in ("facial", "frontoorbital") else (0, True)  # frontal / lateral from the right
        axes[row, 0].imshow(depth_view(bone, np.zeros_like(bone), *view))
        used = case_class(bundle, test, index)
        axes[row, 0].set_title(f"input ({used})\n{test.case_ids[index]}", fontsize=7)
        with torch.no_grad():
            mu, _ = model.encode(x)
            for col, gamma in enumerate(gammas, start=1):
                direction = bundle.dev.get(used, np.zeros(bundle.model.config.latent_size, np.float32))
                z = mu + gamma * torch.from_numpy(direction)[None]
                probability = bone_probability(model.decode(z))[0].numpy()
                # Red: the engine's implant region (new bone away from the input), not every misregistered voxel.
                region = decoded_implant_region(probability, x[0, 0].numpy(), bundle.grid.spacing_mm)
                axes[row, col].imshow(depth_view(probability > 0.5, region, *view))
                axes[row, col].set_title(f"γ = {gamma:g}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("γ sweep: decode(μ + γ·DEV) on the model grid (red: the engine's implant region)", fontsize=9)
    return _save(plt, fig, out / "gamma_sweep.png")


def figure_metrics_vs_gamma(sweep: list[dict[str, Any]], out: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for kind in sorted({r["type"] for r in sweep}):
        rows = sorted([r for r in sweep if r["type"] == kind], key=lambda r: r["gamma"])
        for ax, metric in zip(axes, METRICS, strict=True):
            ax.errorbar([r["gamma"] for r in rows], [r[metric] for r in rows], [r[f"{metric}_sd"] for r in rows],
                        marker="o", capsize=3, label=kind)
    for ax, title in zip(axes, ("implant DSC", "implant bDSC (10 mm)", "HD95 (mm)"), strict=True):
        ax.set(title=title, xlabel="γ")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(plt, fig, out / "metrics_vs_gamma.png")


def _ras_ordered(mask: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Flip index axes so index order follows R, A, S (axis-aligned volumes)."""
    out = np.asarray(mask)
    for axis in range(3):
        if ijk_to_ras[axis, axis] < 0:
            out = np.flip(out, axis)
    return out


def evaluate_real_skull(bundle: ModelBundle, path: Path, out: Path, device: str) -> dict[str, Any] | None:
    """Complete the real Cranium skull with the bundle's defaults; compare with the mirrored reference implant."""
    if not path or not Path(path).exists():
        log.warning("real skull %s not found; skipping", path)
        return None
    from SkullVAECompletionLib.imageio.renders import write_render_png
    from SkullVAECompletionLib.imageio.volumes import read_mask
    from training.template import template_paths

    plt = _plt()
    mask, matrix, _ = read_mask(path)
    mask = (np.asarray(mask) > 0).astype(np.uint8)
    completer = SkullCompleter(bundle, device=device)
    encoded = completer.encode(mask, matrix, name=str(path))
    result = completer.complete(encoded)
    decoded = completer.complete(encoded, extraction="decode")
    mirrored = completer.complete(encoded, method="mirror")
    info: dict[str, Any] = {"file": str(path), "defect_type": result.defect_type, "detected": result.detected_type,
                            "confidence": round(result.confidence, 3), "gamma": result.gamma, "method": result.method,
                            "extraction": result.extraction, "implant_ml": round(result.implant_volume_ml, 2),
                            "decode_extraction_implant_ml": round(decoded.implant_volume_ml, 2),
                            "seconds": round(sum(result.timings.values()) - result.timings.get("total", 0.0), 2)}
    reference_path = template_paths()["implant"]
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    reference = None
    if reference_path.exists():
        reference, ref_matrix, _ = read_mask(reference_path)
        reference = np.asarray(reference) > 0
        if reference.shape == mask.shape and np.allclose(ref_matrix, matrix, atol=1e-3):
            for prefix, implant in (("symmetric_reference", result.implant),
                                    ("decode_extraction_symmetric_reference", decoded.implant),
                                    ("mirror_method_symmetric_reference", mirrored.implant)):
                scores = implant_metrics(implant, reference, mask, spacing)
                info.update({f"{prefix}_{k}": round(v, 4) for k, v in scores.items()})
            info["reference_ml"] = round(float(reference.sum() * np.prod(spacing) / 1000), 2)
        else:
            log.warning("the mirrored reference implant is on another grid than %s; no symmetric Dice", path)
            reference = None
    rows = [("model + rim fit (default)", result.implant), ("model, decode extraction (the paper's way)",
                                                             decoded.implant),
            ("mirror method + rim fit", mirrored.implant)]
    if reference is not None:
        rows.append(("mirrored healthy side (reference)", reference.astype(np.uint8)))
    skull = _ras_ordered(mask, matrix)
    views = [("frontal (from anterior)", 1, True), ("lateral (from the left)", 0, False),
             ("top (from superior)", 2, True)]
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 4.2 * len(rows)), squeeze=False)
    for row, (label, implant_mask) in zip(axes, rows, strict=True):
        implant = _ras_ordered(implant_mask, matrix).astype(bool)
        for ax, (title, axis, high) in zip(row, views, strict=True):
            ax.imshow(depth_view(skull | implant, implant, axis, high), aspect="auto")
            ax.set_title(f"{label}: {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    reference_text = (f"; symmetric-reference DSC {info['symmetric_reference_dsc']:.3f}"
                      if "symmetric_reference_dsc" in info else "")
    fig.suptitle(f"Real patient skull (Cranium, invesalius-examples): implant {info['implant_ml']:.1f} ml "
                 f"({result.defect_type}, γ = {result.gamma:g}, {result.method}){reference_text}", fontsize=9)
    fig.tight_layout()
    figure = out / "real_skull_completion.png"
    fig.savefig(figure, dpi=90)
    plt.close(fig)
    # A 3D view of skull and implant, with the engine's own offscreen renderer.
    render = write_render_png(out / "real_skull_render.png", mask.astype(bool), result.implant, matrix,
                              overwrite=True)
    info["render"] = render.name
    info["figure"] = figure.name
    return info


# ----------------------------------------------------------------------------- report

def _fmt(entry: dict[str, Any]) -> str:
    return " | ".join(f"{entry[m]:.3f} ± {entry[f'{m}_sd']:.3f}" if m != "hd95" else
                      f"{entry[m]:.1f} ± {entry[f'{m}_sd']:.1f}" for m in METRICS)


def write_report(out: Path, results: dict[str, Any]) -> Path:
    """Markdown summary of results.json with the figures."""
    lines = [f"# Evaluation of `{results['model_id']}` {results['version']}", "",
             f"Generated by `python -m training.evaluate` on {results['date']} (config `{results['config']}`).", "",
             "Data: " + results["data"], "",
             f"Test split: {results['n_test_cases']} defective cases ({results['cases_per_type']}), measured at each "
             "case's own resolution through `SkullCompleter` with the true defect type. γ and the method were "
             "chosen on the validation split (model grid), never on the test split. Mean ± sd; HD95 over cases with "
             "a non-empty implant ('empty' counts empty predictions). Implants are cut from the decode by the "
             "rim-conforming stage (`rim.py`) unless the variant says 'decode extraction' (decoded minus input "
             "bone, `implant.py`, the paper's way); facial defects always use the decode extraction.", ""]
    lines += ["## Per defect region (each variant at its validation-chosen γ)", "",
              "| model / method | region | n | DSC | bDSC | HD95 (mm) | empty |", "|---|---|---|---|---|---|---|"]
    primary = results["primary_variant"]
    for e in sorted(results["regions"], key=lambda e: (e["variant"], e["region"])):
        if e["variant"].startswith((primary, "mirrored healthy side", CEILING)):
            lines.append(f"| {e['variant']} | {e['region']} | {e['n']} | {_fmt(e)} | {e['empty']} |")
    lines += ["", "## Cranial and facial (each variant at its validation-chosen γ, true class)", "",
              "| model / method | defects | n | DSC | bDSC | HD95 (mm) | empty |", "|---|---|---|---|---|---|---|"]
    for e in sorted(results.get("labels", []), key=lambda e: (e["variant"], e["label"])):
        lines.append(f"| {e['variant']} | {e['label']} | {e['n']} | {_fmt(e)} | {e['empty']} |")
    lines += ["", "## With the class the model detects itself (what a user gets with `auto`)", "",
              "| defects | true class | n | DSC | bDSC | HD95 (mm) | empty | decode closes (area) | fills (voxels) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(results.get("auto", []), key=lambda e: (e["label"], e.get("type", ""))):
        lines.append(f"| {e['label']} | {e.get('type', '**all**')} | {e['n']} | {_fmt(e)} | {e['empty']} | "
                     f"{e['defect_area_fill']:.2f} | {e['defect_fill']:.2f} |")
    defaults = results.get("default_gamma", {})
    lines += ["", f"## γ sweep ({primary}, true class)", "",
              "The latent shift at work, on the model grid: *closes (area)* is the share of the true defect's area "
              "(4° directions seen from the cranial centre) in which decode(μ + γ·DEV) has bone at the defect's "
              "depth (± one 3.2 mm voxel); *fills (voxels)* is the strict voxel overlap (a decoded shell one voxel "
              "off counts as missing). At γ = 0 the decode should reproduce the hole (≤ 0.30), at the default γ "
              f"close it (≥ 0.80). Default γ per class: {json.dumps(defaults)}.", "",
              "| class | γ | n | closes (area) | fills (voxels) | implant (ml) | DSC | bDSC | HD95 (mm) | empty |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(results["sweep"], key=lambda e: (e["type"], e["gamma"])):
        mark = " (default)" if abs(defaults.get(e["type"], -1) - e["gamma"]) < 1e-9 else ""
        lines.append(f"| {e['type']} | {e['gamma']:g}{mark} | {e['n']} | {e['defect_area_fill']:.2f} | "
                     f"{e['defect_fill']:.2f} | {e['implant_ml']:.1f} | {_fmt(e)} | {e['empty']} |")
    lines += ["", "## Models and completion methods (each at its validation-chosen γ)", "",
              "| model / method | type | γ | n | DSC | bDSC | HD95 (mm) | empty |", "|---|---|---|---|---|---|---|---|"]
    for e in sorted(results["variants"], key=lambda e: (e["variant"], e["type"])):
        gamma = "–" if np.isnan(e["gamma"]) else f"{e['gamma']:g}"
        lines.append(f"| {e['variant']} | {e['type']} | {gamma} | {e['n']} | {_fmt(e)} | {e['empty']} |")
    det = results["detection"]
    lines += ["", f"## Defect-class detection ({det.get('by', 'nearest centroid of μ')}, all test volumes)", "",
              f"Accuracy {det['accuracy']:.3f} (n = {det['n']}); per class: "
              + ", ".join(f"{k} {v:.2f}" for k, v in det["per_class"].items()), "",
              "| true \\ predicted | " + " | ".join(det["confusion"]) + " |",
              "|---" * (len(det["confusion"]) + 1) + "|"]
    for t, row in det["confusion"].items():
        lines.append(f"| {t} | " + " | ".join(str(v) for v in row.values()) + " |")
    if results.get("detection_class_head"):
        d = results["detection_class_head"]
        lines += ["", f"The class head alone ({d['by']}, before the rim stage places the defect): accuracy "
                      f"{d['accuracy']:.3f} (n = {d['n']}, mean confidence {d.get('mean_confidence', 0):.2f}); per "
                      "class: " + ", ".join(f"{k} {v:.2f}" for k, v in d["per_class"].items()) + "."]
    if results.get("detection_small_beta"):
        d = results["detection_small_beta"]
        lines += ["", f"Small-β VAE's latents: accuracy {d['accuracy']:.3f}."]
    lines += ["", "## Default completion method", "", results["method_note"], ""]
    openings = results.get("natural_openings") or []
    if openings:
        lines += ["## Complete test skulls (natural openings must stay open)", "",
                  "Defect-free test skulls completed with the defaults (a skull detected as complete is completed as "
                  "its most likely defect class): any implant fills a natural opening or the field of view's edge.",
                  "", "| skull | detected | completed as | extraction | implant (ml) | message |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['case_id']} | {r.get('detected', '')} | {r.get('used_class', '')} | {r['extraction']} | "
                  f"{r['implant_ml']} | {r['message']} |" for r in openings]
        lines.append("")
    template = results.get("template_mirror_check")
    if template:
        lines += ["## Mirror method on the undeformed sample skull", "",
                  f"The repaired Cranium template with a synthetic unilateral defect ({template['defect']}, "
                  f"{template['truth_ml']} ml):", "", "| method | DSC | bDSC | HD95 (mm) |", "|---|---|---|---|"]
        for label in ("mirror, rim", "mirror, decode extraction", "model, rim"):
            m = template[label]
            lines.append(f"| {label} | {m['dsc']:.3f} | {m['bdsc']:.3f} | {m['hd95']:.2f} |")
        lines.append("")
    check = results.get("resolution_check")
    if check:
        lines += ["## Resolution check", "",
                  f"Test case {check['case_id']} at its own resolution and resampled (trilinear, threshold 0.5):", "",
                  "| version | shape | spacing (mm) | DSC | bDSC | HD95 (mm) | seconds |",
                  "|---|---|---|---|---|---|---|"]
        for label in ("original", "resampled"):
            c = check[label]
            lines.append(f"| {label} | {c['shape']} | {c['spacing_mm']} | {c['dsc']:.3f} | {c['bdsc']:.3f} | "
                         f"{c['hd95']:.2f} | {c['seconds']} |")
        lines += ["", f"DSC difference {check['dsc_difference']:.3f}.", ""]
    real = results.get("real_skull")
    if real:
        lines += ["## The real patient skull (Cranium)", "",
                  "The real CT's skull (`Resources/SampleData/CraniumSkull.nrrd`) completed by the bundled model with "
                  f"its defaults: {real['defect_type']} (detected {real['detected']}, "
                  f"confidence {real['confidence']}), "
                  f"γ = {real['gamma']}, method {real['method']}; implant {real['implant_ml']} ml in "
                  f"{real['seconds']} s."]
        if "symmetric_reference_dsc" in real:
            lines += ["", f"Against the mirrored healthy side (reference implant {real['reference_ml']} ml, "
                      "`training/template.py`): "
                      f"DSC {real['symmetric_reference_dsc']:.3f}, bDSC {real['symmetric_reference_bdsc']:.3f}, "
                      f"HD95 {real['symmetric_reference_hd95']:.1f} mm (decode extraction: DSC "
                      f"{real['decode_extraction_symmetric_reference_dsc']:.3f}, "
                      f"HD95 {real['decode_extraction_symmetric_reference_hd95']:.1f} mm, "
                      f"{real['decode_extraction_implant_ml']} ml; mirror method: DSC "
                      f"{real['mirror_method_symmetric_reference_dsc']:.3f}, "
                      f"HD95 {real['mirror_method_symmetric_reference_hd95']:.1f} mm)."]
        lines += ["", "**Caveat:** this skull is not an unseen test case: its mirror-repaired version is the template "
                  "the whole training population was generated from.", "", f"![real skull]({real['figure']})", ""]
        if real.get("render"):
            lines += [f"![real skull, 3D render of skull and implant]({real['render']})", ""]
    lines += ["## Figures", ""] + [f"![{name}]({name})" for name in results["figures"]] + [""]
    path = out / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def evaluate(cfg: dict, bundle_dir: Path | None = None, out: Path | None = None, config_path: str = "") -> dict:
    torch.set_num_threads(int(cfg.get("threads", 0)) or torch.get_num_threads())
    ev = cfg["evaluate"]
    out = out or expand_path(ev.get("results_dir", "training/results"))
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(bundle_dir or expand_path(cfg["aggregate"]["bundle_dir"]))
    device = cfg.get("device", "auto")
    data = load_volumes(cfg, ("train", "val", "test"))
    gammas = [float(g) for g in ev.get("gammas", [0.0, 0.5, 1.0, 1.5])]
    variants = build_variants(cfg, bundle, data, device)
    cache = expand_path(cfg["data"]["cache"]) if cfg["data"].get("cache") else None
    rows = evaluate_cases(variants, data["test"], gammas, ev.get("test_cases_per_type"), cache)
    with open(out / "cases.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    sweep = summarise([r for r in rows if r["role"] == "sweep"], ("type", "gamma"))
    variant_summary = summarise([r for r in rows if r["role"] == "variant"], ("variant", "type", "gamma"))
    region_summary = summarise([r for r in rows if r["role"] == "variant"], ("variant", "region"))
    label_summary = summarise([r for r in rows if r["role"] == "variant"], ("variant", "label"))
    auto_summary = summarise([r for r in rows if r["role"] == "auto"], ("label", "type"))
    auto_summary += summarise([r for r in rows if r["role"] == "auto"], ("label",))
    openings = natural_openings_check(variants[0].completer, data["test"])
    head_detection = detection_accuracy(variants[0].completer, data["test"])
    detection = located_detection(rows, openings, list(bundle.class_names))
    figures = [figure_losses(cfg, out).name, figure_metrics_vs_gamma(sweep, out).name, figure_shift(rows, out).name,
               figure_confusion(detection, out).name]
    models: dict[str, torch.nn.Module] = {f"bundled encoder (stage 1, β = {cfg['stage1']['beta']:g})": bundle.model}
    for variant in variants:
        if variant.own_encoder:
            models[variant.name] = variant.completer.model.cpu()
    small = next((v for v in variants if v.name.startswith("small-β")), None)
    figures.append(figure_latents(models, data["train"], out).name)
    sweep_figure = figure_gamma_sweep(bundle, data["test"], gammas, out)
    if sweep_figure:
        figures.append(sweep_figure.name)
    method = bundle.completion_options.get("method", "dev")
    selection = bundle.manifest["training"].get("selection_on_validation", {})
    results = {
        "model_id": bundle.model_id, "version": bundle.version, "config": config_path,
        "date": time.strftime("%Y-%m-%d %H:%M"), "data": bundle.manifest["training"].get("provenance", ""),
        "n_test_cases": len({r["case_id"] for r in rows}),
        "cases_per_type": ", ".join(f"{k} {len({r['case_id'] for r in rows if r['type'] == k})}"
                                    for k in sorted({r["type"] for r in rows})),
        "sweep": sweep, "variants": variant_summary, "regions": region_summary, "labels": label_summary,
        "auto": auto_summary, "default_gamma": bundle.default_gamma,
        "primary_variant": variants[0].name,
        "natural_openings": openings,
        "resolution_check": (resolution_check(variants[0].completer, data["test"], float(ev["resolution_check_mm"]))
                             if ev.get("resolution_check_mm", RESOLUTION_CHECK_MM) else None),
        "template_mirror_check": (template_mirror_check(variants[0].completer)
                                  if ev.get("template_mirror_check", True) else None),
        "detection": detection,
        "detection_class_head": head_detection,
        "detection_small_beta": detection_accuracy(small.completer, data["test"]) if small else None,
        "method_note": (f"The bundle's default method is **{method}** with γ = {bundle.default_gamma}: the best mean "
                        f"implant Dice on the validation split (model grid; {selection.get('cases', 0)} cases; "
                        f"mean DSC by method {json.dumps(selection.get('mean_dsc_by_method', {}))})."),
        "figures": figures,
    }
    results["real_skull"] = evaluate_real_skull(bundle, expand_path(ev["sample_skull"]) if ev.get("sample_skull")
                                                else None, out, device)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    write_report(out, results)
    record_in_bundle(bundle, results)
    log.info("report written to %s", out / "README.md")
    return results


def record_in_bundle(bundle: ModelBundle, results: dict[str, Any]) -> None:
    """Store the headline test figures in the bundle's manifest (weights unchanged, checksums recomputed)."""
    manifest = dict(bundle.manifest)
    manifest["evaluation"] = {
        "split": "test", "measured_at": "input resolution, through SkullCompleter", "date": results["date"],
        "figures": {f"{e['type']}_gamma_{e['gamma']:g}": {m: round(e[m], 4) for m in METRICS}
                    for e in results["sweep"]},
        "variants": {f"{e['variant']} / {e['type']}": {m: round(e[m], 4) for m in METRICS}
                     for e in results["variants"]},
        "detection_accuracy": round(results["detection"]["accuracy"], 4),
        "detection_accuracy_class_head": round(results["detection_class_head"]["accuracy"], 4),
        "real_skull": results.get("real_skull"),
        "report": "training/results/README.md",
    }
    save_bundle(bundle.folder, bundle.model, manifest, paired_latents=bundle.paired_latents, overwrite=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a bundle on the test split (Markdown + figures)")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (as in training.train)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    evaluate(load_config(args.config, parse_overrides(args.overrides)), args.bundle, args.out, str(args.config))


if __name__ == "__main__":
    main()
