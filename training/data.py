"""Readers for the skull data layouts users own, preprocessing through the engine's geometry, and a Dataset.

Layouts (auto-detected by `scan_dataset`), NRRD or NIfTI files (.nrrd, .nii, .nii.gz) everywhere:
- generated: this project's generator output (`cases.csv`), groups = source deformation ids;
- skullbreak: complete_skull/, defective_skull/{bilateral,frontoorbital,parietotemporal,random_1,random_2}/,
  implant/{same}/ (AutoImplant 2021);
- skullfix: complete_skull/, defective_skull/, implant/ (AutoImplant 2020);
- skullvae: complete/, facial/, cranial/ (the extended SkullFix set of the skullVAE paper);
- folder: a flat folder of complete skulls.
Files are paired by stem (`000.nrrd` <-> `000.nii.gz`); the stem is the group id (one patient), so a
split by group never puts the same skull in two splits.

Preprocessing goes through `SkullVAECompletionLib.preprocessing.geometry`: the mapping is planned on the DEFECTIVE
(input) skull and applied to the complete skull and the implant alike, exactly as at inference. The
model-grid volumes are cached as float16 .npy files keyed by (file paths, mtimes, sizes, grid spec).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LABELS = ("complete", "cranial", "facial")
SKULLBREAK_SUBTYPES = ("bilateral", "frontoorbital", "parietotemporal", "random_1", "random_2")
CACHE_VERSION = 1


@dataclass(frozen=True)
class CaseRecord:
    """One training volume: `defective` is the model input (for complete cases: the complete skull itself)."""

    case_id: str
    label: str  # "complete" | "cranial" | "facial"
    subtype: str
    defective: Path
    complete: Path | None = None
    implant: Path | None = None  # None with a complete skull: implant = complete AND NOT defective
    group: str = ""
    split: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


# ----------------------------------------------------------------------------- file helpers

def _engine():
    """The engine package (import lazily: training/ must import without SkullVAECompletion on sys.path)."""
    import SkullVAECompletionLib.imageio.volumes as io
    import SkullVAECompletionLib.preprocessing.geometry as geometry

    return geometry, io


def volume_stem(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nhdr", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def list_volumes(folder: Path) -> dict[str, Path]:
    """Volume files of a folder by stem (sorted)."""
    if not folder.is_dir():
        return {}
    files = [p for p in sorted(folder.iterdir())
             if p.is_file() and p.name.lower().endswith((".nrrd", ".nhdr", ".nii", ".nii.gz"))]
    return {volume_stem(p): p for p in files}


def read_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 0/1 (i, j, k) mask, IJK->RAS) via the engine's reader; any non-zero voxel is bone."""
    _, io = _engine()
    array, matrix, _ = io.read_mask(path)
    return (np.asarray(array) > 0).astype(np.uint8), np.asarray(matrix, float)


# ----------------------------------------------------------------------------- layouts

def scan_generated(root: Path) -> list[CaseRecord]:
    """The generator's output: cases.csv rows; group = source deformation id, split as generated."""
    out = []
    with open(root / "cases.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            out.append(CaseRecord(
                case_id=row["case_id"], label=row["label"], subtype=row["subtype"],
                defective=root / row["defective"], complete=root / row["complete"],
                implant=(root / row["implant"]) if row["implant"] else None,
                group=f"src{int(row['source_id']):03d}", split=row["split"] or None))
    return out


def scan_skullfix(root: Path) -> list[CaseRecord]:
    """SkullFix: complete_skull/, defective_skull/, implant/ with matching stems."""
    comp, defe, imp = (list_volumes(root / n) for n in ("complete_skull", "defective_skull", "implant"))
    out = [CaseRecord(f"{s}_complete", "complete", "complete", p, p, None, s) for s, p in comp.items()]
    out += [CaseRecord(f"{s}_skullfix", "cranial", "skullfix", p, comp.get(s), imp.get(s), s) for s, p in defe.items()]
    return out


def scan_skullbreak(root: Path) -> list[CaseRecord]:
    """SkullBreak: complete_skull/, defective_skull/<subtype>/, implant/<subtype>/."""
    comp = list_volumes(root / "complete_skull")
    out = [CaseRecord(f"{s}_complete", "complete", "complete", p, p, None, s) for s, p in comp.items()]
    subs = sorted(p.name for p in (root / "defective_skull").iterdir() if p.is_dir())
    for sub in subs:
        imp = list_volumes(root / "implant" / sub)
        for s, p in list_volumes(root / "defective_skull" / sub).items():
            out.append(CaseRecord(f"{s}_{sub}", "cranial", sub, p, comp.get(s), imp.get(s), s))
    return out


def scan_skullvae(root: Path) -> list[CaseRecord]:
    """skullVAE set: complete/, facial/, cranial/; pairs by stem when the complete skull exists."""
    comp = list_volumes(root / "complete")
    out = [CaseRecord(f"{s}_complete", "complete", "complete", p, p, None, s) for s, p in comp.items()]
    for label in ("cranial", "facial"):
        for s, p in list_volumes(root / label).items():
            out.append(CaseRecord(f"{s}_{label}", label, label, p, comp.get(s), None, s))
    return out


def scan_folder(root: Path, label: str = "complete") -> list[CaseRecord]:
    """A flat folder of skull masks, all of one class."""
    return [CaseRecord(f"{s}_{label}", label, label, p, p if label == "complete" else None, None, s)
            for s, p in list_volumes(root).items()]


def detect_layout(root: Path) -> str:
    root = Path(root)
    if (root / "cases.csv").is_file():
        return "generated"
    if (root / "defective_skull").is_dir():
        has_sub = any(p.is_dir() for p in (root / "defective_skull").iterdir())
        return "skullbreak" if has_sub else "skullfix"
    if (root / "complete").is_dir() or (root / "cranial").is_dir() or (root / "facial").is_dir():
        return "skullvae"
    if list_volumes(root):
        return "folder"
    raise ValueError(f"{root}: no known skull data layout (generated / skullbreak / skullfix / skullvae / folder)")


SCANNERS = {"generated": scan_generated, "skullfix": scan_skullfix, "skullbreak": scan_skullbreak,
            "skullvae": scan_skullvae, "folder": scan_folder}


def scan_dataset(root: str | Path, layout: str = "auto") -> list[CaseRecord]:
    """All case records of a data folder (layout auto-detected unless given)."""
    root = Path(root)
    layout = detect_layout(root) if layout == "auto" else layout
    records = SCANNERS[layout](root)
    log.info("%s: %d cases (%s layout)", root, len(records), layout)
    return records


def split_records(records: list[CaseRecord], fractions: dict[str, float], seed: int = 0) -> list[CaseRecord]:
    """Assign splits by group (records that already carry a split keep it)."""
    groups = sorted({r.group for r in records if r.split is None})
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    names, total = list(fractions), sum(fractions.values())
    bounds = np.round(np.cumsum([fractions[n] / total for n in names]) * len(order)).astype(int)
    of_group, start = {}, 0
    for name, end in zip(names, bounds, strict=True):
        of_group.update({g: name for g in order[start:end]})
        start = end
    return [r if r.split is not None else dataclasses.replace(r, split=of_group[r.group]) for r in records]


# ----------------------------------------------------------------------------- preprocessing + cache

def _file_key(path: Path | None) -> str:
    if path is None:
        return "-"
    st = os.stat(path)
    return f"{Path(path).resolve()}|{st.st_mtime_ns}|{st.st_size}"


def cache_key(rec: CaseRecord, grid: Any) -> str:
    geometry, _ = _engine()
    files = [_file_key(rec.defective), _file_key(rec.complete), _file_key(rec.implant)]
    spec = {"v": CACHE_VERSION, "geometry": geometry.GEOMETRY_VERSION, "grid": grid.to_dict(), "files": files}
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def cached_entry(rec: CaseRecord, grid: Any, cache: Path) -> dict[str, Any] | None:
    """The cache entry of a case already preprocessed for this grid, else None."""
    meta_path = Path(cache) / f"{cache_key(rec, grid)}.json"
    return json.loads(meta_path.read_text()) if meta_path.exists() else None


def preprocess_record(rec: CaseRecord, grid: Any, cache: Path) -> dict[str, Any]:
    """Model-grid volumes of one case (float16 bone fractions), cached; returns the cache entry."""
    cache.mkdir(parents=True, exist_ok=True)
    entry = cached_entry(rec, grid, cache)
    if entry is not None:
        return entry
    key = cache_key(rec, grid)
    meta_path = cache / f"{key}.json"
    geometry, _ = _engine()
    defective, m_def = read_binary(rec.defective)
    # Plan on the defective skull (the model input), apply to all: what inference does.
    mapping = geometry.plan_mapping(defective, m_def, grid)
    vols = {"input": geometry.to_model_grid(defective, mapping)}
    complete = None
    if rec.complete is not None:
        complete, m_c = (defective, m_def) if rec.complete == rec.defective else read_binary(rec.complete)
        vols["complete"] = geometry.to_model_grid(complete, _remap(mapping, complete, m_c))
    if rec.implant is not None:
        implant, m_i = read_binary(rec.implant)
        vols["implant"] = geometry.to_model_grid(implant, _remap(mapping, implant, m_i))
    elif complete is not None and rec.label != "complete":
        if complete.shape != defective.shape:
            raise ValueError(f"{rec.case_id}: complete and defective skulls are on different grids")
        implant = (complete > 0) & ~(defective > 0)
        if implant.any():
            vols["implant"] = geometry.to_model_grid(implant.astype(np.uint8), mapping)
        else:
            vols["implant"] = np.zeros(grid.shape, np.float32)
    entry = {"case": rec.to_dict(), "model_to_ras": mapping.model_to_ras.tolist(), "files": {}}
    for name, vol in vols.items():
        p = cache / f"{key}_{name}.npy"
        _save_npy(p, vol.astype(np.float16))
        entry["files"][name] = p.name
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, meta_path)
    return entry


def _remap(mapping: Any, mask: np.ndarray, ijk_to_ras: np.ndarray) -> Any:
    """Same model placement, another input grid (complete/implant files may have their own geometry)."""
    return dataclasses.replace(mapping, input_shape=tuple(int(s) for s in mask.shape),
                               ijk_to_ras=np.asarray(ijk_to_ras, float))


def _preprocess_star(args: tuple[CaseRecord, Any, Path]) -> dict[str, Any]:
    return preprocess_record(*args)


def _one_torch_thread() -> None:
    """A preprocessing worker resamples with one torch thread: N workers × N threads oversubscribe the cores (on the
    16-core GPU machine the cache took 1.6 s a case per worker, against 0.12 s in one process on 2 cores)."""
    import torch

    torch.set_num_threads(1)


def preprocess_all(records: list[CaseRecord], grid: Any, cache: str | Path, workers: int = 1,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Preprocess (or load from cache) every record; returns cache entries in record order."""
    from tqdm import tqdm

    cache = Path(cache)
    entries = [cached_entry(r, grid, cache) for r in records]
    missing = [i for i, entry in enumerate(entries) if entry is None]
    jobs = [(records[i], grid, cache) for i in missing]
    if workers <= 1 or len(jobs) <= 1:
        computed = [preprocess_record(*j) for j in tqdm(jobs, desc="preprocess", disable=not progress or not jobs)]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # "spawn": a forked child of a process whose torch / OpenMP thread pool already ran can hang for ever (it
        # did in training.aggregate, which loads the model first); chunks keep the per-case overhead small.
        chunk = max(1, len(jobs) // (workers * 8))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_torch_thread) as pool:
            computed = list(tqdm(pool.map(_preprocess_star, jobs, chunksize=chunk), total=len(jobs),
                                 desc="preprocess", disable=not progress))
    for i, entry in zip(missing, computed, strict=True):
        entries[i] = entry
    return entries


def load_entry(entry: dict[str, Any], cache: str | Path, name: str = "input") -> np.ndarray | None:
    f = entry["files"].get(name)
    return None if f is None else np.load(Path(cache) / f)


# ----------------------------------------------------------------------------- torch Dataset

class ModelGridDataset:
    """torch Dataset over cached model-grid volumes.

    Item: {"input": (1, *grid) float32 bone fraction (or 0/1 with `binarize`), "complete"/"implant" when
    known (zeros otherwise, with "has_complete"/"has_implant" flags), "label": int index into LABELS,
    "case_id": str}. Volumes are loaded lazily (or kept in memory with `in_memory`).
    """

    def __init__(self, entries: list[dict[str, Any]], cache: str | Path, binarize: bool = False,
                 in_memory: bool = False) -> None:
        self.entries, self.cache, self.binarize = list(entries), Path(cache), binarize
        self._mem: dict[tuple[int, str], np.ndarray] = {}
        self.in_memory = in_memory

    def __len__(self) -> int:
        return len(self.entries)

    def _vol(self, i: int, name: str) -> np.ndarray | None:
        if self.in_memory and (i, name) in self._mem:
            return self._mem[(i, name)]
        v = load_entry(self.entries[i], self.cache, name)
        if v is not None and self.in_memory:
            self._mem[(i, name)] = v
        return v

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        e = self.entries[i]
        out: dict[str, Any] = {"case_id": e["case"]["case_id"], "label": LABELS.index(e["case"]["label"])}
        ref = None
        for name in ("input", "complete", "implant"):
            v = self._vol(i, name)
            out[f"has_{name}"] = v is not None
            if v is None:
                v = np.zeros_like(ref)
            ref = v if ref is None else ref
            t = torch.from_numpy(np.asarray(v, np.float32))[None]
            out[name] = (t >= 0.5).float() if self.binarize else t
        return out
