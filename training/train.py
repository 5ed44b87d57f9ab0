"""Train the aggregated β-VAE: stage 1 (large-β VAE), stage 2 (decoupled decoder), or the small-β baseline.

    python -m training.train stage1   --config training/configs/bundled_cpu.yaml [--resume]
    python -m training.train stage2   --config training/configs/bundled_cpu.yaml [--resume]
    python -m training.train baseline --config training/configs/baseline_small_beta.yaml
    torchrun --nproc_per_node 2 -m training.train stage1 --config ...      # DistributedDataParallel

Every hyper-parameter lives in the YAML config (see training/configs/). Each stage writes
``<output_dir>/<stage>/last.pt`` (model, optimiser, scaler, epoch, RNG state, config, history) after
every epoch and ``<output_dir>/<stage>/log.csv`` (Dice loss, KLD and hard Dice, train and validation).
The losses and one-step updates are :mod:`training.stages`, shared with the test-suite's tiny model.
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler
from tqdm import tqdm

from SkullVAECompletionLib.inference import regions
from SkullVAECompletionLib.model.networks import AggregatedVAE, NetworkConfig
from SkullVAECompletionLib.preprocessing.geometry import GridSpec
from training import stages

log = logging.getLogger("training.train")

STAGES = ("stage1", "stage2", "baseline")
LABELS = ("complete", "cranial", "facial")
CHECKPOINT_NAME = "last.pt"
LOG_NAME = "log.csv"
# Log column → field of stages.StepLosses (epoch means).
TRAIN_LOSSES = {"train_dice_loss": "dice", "train_kld": "kld", "train_loss": "total", "train_defect": "defect",
                "train_classification": "classification", "train_shift": "shift"}
LOG_FIELDS = ["epoch", *TRAIN_LOSSES, "val_dice_loss", "val_kld", "val_dice", "val_hole_kept", "val_class_accuracy",
              "lr", "time_s"]


# ----------------------------------------------------------------------------- configuration

def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> dict[str, Any]:
    """Read a YAML config; ``extends: other.yaml`` (relative to this file) is merged underneath it."""
    path = Path(path)
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    parent = cfg.pop("extends", None)
    if parent:
        cfg = _merge(load_config(path.parent / parent), cfg)
    cfg = _merge(cfg, overrides or {})
    cfg.setdefault("config_files", [])
    cfg["config_files"] = [*cfg["config_files"], str(path)]
    return cfg


_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_path(value: str | os.PathLike) -> Path:
    """``${VAR:-default}`` and ``~`` expansion; relative paths are relative to the working directory."""
    text = _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), str(value))
    return Path(os.path.expanduser(text))


def grid_spec(cfg: dict) -> GridSpec:
    return GridSpec.from_dict(dict(cfg["grid"]))


def network_config(cfg: dict) -> NetworkConfig:
    return NetworkConfig.from_dict({**cfg["network"], "grid": tuple(cfg["grid"]["shape"])})


def stage_dir(cfg: dict, stage: str) -> Path:
    return expand_path(cfg["output_dir"]) / stage


# ----------------------------------------------------------------------------- distributed set-up

@dataclass
class Runtime:
    """Where this process trains: device, rank and world size (1 without torchrun)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(cfg: dict) -> Runtime:
    """Device from the config ("auto" | "cpu" | "cuda"); joins the process group under torchrun."""
    torch.set_num_threads(int(cfg.get("threads", 0)) or torch.get_num_threads())
    want = cfg.get("device", "auto")
    cuda = torch.cuda.is_available() and want in ("auto", "cuda")
    if want == "cuda" and not torch.cuda.is_available():
        raise SystemExit("config asks for device 'cuda' but no CUDA device is available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed volume shapes: pick the fastest 3D convolution once
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=world_size)
    return Runtime(device=device, rank=rank, world_size=world_size, amp=bool(cfg.get("amp", True)) and cuda)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- data

@dataclass
class VolumeSet:
    """Model-grid volumes of one split, kept in memory as float16 (the cache's precision)."""

    volumes: torch.Tensor  # (N, 1, *grid) float16 bone fraction
    labels: list[str]
    case_ids: list[str]
    groups: list[str] = field(default_factory=list)
    entries: list[dict] = field(default_factory=list)  # data.py cache entries (geometry, source files)
    implants: torch.Tensor | None = None  # (N, 1, *grid) float16 defect (zeros for complete skulls)
    completes: torch.Tensor | None = None  # (N, 1, *grid) float16 complete skull
    classes: list[str] = field(default_factory=list)  # region defect class (SkullVAECompletionLib.inference.regions)

    def __len__(self) -> int:
        return len(self.labels)


def with_defects(volume_set: VolumeSet, implants: list[np.ndarray | None], completes: list[np.ndarray | None]
                 ) -> VolumeSet:
    """Attach each case's model-grid defect and complete skull, and its region class, to a VolumeSet."""
    inputs = volume_set.volumes[:, 0].float().numpy()
    implant_arrays, complete_arrays, classes = [], [], []
    for label, volume, implant, complete in zip(volume_set.labels, inputs, implants, completes, strict=True):
        implant = np.zeros_like(volume) if implant is None else np.asarray(implant, np.float32)
        complete = np.maximum(volume, implant) if complete is None else np.asarray(complete, np.float32)
        implant_arrays.append(implant)
        complete_arrays.append(complete)
        classes.append(regions.defect_class(label, implant >= 0.5 if (implant >= 0.5).any() else None,
                                            complete))
    volume_set.implants = torch.from_numpy(np.stack(implant_arrays).astype(np.float16))[:, None]
    volume_set.completes = torch.from_numpy(np.stack(complete_arrays).astype(np.float16))[:, None]
    volume_set.classes = classes
    return volume_set


def _synthetic_volumes(cfg: dict, grid: GridSpec) -> dict[str, VolumeSet]:
    """Ellipsoidal shells with cranial/facial defects (tests and smoke runs: no files needed)."""
    from SkullVAECompletionLib.preprocessing.geometry import plan_mapping, to_model_grid
    from SkullVAECompletionLib.synthetic import (
        ShellSpec,
        centred_ijk_to_ras,
        cranial_defect,
        facial_defect,
        skull_shell,
    )

    data = cfg["data"]
    rng = np.random.default_rng(int(cfg["seed"]))
    shape, spacing = tuple(data.get("shape", (64, 72, 60))), tuple(data.get("spacing_mm", (3.0, 3.0, 3.0)))
    matrix = centred_ijk_to_ras(shape, spacing)
    counts = data.get("skulls_per_split", {"train": 4, "val": 1, "test": 1})
    out = {}
    for split, count in counts.items():
        vols, labels, ids, entries = [], [], [], []
        for index in range(int(count)):
            spec = ShellSpec(semi_axes_mm=tuple(np.array([70.0, 90.0, 75.0]) * rng.uniform(0.92, 1.08, 3)))
            complete = skull_shell(shape, matrix, spec)
            cases = {
                "complete": complete,
                "cranial": complete & ~cranial_defect(shape, matrix, tuple(rng.normal([35, 20, 55], 5)), 30.0),
                "facial": complete & ~facial_defect(shape, matrix, rng.uniform(50, 60), rng.uniform(5, 15)),
            }
            for label, mask in cases.items():
                mapping = plan_mapping(mask, matrix, grid)
                vols.append(to_model_grid(mask, mapping))
                labels.append(label)
                ids.append(f"{split}{index:03d}_{label}")
                implant = (complete & ~mask).astype(np.uint8)
                entries.append({"case": {"case_id": ids[-1], "label": label, "group": f"{split}{index:03d}"},
                                "model_to_ras": mapping.model_to_ras.tolist(),
                                "arrays": {"implant": to_model_grid(implant, mapping) if implant.any() else None,
                                           "complete": to_model_grid(complete, mapping)},
                                "full": {"defective": mask, "implant": implant, "ijk_to_ras": matrix}})
        volume_set = VolumeSet(torch.from_numpy(np.stack(vols))[:, None].half(), labels, ids,
                               [e["case"]["group"] for e in entries], entries)
        out[split] = with_defects(volume_set, [e["arrays"]["implant"] for e in entries],
                                  [e["arrays"]["complete"] for e in entries])
    return out


def load_volumes(cfg: dict, splits: tuple[str, ...] = ("train", "val")) -> dict[str, VolumeSet]:
    """Model-grid volumes per split, through training/data.py (readers, engine geometry, cache)."""
    grid = grid_spec(cfg)
    data = cfg["data"]
    if data.get("layout") == "synthetic":
        return {k: v for k, v in _synthetic_volumes(cfg, grid).items() if k in splits}
    from training import data as datamod

    records = split_records_of(cfg, splits)
    cache = expand_path(data["cache"])
    entries = datamod.preprocess_all(records, grid, cache, workers=int(data.get("preprocess_workers", 1)))
    out = {}
    for split in splits:
        chosen = [(r, e) for r, e in zip(records, entries, strict=True) if r.split == split]
        if not chosen:
            continue
        vols = np.stack([datamod.load_entry(e, cache, "input") for _, e in chosen])
        volume_set = VolumeSet(
            torch.from_numpy(vols.astype(np.float16))[:, None],
            [r.label for r, _ in chosen],
            [r.case_id for r, _ in chosen],
            [r.group for r, _ in chosen],
            [e for _, e in chosen],
        )
        out[split] = with_defects(volume_set, [datamod.load_entry(e, cache, "implant") for _, e in chosen],
                                  [datamod.load_entry(e, cache, "complete") for _, e in chosen])
    return out


def split_records_of(cfg: dict, splits: tuple[str, ...]) -> list:
    """The data set's case records (training/data.py) of these splits, split by patient/group when the data
    has no split of its own."""
    from training import data as datamod

    data = cfg["data"]
    records = datamod.scan_dataset(expand_path(data["root"]), data.get("layout", "auto"))
    if any(r.split is None for r in records):
        records = datamod.split_records(records, data.get("splits", {"train": 0.8, "val": 0.1, "test": 0.1}),
                                        int(data.get("split_seed", cfg["seed"])))
    records = [r for r in records if r.split in splits]
    if data.get("max_cases_per_split"):
        limit = int(data["max_cases_per_split"])
        records = [r for s in splits for r in [r for r in records if r.split == s][:limit]]
    return records


def entry_volume(entry: dict, cache: Path | None, name: str) -> np.ndarray | None:
    """A cached model-grid volume ("input", "complete", "implant") of one case as float32, or None."""
    if "arrays" in entry:
        value = entry["arrays"].get(name)
    else:
        from training import data as datamod

        value = datamod.load_entry(entry, cache, name)
    return None if value is None else np.asarray(value, np.float32)


def full_resolution_case(entry: dict) -> dict[str, np.ndarray]:
    """The case at its own (input) resolution: defective mask, ground-truth implant, IJK→RAS."""
    if "full" in entry:
        return dict(entry["full"])
    from training import data as datamod

    case = entry["case"]
    defective, matrix = datamod.read_binary(Path(case["defective"]))
    if case.get("implant"):
        implant, _ = datamod.read_binary(Path(case["implant"]))
    elif case.get("complete") and case["complete"] != case["defective"]:
        complete, _ = datamod.read_binary(Path(case["complete"]))
        implant = (complete > 0) & ~(defective > 0)
    else:
        implant = np.zeros_like(defective)
    return {"defective": defective, "implant": np.asarray(implant, np.uint8), "ijk_to_ras": matrix}


class AugmentedVolumes(Dataset):
    """Training items with the config's augmentation: random left-right flip and integer shifts.

    The left-right flip is a plausible skull (skulls are near-symmetric and the grid is centred on the
    skull base); it swaps left and right region classes. Shifts imitate small placement differences of
    the grid anchors. The defect and the complete skull move with the input.
    """

    def __init__(self, volume_set: VolumeSet, class_names: tuple[str, ...], augment: dict | None = None) -> None:
        self.set = volume_set
        self.class_names = tuple(class_names)
        self.augment = augment or {}

    def __len__(self) -> int:
        return len(self.set)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        stack = [self.set.volumes[index]]
        if self.set.implants is not None:
            stack += [self.set.implants[index], self.set.completes[index]]
        x = torch.cat(stack).float()
        name = self.set.classes[index] if self.set.classes else regions.COMPLETE
        if self.augment.get("flip_lr") and torch.rand(()) < 0.5:
            x = torch.flip(x, dims=(1,))  # axis 0 of the grid (Right) is dim 1 of (C, X, Y, Z)
            name = regions.MIRRORED_CLASS.get(name, name)
        shift = int(self.augment.get("shift_voxels", 0))
        if shift:
            offsets = torch.randint(-shift, shift + 1, (3,)).tolist()
            x = torch.roll(x, shifts=offsets, dims=(1, 2, 3))
        item = {"input": x[:1], "class_index": torch.tensor(self.class_names.index(name))}
        if len(x) > 1:
            item.update(implant=x[1:2], complete=x[2:3])
        return item


def to_batch(item: dict[str, torch.Tensor], device: torch.device) -> stages.Batch:
    return stages.Batch(item["input"], item.get("implant"), item.get("complete"), item["class_index"]).to(device)


def balanced_weights(classes: list[str], class_names: tuple[str, ...]) -> torch.Tensor:
    """Sampling weight per item so every class (left and right counted together) is drawn equally often."""
    pooled = [regions.MIRRORED_CLASS.get(c, c) if c.endswith("_left") else c for c in classes]
    counts = {c: pooled.count(c) for c in set(pooled)}
    return torch.tensor([1.0 / counts[c] for c in pooled], dtype=torch.float64)


def make_loader(volume_set: VolumeSet, batch_size: int, augment: dict | None, runtime: Runtime, seed: int,
                class_names: tuple[str, ...] = regions.CLASS_NAMES, balanced: bool = False
                ) -> tuple[DataLoader, DistributedSampler | None]:
    dataset = AugmentedVolumes(volume_set, class_names, augment)
    sampler: Any = None
    if runtime.distributed:
        sampler = DistributedSampler(dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=True,
                                     seed=seed, drop_last=True)
    elif balanced and volume_set.classes:
        generator = torch.Generator().manual_seed(seed)
        sampler = WeightedRandomSampler(balanced_weights(volume_set.classes, class_names), len(dataset),
                                        replacement=True, generator=generator)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                        drop_last=len(dataset) > batch_size, num_workers=0)
    return loader, sampler


def start_epoch_sampling(sampler: Any, seed: int, epoch: int) -> None:
    """Per-epoch sampling order that does not depend on how many epochs this process has run (resume)."""
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    elif isinstance(sampler, WeightedRandomSampler) and sampler.generator is not None:
        sampler.generator.manual_seed(seed + epoch)


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic write (a killed job never leaves a half-written checkpoint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Checkpoints hold only tensors and plain Python data, so they load with ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=True)


SLIM_KEYS = ("stage", "epoch", "model", "config", "history", "class_names", "dev")


def slim_checkpoint(path: Path, out: Path) -> Path:
    """A copy of a stage checkpoint without the optimiser, scaler and RNG states (about half the size): small
    enough to copy back from a short-lived GPU machine. It aggregates like the full one and resumes with a fresh
    optimiser."""
    state = load_checkpoint(path)
    save_checkpoint(Path(out), {k: state[k] for k in SLIM_KEYS if k in state})
    return Path(out)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_from_checkpoint(path: Path) -> tuple[AggregatedVAE, dict[str, Any]]:
    """The AggregatedVAE stored in a stage checkpoint (eval mode, CPU) and the checkpoint's config."""
    state = load_checkpoint(path)
    model = AggregatedVAE(network_config(state["config"]))
    model.load_state_dict(state["model"])
    return model.eval(), state["config"]


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


# ----------------------------------------------------------------------------- validation

@torch.no_grad()
def validate(model: AggregatedVAE, volume_set: VolumeSet, stage: str, device: torch.device,
             class_names: tuple[str, ...] = regions.CLASS_NAMES, batch_size: int = 4) -> dict[str, float]:
    """μ-decoded (eval mode) Dice loss, KLD and hard Dice of the bone class; where the defects are known,
    the fraction of defect voxels the decode keeps empty (``val_hole_kept``: 1 = the hole is reproduced)
    and, with a class head, its accuracy."""
    model.eval()  # the training loop puts the trained part back into train mode each epoch
    volumes = volume_set.volumes
    sums = {"val_dice_loss": 0.0, "val_kld": 0.0, "val_dice": 0.0}
    kept, defect_voxels, correct = 0.0, 0.0, 0
    for start in range(0, len(volumes), batch_size):
        x = volumes[start : start + batch_size].float().to(device)
        mu, logvar = model.encode(x)
        logits = model.decode(mu) if stage == "stage2" else model.decode_stage1(mu)
        n = len(x)
        sums["val_dice_loss"] += stages.dice_loss(logits, x).item() * n
        sums["val_kld"] += stages.kl_divergence(mu, logvar).item() * n
        pred, truth = logits.argmax(1) == 1, x[:, 0] >= 0.5
        inter = (pred & truth).flatten(1).sum(1).float()
        total = (pred.flatten(1).sum(1) + truth.flatten(1).sum(1)).float().clamp_min(1)
        sums["val_dice"] += (2 * inter / total).sum().item()
        if volume_set.implants is not None:
            defect = volume_set.implants[start : start + batch_size, 0].to(device) >= 0.5
            kept += (defect & ~pred).sum().item()
            defect_voxels += defect.sum().item()
        if model.classifier is not None and volume_set.classes:
            truth_index = torch.tensor([class_names.index(c) for c in volume_set.classes[start : start + n]])
            correct += int((model.classify(mu).argmax(1).cpu() == truth_index).sum())
    out = {k: v / max(1, len(volumes)) for k, v in sums.items()}
    if defect_voxels:
        out["val_hole_kept"] = kept / defect_voxels
    if model.classifier is not None and volume_set.classes:
        out["val_class_accuracy"] = correct / max(1, len(volumes))
    return out


# ----------------------------------------------------------------------------- one stage

def _stage_settings(cfg: dict, stage: str) -> dict[str, Any]:
    return dict(cfg["stage1" if stage == "baseline" and "baseline" not in cfg else stage])


def _reduce_mean(values: dict[str, float], runtime: Runtime) -> dict[str, float]:
    if not runtime.distributed:
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=runtime.device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / runtime.world_size).tolist(), strict=True))


def warm_start(model: AggregatedVAE, source: str | os.PathLike) -> None:
    """Copy the weights of a model bundle folder or a stage checkpoint into ``model`` (a new machine
    without checkpoints starts from the bundled model). A class head that the source lacks, or whose
    size differs, keeps its fresh initialisation; every other weight must match."""
    path = expand_path(source)
    if path.is_dir():
        from SkullVAECompletionLib.model.bundle import load_bundle

        state = load_bundle(path).model.state_dict()
    else:
        state = load_checkpoint(path)["model"]
    own = model.state_dict()
    head = {k for k in own if k.startswith("classifier.")}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    different = sorted((set(own) - head) - set(usable)) + sorted(set(state) - set(own) - head)
    if different:
        raise SystemExit(f"cannot warm-start from {path}: {len(different)} weights differ from this config's network "
                         f"(e.g. {different[0]}); set init_from: null to train from scratch")
    model.load_state_dict(usable, strict=False)
    log.info("warm start from %s%s", path, " (new class head)" if head - set(usable) else "")


def prepare_model(cfg: dict, stage: str, runtime: Runtime) -> AggregatedVAE:
    """A fresh (or warm-started) model for stage 1 / baseline; for stage 2 the stage-1 weights with the
    encoder frozen."""
    model = AggregatedVAE(network_config(cfg))
    if stage != "stage2" and _stage_settings(cfg, stage).get("init_from"):
        warm_start(model, _stage_settings(cfg, stage)["init_from"])
    if stage == "stage2":
        init = expand_path(cfg["stage2"].get("init_from") or stage_dir(cfg, "stage1") / CHECKPOINT_NAME)
        if init.is_dir():  # a model bundle: its encoder stays frozen, its decoder is trained on
            warm_start(model, init)
        else:
            state = load_checkpoint(init)
            model.load_state_dict(state["model"])
            log.info("stage 2 starts from the stage-1 checkpoint %s (epoch %d)", init, state["epoch"])
    return model.to(runtime.device)


@torch.no_grad()
def training_devs(model: AggregatedVAE, train_set: VolumeSet, device: torch.device,
                  batch_size: int = 8) -> dict[str, np.ndarray]:
    """DEV per defect class from the (frozen) encoder's μ of the un-augmented training volumes: the same
    vectors ``training/aggregate.py`` writes into the bundle."""
    latents = stages.encode_volumes(model, (batch.to(device) for batch in train_set.volumes.split(batch_size)))
    return stages.deviation_vectors(stages.class_centroids(latents, train_set.classes))


def eta_text(history: list[dict[str, Any]], epoch: int, epochs: int, elapsed_s: float, limit_s: float) -> str:
    """'ETA 12 min' from the mean epoch time, capped by the run's time budget."""
    recent = [r["time_s"] for r in history[-5:]] or [0.0]
    remaining = float(np.mean(recent)) * (epochs - epoch)
    if math.isfinite(limit_s):
        remaining = min(remaining, max(0.0, limit_s - elapsed_s))
    return f"ETA {remaining / 60:.1f} min"


def run_stage(cfg: dict, stage: str, resume: bool = False, runtime: Runtime | None = None,
              data: dict[str, VolumeSet] | None = None) -> AggregatedVAE:
    """Train one stage to its configured epoch count (or time limit); returns the trained model."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    runtime = runtime or setup_runtime(cfg)
    settings = _stage_settings(cfg, stage)
    seed = int(cfg["seed"]) + STAGES.index(stage)
    seed_everything(seed)
    out = stage_dir(cfg, stage)
    checkpoint_path = out / CHECKPOINT_NAME
    if checkpoint_path.exists() and not resume and not cfg.get("overwrite", False):
        raise SystemExit(f"{checkpoint_path} exists; pass --resume to continue it or --overwrite to start again")

    data = data or load_volumes(cfg, ("train", "val"))
    train_set, val_set = data["train"], data.get("val")
    class_names = regions.CLASS_NAMES
    model = prepare_model(cfg, stage, runtime)
    if stage == "stage2":
        parameters = stages.freeze_encoder(model)
        trainable: torch.nn.Module = model.decoder
    else:
        parameters = list(model.vae.parameters())
        trainable = model.vae
        if model.classifier is not None:
            parameters += list(model.classifier.parameters())
    optimiser = torch.optim.Adam(parameters, lr=float(settings["lr"]))
    scaler = torch.amp.GradScaler("cuda") if runtime.amp else None
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume and checkpoint_path.exists():
        # The checkpoint is on the CPU; a run started on a GPU resumes on a CPU and back.
        state = load_checkpoint(checkpoint_path)
        model.load_state_dict(state["model"])
        if "optimiser" in state:
            optimiser.load_state_dict(state["optimiser"])
            restore_rng(state["rng"])
        else:
            log.warning("%s is a slim checkpoint (no optimiser state): resuming with a fresh optimiser",
                        checkpoint_path)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        log.info("resuming %s from epoch %d", stage, start_epoch)

    wrapped = DistributedDataParallel(trainable) if runtime.distributed else trainable
    devs: dict[str, np.ndarray] = {}
    table = None
    if stage == "stage2":
        stepper = SimpleNamespace(encode=model.encode, decode=wrapped)
        if float(settings.get("shift_weight", 0.0)) and train_set.classes:
            devs = training_devs(model, train_set, runtime.device)
            table = stages.dev_table(devs, class_names, model.config.latent_size).to(runtime.device)
            log.info("stage 2 learns the shift: |DEV| %s", {k: round(float(np.linalg.norm(v)), 3)
                                                           for k, v in devs.items()})
    else:
        classifier = model.classifier
        if classifier is not None and runtime.distributed:
            classifier = DistributedDataParallel(classifier)
        stepper = SimpleNamespace(vae=wrapped, classifier=classifier)
    weights = stages.Stage1Weights(beta=float(settings.get("beta", 0.0)),
                                   dice_weight=float(settings.get("dice_weight", 80.0)),
                                   defect_weight=float(settings.get("defect_weight", 0.0)),
                                   class_weight=float(settings.get("class_weight", 0.0)) if model.classifier else 0.0)
    loader, sampler = make_loader(train_set, int(settings["batch_size"]), cfg.get("augment"), runtime, seed,
                                  class_names, balanced=settings.get("sampling") == "balanced")
    epochs = int(settings["epochs"])
    limit_s = float(settings.get("time_limit_min") or math.inf) * 60.0
    started = time.perf_counter()
    amp_device = runtime.device.type if runtime.amp else None
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
    for epoch in range(start_epoch, epochs):
        tick = time.perf_counter()
        trainable.train()  # stage 2: only the decoder; the frozen encoder stays in eval mode
        if model.classifier is not None and stage != "stage2":
            model.classifier.train()
        start_epoch_sampling(sampler, seed, epoch)
        sums = dict.fromkeys(TRAIN_LOSSES, 0.0)
        bar = tqdm(loader, desc=f"{stage} {epoch + 1}/{epochs}", leave=False, disable=not runtime.is_main)
        for item in bar:
            batch = to_batch(item, runtime.device)
            if stage == "stage2":
                losses = stages.stage2_step(stepper, batch, optimiser, sample_latent=settings.get("latent") != "mean",
                                            scaler=scaler, amp_device=amp_device,
                                            defect_weight=float(settings.get("defect_weight", 0.0)),
                                            shift_weight=float(settings.get("shift_weight", 0.0)), dev_table=table,
                                            shift_defect_weight=settings.get("shift_defect_weight"))
            else:
                losses = stages.stage1_step(stepper, batch, optimiser, weights, scaler=scaler, amp_device=amp_device)
            for key, attribute in TRAIN_LOSSES.items():
                sums[key] += getattr(losses, attribute)
            bar.set_postfix(dice=f"{losses.dice:.3f}", kld=f"{losses.kld:.2f}")
        row = _reduce_mean({k: v / max(1, len(loader)) for k, v in sums.items()}, runtime)
        if runtime.is_main:
            if val_set is not None and len(val_set):
                row.update(validate(model, val_set, stage, runtime.device, class_names))
            row.update(epoch=epoch + 1, lr=optimiser.param_groups[0]["lr"], time_s=round(time.perf_counter() - tick, 2))
            history.append(row)
            save_checkpoint(checkpoint_path, {
                "stage": stage, "epoch": epoch + 1, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(),
                "config": cfg, "history": history, "class_names": list(class_names),
                "dev": {k: v.tolist() for k, v in devs.items()},
            })
            write_log(out / LOG_NAME, history)
            log.info("%s epoch %d/%d (%s): %s", stage, epoch + 1, epochs,
                     eta_text(history, epoch + 1, epochs, time.perf_counter() - started, limit_s),
                     ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch",)))
        if runtime.distributed:
            dist.barrier()
        if time.perf_counter() - started > limit_s:
            log.warning("%s: time limit of %s min reached after epoch %d; stopping", stage,
                        settings.get("time_limit_min"), epoch + 1)
            break
    return model


# ----------------------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the aggregated β-VAE (see training/README.md)")
    parser.add_argument("stage", nargs="?", choices=STAGES, help="stage to train")
    parser.add_argument("--stage", dest="stage_option", choices=STAGES, help="alternative to the positional stage")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/<stage>/last.pt")
    parser.add_argument("--overwrite", action="store_true", help="start again even if a checkpoint exists")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set stage1.epochs=50 (YAML value; repeatable)")
    args = parser.parse_args(argv)
    args.stage = args.stage or args.stage_option
    if args.stage is None:
        parser.error("give the stage: stage1, stage2 or baseline")
    return args


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["stage1.epochs=50", "output_dir=/x"]`` → nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = parse_overrides(args.overrides)
    if args.overwrite:
        overrides["overwrite"] = True
    cfg = load_config(args.config, overrides)
    runtime = setup_runtime(cfg)
    if not runtime.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        run_stage(cfg, args.stage, resume=args.resume, runtime=runtime)
    finally:
        if runtime.distributed and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
