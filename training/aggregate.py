"""Latent aggregation and export: centroids, DEV vectors, paired latents, default γ, model bundle.

    python -m training.aggregate --config training/configs/bundled_cpu.yaml [--out FOLDER]

1. Encode every training volume with the stage-1 encoder (μ).
2. Per-class centroids and DEV_type = centroid(complete) − centroid(type) (:mod:`training.stages`).
3. Paired latents for the engine's k-NN option: each defective training case's μ and the difference
   μ(its complete skull) − μ(defective).
4. On the validation split (never the test split), sweep γ for the DEV and k-NN shifts, and try the
   latent refinement, through the engine (:class:`SkullCompleter`) on the model grid; the best mean
   implant Dice picks the default γ per defect type and the default completion method.
5. Export with :func:`SkullVAECompletionLib.model.bundle.save_bundle`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from SkullVAECompletionLib.inference import regions
from SkullVAECompletionLib.inference.completion import SkullCompleter
from SkullVAECompletionLib.inference.results import EncodedSkull
from SkullVAECompletionLib.inference.trust import TrustPolicy, policy_from_validation, reconstruction_trust
from SkullVAECompletionLib.metrics import boundary_dice, defect_area_fill, dice
from SkullVAECompletionLib.model.bundle import ModelBundle, load_bundle, save_bundle
from SkullVAECompletionLib.model.networks import AggregatedVAE, bone_probability
from SkullVAECompletionLib.preprocessing.geometry import GridMapping, GridSpec
from training import stages
from training.train import (
    CHECKPOINT_NAME,
    LABELS,
    VolumeSet,
    entry_volume,
    expand_path,
    grid_spec,
    load_checkpoint,
    load_config,
    load_model_from_checkpoint,
    load_volumes,
    parse_overrides,
    stage_dir,
)

log = logging.getLogger("training.aggregate")

DATA_DESCRIPTION = (
    "Synthetic population derived from ONE real head CT: the 'Cranium' example of the Debian package "
    "invesalius-examples (anonymised patient scan 'ProMED CT 0051', (c) CTI Renato Archer, GPL-2). Its skull "
    "(HU >= 300, largest component, fronto-temporal defect repaired by mirroring) was deformed into a "
    "population (size, cephalic index, vault height, smooth random deformations, pose, spacing, field of view) "
    "with SkullBreak/SkullFix-style cranial defects and facial box defects (training/generate.py). "
    "It is not a clinical data set; train on SkullFix / SkullBreak / the skullVAE set for a real-data model."
)


class Stage1Decoding(nn.Module):
    """An AggregatedVAE seen through its stage-1 decoder (for the 'VAE alone' comparisons in the engine)."""

    def __init__(self, model: AggregatedVAE) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config
        self.classifier = getattr(model, "classifier", None)  # same encoder, same class head

    def classify(self, mu: torch.Tensor) -> torch.Tensor:
        return self.inner.classify(mu)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner.decode_stage1(z)


# ----------------------------------------------------------------------------- latents

@torch.no_grad()
def encode_set(model: nn.Module, volumes: torch.Tensor, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """μ and log σ² of every (N, 1, *grid) volume."""
    model.eval()
    mus, logvars = [], []
    for start in range(0, len(volumes), batch_size):
        mu, logvar = model.encode(volumes[start : start + batch_size].float())
        mus.append(mu.numpy())
        logvars.append(logvar.numpy())
    return np.concatenate(mus), np.concatenate(logvars)


def paired_latents(latents: np.ndarray, classes: list[str], groups: list[str],
                   defect_classes: list[str]) -> dict[str, np.ndarray]:
    """Defective latents and complete-minus-defective deltas of cases whose complete skull is in the set;
    ``type_index`` is the case's position in ``defect_classes`` (the bundle's order)."""
    pairs = list(zip(classes, groups, strict=True))
    complete = {g: latents[i] for i, (name, g) in enumerate(pairs) if name == regions.COMPLETE}
    rows = [i for i, (name, g) in enumerate(pairs) if name in defect_classes and g in complete]
    if not rows:
        return {}
    defective = latents[rows]
    delta = np.stack([complete[groups[i]] for i in rows]) - defective
    type_index = np.asarray([defect_classes.index(classes[i]) for i in rows], dtype=np.int64)
    return {"defective": defective.astype(np.float32), "delta": delta.astype(np.float32), "type_index": type_index}


def latent_statistics(latents: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Centroids, DEV vectors and a few numbers describing the latent space."""
    centroids = stages.class_centroids(latents, labels)
    dev = stages.deviation_vectors(centroids)
    return {
        "centroids": centroids,
        "dev": dev,
        "counts": {k: int(np.sum(np.asarray(labels) == k)) for k in centroids},
        "dev_norm": {k: float(np.linalg.norm(v)) for k, v in dev.items()},
        "latent_std": float(latents.std(axis=0).mean()),
    }


# ----------------------------------------------------------------------------- manifest and in-memory bundle

def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no commit yet)"


def config_sha256(cfg: dict) -> str:
    """The training config's hash (canonical JSON of every setting; run-time flags left out)."""
    settings = {k: v for k, v in cfg.items() if k not in ("overwrite", "config_files")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def class_names_of(cfg: dict, centroids: dict[str, np.ndarray]) -> list[str]:
    """The manifest's class order: the class head's output order when the network has one."""
    if int(cfg["network"].get("num_classes", 0)):
        missing = [n for n in regions.CLASS_NAMES if n not in centroids]
        if missing:
            log.warning("the training split has no case of the classes %s: no DEV for them", missing)
        return list(regions.CLASS_NAMES)
    return [n for n in dict.fromkeys((*regions.CLASS_NAMES, *LABELS)) if n in centroids]


def defect_classes_of(dev: dict[str, np.ndarray]) -> list[str]:
    return [n for n in dict.fromkeys((*regions.DEFECT_CLASSES, *LABELS)) if n in dev]


def build_manifest(cfg: dict, stats: dict[str, Any], default_gamma: dict[str, float], method: str,
                   training: dict[str, Any], evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every manifest key :func:`save_bundle` expects from the caller."""
    agg = cfg.get("aggregate", {})
    return {
        "model_id": cfg["name"],
        "version": str(cfg.get("version", "0.0.0")),
        "geometry": grid_spec(cfg).to_dict(),
        "class_names": class_names_of(cfg, stats["centroids"]),
        "defect_classes": defect_classes_of(stats["dev"]),
        "training_config_sha256": config_sha256(cfg),
        "data_description": training.get("data", {}).get("description", ""),
        "centroids": {k: np.asarray(v, float).tolist() for k, v in stats["centroids"].items()},
        "dev": {k: np.asarray(v, float).tolist() for k, v in stats["dev"].items()},
        "default_gamma": {k: float(default_gamma.get(k, 1.0)) for k in stats["dev"]},
        "completion": {
            "method": method,
            "knn_k": int(agg.get("knn_k", 5)),
            "refine_steps": int(agg.get("refine_steps", 30)),
            "refine_lr": float(agg.get("refine_lr", 0.05)),
            "refine_prior_weight": float(agg.get("refine_prior_weight", 1e-3)),
            "decode_threshold": {k: float(v) for k, v in (agg.get("decode_threshold") or {}).items()},
            "extraction_by_class": {k: str(v) for k, v in (agg.get("extraction_by_class") or {}).items()},
        },
        "training": training,
        "evaluation": evaluation or {},
    }


def memory_bundle(model: nn.Module, manifest: dict[str, Any], latents: dict[str, np.ndarray] | None) -> ModelBundle:
    """A ModelBundle that is not on disk, so the engine can run candidate settings before export."""
    full = {**manifest, "network": model.config.to_dict()}
    return ModelBundle(folder=Path("<memory>"), manifest=full, model=model, paired_latents=dict(latents or {}))


# ----------------------------------------------------------------------------- model-grid evaluation (validation)

def model_grid_encoded(completer: SkullCompleter, volume: np.ndarray, model_to_ras: np.ndarray,
                       grid: GridSpec) -> EncodedSkull:
    """Encode a cached model-grid volume as if it were the input (its own grid IS the model grid)."""
    # A size-normalised grid was placed with the skull's own scale: the cached matrix's spacing tells it.
    scale = float(np.linalg.norm(np.asarray(model_to_ras)[:3, 0])) / grid.spacing_mm
    mapping = GridMapping(grid=grid.scaled(scale), input_shape=grid.shape, ijk_to_ras=model_to_ras,
                          model_to_ras=model_to_ras, scale=scale)
    with torch.inference_mode():
        mu, logvar = completer.model.encode(torch.from_numpy(volume)[None, None].to(completer.device))
    mu, logvar = mu.float().cpu(), logvar.float().cpu()
    return EncodedSkull(mapping=mapping, defective=volume >= 0.5, model_input=volume, mu=mu, logvar=logvar,
                        class_probabilities=completer.class_probabilities(mu[0].numpy()))


def pick_cases(labels: list[str], per_type: int | None, kinds: Iterable[str] = regions.DEFECT_CLASSES) -> list[int]:
    """Indices of up to ``per_type`` cases of each kind, evenly spread over the split (so over many skulls)."""
    chosen = []
    for kind in kinds:
        indices = [i for i, label in enumerate(labels) if label == kind]
        if per_type is not None and len(indices) > per_type:
            indices = [indices[int(round(k))] for k in np.linspace(0, len(indices) - 1, int(per_type))]
        chosen += indices
    return sorted(chosen)


def model_grid_cases(volume_set: VolumeSet, cache: Path | None, per_type: int | None) -> list[dict[str, Any]]:
    """Defective cases with their model-grid implants (up to ``per_type`` of each defect type)."""
    cases = []
    for index in pick_cases(volume_set.classes, per_type):
        label, entry = volume_set.classes[index], volume_set.entries[index]
        implant = entry_volume(entry, cache, "implant")
        if implant is None or not (implant >= 0.5).any():
            continue
        cases.append({"case_id": volume_set.case_ids[index], "type": label,
                      "volume": volume_set.volumes[index, 0].float().numpy(),
                      "implant": implant >= 0.5, "model_to_ras": np.asarray(entry["model_to_ras"], float)})
    return cases


def sweep_model_grid(completer: SkullCompleter, cases: list[dict[str, Any]], gammas: Iterable[float],
                     methods: Iterable[str]) -> list[dict[str, Any]]:
    """Implant DSC / bDSC on the model grid for every case × method × γ (true defect type given)."""
    grid = completer.bundle.grid
    spacing = np.full(3, grid.spacing_mm)
    rows = []
    for case in cases:
        encoded = model_grid_encoded(completer, case["volume"], case["model_to_ras"], grid)
        for method in methods:
            for gamma in gammas:
                result = completer.complete(encoded, gamma=gamma, defect_type=case["type"], method=method,
                                            smoothing=False)
                decoded = completer.expected_skull(encoded, gamma, case["type"], method) > 0.5
                rows.append({"case_id": case["case_id"], "type": case["type"], "method": method, "gamma": gamma,
                             "dsc": dice(result.implant, case["implant"]),
                             "bdsc": boundary_dice(result.implant, case["implant"], encoded.defective, spacing),
                             "closes": defect_area_fill(decoded, case["implant"], case["volume"] >= 0.5),
                             "detected": encoded.detected_type})
    return rows


def mean_by(rows: list[dict[str, Any]], keys: tuple[str, ...], value: str = "dsc") -> dict[tuple, float]:
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row[value])
    return {k: float(np.mean(v)) for k, v in groups.items()}


# The default γ must do what the shift is for: its decode closes at least this share of the defect's area (mean
# over the class's validation cases). With the rim stage the implant's DSC hardly changes with γ, so DSC alone
# would pick a γ whose decode still shows much of the hole.
CLOSES_AT_DEFAULT = 0.8


def best_gamma(scores: dict[float, float], closes: dict[float, float] | None = None) -> float:
    """The γ with the best mean DSC among those whose decode closes :data:`CLOSES_AT_DEFAULT` of the defect (all γ
    when none does, or without ``closes``); ties go to the one nearest the paper's γ = 1."""
    eligible = [g for g in scores if closes is not None and closes.get(g, 0.0) >= CLOSES_AT_DEFAULT] or list(scores)
    return max(eligible, key=lambda g: (scores[g], -abs(g - 1.0)))


PRIMARY_METHOD = "dev"  # the paper's shift z + γ·DEV
METHOD_MARGIN = 0.01  # another method replaces it only when this much better (smaller gaps are validation noise)


def choose_defaults(rows: list[dict[str, Any]]) -> tuple[str, dict[str, float], dict[str, Any]]:
    """Best γ per (method, type) by mean DSC; then the method with the best type-averaged DSC at its γs, where
    :data:`PRIMARY_METHOD` wins unless another beats it by :data:`METHOD_MARGIN`."""
    table = mean_by(rows, ("method", "type", "gamma"))
    closing = mean_by([r for r in rows if "closes" in r], ("method", "type", "gamma"), "closes")
    methods = sorted({m for m, _, _ in table})
    types = sorted({t for _, t, _ in table})
    best: dict[str, dict[str, tuple[float, float]]] = {}
    for method in methods:
        best[method] = {}
        for kind in types:
            candidates = {g: v for (m, t, g), v in table.items() if m == method and t == kind}
            closes = {g: v for (m, t, g), v in closing.items() if m == method and t == kind}
            gamma = best_gamma(candidates, closes)
            best[method][kind] = (gamma, candidates[gamma])
    score = {m: float(np.mean([v for _, v in best[m].values()])) for m in methods}
    winner = max(score, key=lambda m: score[m] + (METHOD_MARGIN if m == PRIMARY_METHOD else 0.0))
    summary = {"mean_dsc_by_method": score,
               "best_gamma": {m: {t: g for t, (g, _) in b.items()} for m, b in best.items()},
               "best_dsc": {m: {t: v for t, (_, v) in b.items()} for m, b in best.items()}}
    return winner, {t: g for t, (g, _) in best[winner].items()}, summary


MIN_CASES_FOR_OWN_GAMMA = 3  # a class with fewer validation cases takes the pooled cranial γ (one case is noise)


def fill_missing_gammas(rows: list[dict[str, Any]], method: str, chosen: dict[str, float],
                        classes: Iterable[str]) -> dict[str, float]:
    """γ per class: its own best γ when it has at least :data:`MIN_CASES_FOR_OWN_GAMMA` validation cases, else
    the best γ of all cranial validation cases pooled (the facial class, when missing, gets the paper's γ = 1)."""
    cranial = [r for r in rows if regions.is_cranial(r["type"])]
    pooled = {g: v for (m, g), v in mean_by(cranial, ("method", "gamma")).items() if m == method}
    closes = {g: v for (m, g), v in mean_by([r for r in cranial if "closes" in r], ("method", "gamma"),
                                             "closes").items() if m == method}
    fallback = best_gamma(pooled, closes) if pooled else 1.0
    cases = {kind: len({r["case_id"] for r in rows if r["type"] == kind}) for kind in {r["type"] for r in rows}}
    out = {}
    for name in classes:
        if name in chosen and cases.get(name, 0) >= MIN_CASES_FOR_OWN_GAMMA:
            out[name] = chosen[name]
        else:
            out[name] = fallback if regions.is_cranial(name) else chosen.get(name, 1.0)
    return out


def select_on_validation(completer: SkullCompleter, cases: list[dict[str, Any]], gammas: list[float],
                         refine: bool = True) -> tuple[str, dict[str, float], dict[str, Any], list[dict]]:
    """γ sweeps of the DEV and k-NN shifts, then refinement at the DEV's best γ; returns the winner."""
    methods = ["dev"] + (["knn"] if completer.bundle.paired_latents else [])
    rows = sweep_model_grid(completer, cases, gammas, methods)
    _, _, summary = choose_defaults(rows)
    if refine:
        for kind, gamma in summary["best_gamma"]["dev"].items():
            rows += sweep_model_grid(completer, [c for c in cases if c["type"] == kind], [gamma], ["refine"])
    method, gamma, summary = choose_defaults(rows)
    classes = completer.bundle.defect_classes
    summary["best_gamma"] = {m: fill_missing_gammas(rows, m, g, classes) for m, g in summary["best_gamma"].items()}
    return method, summary["best_gamma"][method], summary, rows


# ----------------------------------------------------------------------------- pipeline

def training_record(cfg: dict, data_summary: dict[str, Any]) -> dict[str, Any]:
    """Provenance: data, configs, epochs actually trained, seed, commit, date."""
    record: dict[str, Any] = {"data": data_summary, "config": {k: v for k, v in cfg.items() if k != "overwrite"},
                              "seed": cfg["seed"], "git_commit": git_commit(),
                              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "provenance": DATA_DESCRIPTION if cfg["data"].get("layout") != "synthetic"
                              else "synthetic ellipsoidal shells (smoke test only)"}
    for stage in ("stage1", "stage2"):
        path = stage_dir(cfg, stage) / CHECKPOINT_NAME
        if path.exists():
            state = load_checkpoint(path)
            last = state["history"][-1] if state["history"] else {}
            record[stage] = {"epochs": int(state["epoch"]),
                             "train_time_min": round(sum(r["time_s"] for r in state["history"]) / 60.0, 1),
                             "final": {k: round(float(v), 5) for k, v in last.items()}}
    return record


def aggregate(cfg: dict, out: Path | None = None) -> Path:
    """Encode, aggregate, choose defaults on validation and export the bundle; returns its folder."""
    tick = time.perf_counter()
    torch.set_num_threads(int(cfg.get("threads", 0)) or torch.get_num_threads())
    model, _ = load_model_from_checkpoint(stage_dir(cfg, "stage2") / CHECKPOINT_NAME)
    data = load_volumes(cfg, ("train", "val"))
    train = data["train"]
    latents, _ = encode_set(model, train.volumes)
    stats = latent_statistics(latents, train.classes)
    pairs = paired_latents(latents, train.classes, train.groups, defect_classes_of(stats["dev"]))
    log.info("latents: %s; |DEV| %s", stats["counts"], {k: round(v, 3) for k, v in stats["dev_norm"].items()})
    agg = cfg.get("aggregate", {})
    data_summary = {"description": DATA_DESCRIPTION if cfg["data"].get("layout") != "synthetic" else "synthetic",
                    "root": str(cfg["data"].get("root", "")),
                    "train_counts": stats["counts"], "val_cases": len(data.get("val", train))}
    manifest = build_manifest(cfg, stats, {}, "dev", training_record(cfg, data_summary))
    completer = SkullCompleter(memory_bundle(model, manifest, pairs), device=cfg.get("device", "auto"))
    cache = expand_path(cfg["data"]["cache"]) if cfg["data"].get("cache") else None
    val_cases = model_grid_cases(data.get("val", train), cache, agg.get("val_cases_per_type"))
    gammas = [float(g) for g in agg.get("gamma_grid", [0.0, 0.5, 1.0, 1.5])]
    method = str(agg.get("method", "dev"))
    chosen_gamma = dict.fromkeys(stats["dev"], 1.0)
    selection: dict[str, Any] = {}
    if val_cases:
        best_method, chosen_gamma, selection, _ = select_on_validation(
            completer, val_cases, gammas, refine=int(agg.get("refine_steps", 0)) > 0)
        if agg.get("choose_method", True):
            method = best_method
        chosen_gamma = selection["best_gamma"][method]
        log.info("validation (model grid, %d cases): %s", len(val_cases), json.dumps(selection))
    manifest = build_manifest(cfg, stats, chosen_gamma, method, manifest["training"])
    manifest["trust"] = validation_trust(model, data.get("val", train).volumes)
    manifest["training"]["selection_on_validation"] = {**selection, "cases": len(val_cases),
                                                       "measured_on": "model grid, engine implant extraction",
                                                       "chosen_method": method, "chosen_gamma": chosen_gamma}
    manifest["training"]["latent_space"] = {k: stats[k] for k in ("counts", "dev_norm", "latent_std")}
    folder = save_bundle(out or expand_path(agg.get("bundle_dir", "bundle")), model, manifest,
                         paired_latents=pairs, overwrite=True)
    log.info("bundle written to %s in %.1f s (method %s, gamma %s)", folder, time.perf_counter() - tick, method,
             chosen_gamma)
    return folder


def validation_trust(model: nn.Module, volumes: torch.Tensor, batch_size: int = 8) -> dict[str, Any]:
    """The trust figure (trust.py) of every validation volume, complete and defective, and the thresholds they give
    (:func:`~SkullVAECompletionLib.inference.trust.policy_from_validation`)."""
    model.eval()
    figures = []
    with torch.inference_mode():
        mu, _ = encode_set(model, volumes, batch_size)
        for start in range(0, len(mu), batch_size):
            decoded = bone_probability(model.decode(torch.from_numpy(mu[start : start + batch_size]))).numpy()
            for volume, probability in zip(volumes[start : start + batch_size], decoded, strict=True):
                figures.append(reconstruction_trust(volume[0].float().numpy(), probability, TrustPolicy()).figure)
    policy = policy_from_validation(figures)
    log.info("trust on validation (%d volumes): min %.3f, mean %.3f -> %s", len(figures), min(figures),
             float(np.mean(figures)), policy)
    return {**policy.to_dict(), "validation": {"min": round(min(figures), 4), "mean": round(float(np.mean(figures)), 4),
                                               "volumes": len(figures)}}


def reaggregate(cfg: dict, bundle_dir: Path, out: Path | None = None) -> Path:
    """A bundle's network with latents, centroids and DEVs aggregated anew on ``cfg``'s data and grid (the
    mapping to the model grid changed, not the network); its default γ and completion settings are kept."""
    tick = time.perf_counter()
    torch.set_num_threads(int(cfg.get("threads", 0)) or torch.get_num_threads())
    bundle = load_bundle(bundle_dir)
    data = load_volumes(cfg, ("train", "val"))
    train = data["train"]
    with torch.inference_mode():
        latents, _ = encode_set(bundle.model, train.volumes)
    stats = latent_statistics(latents, train.classes)
    pairs = paired_latents(latents, train.classes, train.groups, bundle.defect_classes)
    manifest = {k: v for k, v in bundle.manifest.items() if k not in ("format", "format_version", "network", "files")}
    manifest.update(
        version=str(cfg.get("version", manifest["version"])),
        geometry=grid_spec(cfg).to_dict(),
        centroids={k: np.asarray(v, float).tolist() for k, v in stats["centroids"].items()},
        dev={k: np.asarray(v, float).tolist() for k, v in stats["dev"].items()},
        training_config_sha256=config_sha256(cfg),
        trust=validation_trust(bundle.model, data.get("val", train).volumes),
        evaluation={},
    )
    manifest["training"] = {**manifest["training"], "reaggregated_from": f"{bundle.model_id} {bundle.version}",
                            "latent_space": {k: stats[k] for k in ("counts", "dev_norm", "latent_std")}}
    folder = save_bundle(out or bundle_dir, bundle.model, manifest, paired_latents=pairs, overwrite=True)
    log.info("bundle re-aggregated into %s in %.1f s (%s)", folder, time.perf_counter() - tick, stats["counts"])
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Aggregate latents and export the model bundle")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="bundle folder (default: aggregate.bundle_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (as in training.train)")
    parser.add_argument("--from-bundle", type=Path, default=None, metavar="FOLDER",
                        help="keep this bundle's network, γ and settings; aggregate its latents anew on the config's "
                             "data and grid (after a change of the mapping to the model grid)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, parse_overrides(args.overrides))
    if args.from_bundle:
        reaggregate(cfg, args.from_bundle, args.out)
    else:
        aggregate(cfg, args.out)


if __name__ == "__main__":
    main()
