"""Data side of training/: layout readers, generator determinism, splits, implants, defect regions.

Tiny data only, written to tmp_path; no network: the generator runs on a synthetic ellipsoidal shell.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from SkullVAECompletionLib.imageio.volumes import read_mask, write_mask
from training import data, generate

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "data_small.yaml"


# ----------------------------------------------------------------------------- helpers

def _shell(shape=(24, 28, 22), hole: slice | None = None) -> np.ndarray:
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(x ** 2 for x in g))
    m = ((r < 0.9) & (r > 0.7)).astype(np.uint8)
    if hole is not None:
        m[:, :, hole] = 0
    return m


AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])


def _write(path: Path, arr: np.ndarray) -> Path:
    return write_mask(path, arr, AFFINE)  # NRRD or NIfTI by the file's suffix


@pytest.fixture(scope="module")
def small_cfg() -> dict:
    """data_small.yaml made tiny: coarse spacing, few sources, no process pool."""
    cfg = generate.load_config(CONFIG)
    cfg = copy.deepcopy(cfg)
    cfg.update(n_sources=6, workers=1, seed=7)
    cfg["grid"].update(spacing_inplane_mm=[2.5, 3.0], spacing_slice_mm=[2.5, 3.5], crop_bottom_mm=[0.0, 5.0])
    cfg["defects"]["sphere"]["opening_mm"] = 3.0
    cfg["defects"]["min_implant_ml"] = 1.0
    cfg["defects"]["clinical_per_source"] = 0  # the clinical families have a test of their own
    return cfg


@pytest.fixture(scope="module")
def shell_template() -> tuple[np.ndarray, np.ndarray]:
    return generate.synthetic_template(spacing=2.0)


# ----------------------------------------------------------------------------- readers

@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz", ".nii"])
def test_skullfix_layout(tmp_path: Path, ext: str) -> None:
    comp, defe = _shell(), _shell(hole=slice(16, 22))
    for stem in ("000", "001"):
        _write(tmp_path / "complete_skull" / f"{stem}{ext}", comp)
        _write(tmp_path / "defective_skull" / f"{stem}{ext}", defe)
        _write(tmp_path / "implant" / f"{stem}{ext}", comp & ~defe)
    assert data.detect_layout(tmp_path) == "skullfix"
    recs = data.scan_dataset(tmp_path)
    assert sorted(r.label for r in recs) == ["complete", "complete", "cranial", "cranial"]
    cr = next(r for r in recs if r.label == "cranial" and r.group == "000")
    assert cr.complete is not None and cr.implant is not None and cr.subtype == "skullfix"
    arr, m = data.read_binary(cr.defective)
    assert arr.shape == comp.shape and np.array_equal(arr, defe)
    np.testing.assert_allclose(m, AFFINE, atol=1e-6)


def test_skullbreak_layout(tmp_path: Path) -> None:
    comp = _shell()
    _write(tmp_path / "complete_skull" / "000.nrrd", comp)
    for i, sub in enumerate(data.SKULLBREAK_SUBTYPES):
        d = _shell(hole=slice(10 + i, 14 + i))
        _write(tmp_path / "defective_skull" / sub / "000.nrrd", d)
        _write(tmp_path / "implant" / sub / "000.nrrd", comp & ~d)
    assert data.detect_layout(tmp_path) == "skullbreak"
    recs = data.scan_dataset(tmp_path)
    assert len(recs) == 6
    assert {r.subtype for r in recs if r.label == "cranial"} == set(data.SKULLBREAK_SUBTYPES)
    assert all(r.group == "000" for r in recs)


def test_skullvae_layout_nifti_and_nrrd(tmp_path: Path) -> None:
    _write(tmp_path / "complete" / "a.nii.gz", _shell())
    _write(tmp_path / "cranial" / "a.nrrd", _shell(hole=slice(18, 22)))
    _write(tmp_path / "facial" / "a.nii", _shell(hole=slice(0, 5)))
    _write(tmp_path / "facial" / "b.nii", _shell(hole=slice(0, 5)))
    recs = data.scan_dataset(tmp_path)
    assert data.detect_layout(tmp_path) == "skullvae"
    labels = sorted((r.label, r.group) for r in recs)
    assert labels == [("complete", "a"), ("cranial", "a"), ("facial", "a"), ("facial", "b")]
    fa = next(r for r in recs if r.label == "facial" and r.group == "a")
    assert fa.complete is not None and fa.complete.name == "a.nii.gz"
    assert next(r for r in recs if r.group == "b").complete is None


def test_split_by_group(tmp_path: Path) -> None:
    recs = [data.CaseRecord(f"{g}_{k}", "cranial", "x", Path(f"{g}_{k}.nrrd"), group=str(g))
            for g in range(20) for k in range(3)]
    out = data.split_records(recs, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
    by_group: dict[str, set] = {}
    for r in out:
        by_group.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in by_group.values())
    assert {r.split for r in out} == {"train", "val", "test"}


def test_preprocess_and_dataset(tmp_path: Path) -> None:
    geometry = pytest.importorskip("SkullVAECompletionLib.preprocessing.geometry")
    comp, defe = _shell(), _shell(hole=slice(16, 22))
    _write(tmp_path / "ds" / "complete" / "a.nrrd", comp)
    _write(tmp_path / "ds" / "cranial" / "a.nrrd", defe)
    recs = data.scan_dataset(tmp_path / "ds")
    grid = geometry.GridSpec(shape=(16, 16, 16), spacing_mm=4.0)
    torch = pytest.importorskip("torch")
    torch.ones(64, 64) @ torch.ones(64, 64)  # torch's thread pool has run: forked workers could hang after this
    entries = data.preprocess_all(recs, grid, tmp_path / "cache", workers=2, progress=False)  # spawned workers
    again = data.preprocess_all(recs, grid, tmp_path / "cache", progress=False)  # from the cache
    alone = data.preprocess_all(recs, grid, tmp_path / "cache_in_process", progress=False)
    assert entries == again
    for entry, other in zip(entries, alone, strict=True):
        for name, file in entry["files"].items():
            spawned, in_process = tmp_path / "cache" / file, tmp_path / "cache_in_process" / other["files"][name]
            assert np.array_equal(np.load(spawned), np.load(in_process))
    ds = data.ModelGridDataset(entries, tmp_path / "cache")
    item = ds[[e["case"]["label"] for e in entries].index("cranial")]
    assert item["input"].shape == (1, 16, 16, 16) and item["has_complete"] and item["has_implant"]
    assert float(item["implant"].sum()) > 0
    assert float(item["complete"].sum()) > float(item["input"].sum())


# ----------------------------------------------------------------------------- generator

def test_generator_deterministic(small_cfg: dict, shell_template) -> None:
    tpl = generate.make_template(*shell_template)
    a = generate.generate_source(2, tpl, small_cfg)
    b = generate.generate_source(2, tpl, small_cfg)
    c = generate.generate_source(3, tpl, small_cfg)
    assert np.array_equal(a["complete"], b["complete"]) and np.allclose(a["ijk_to_ras"], b["ijk_to_ras"])
    for da, db in zip(a["defects"], b["defects"], strict=True):
        assert np.array_equal(da["defective"], db["defective"])
    other_seed = dict(small_cfg, seed=small_cfg["seed"] + 1)
    d = generate.generate_source(2, tpl, other_seed)
    assert a["complete"].shape != c["complete"].shape or not np.array_equal(a["complete"], c["complete"])
    assert a["complete"].shape != d["complete"].shape or not np.array_equal(a["complete"], d["complete"])


def test_extra_training_sources_keep_the_validation_and_test_sources() -> None:
    """A larger training population (the GPU recipe) is evaluated on exactly the same held-out sources."""
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    base = generate.assign_splits(60, fractions, seed=1234)
    extended = generate.assign_splits(60, fractions, seed=1234, extra_train_sources=336)
    assert {k: extended[k] for k in base} == base and len(extended) == 396
    assert {extended[sid] for sid in range(60, 396)} == {"train"}
    assert sorted(s for s, v in base.items() if v == "test") == sorted(s for s, v in extended.items() if v == "test")


def test_generated_dataset_files(tmp_path: Path, small_cfg: dict, shell_template) -> None:
    rows = generate.generate_dataset(small_cfg, tmp_path / "gen", template=shell_template, progress=False)
    # Splits never share a source deformation.
    split_of: dict[int, set] = {}
    for r in rows:
        split_of.setdefault(r["source_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())
    # The readers understand the generator's output.
    recs = data.scan_dataset(tmp_path / "gen")
    assert data.detect_layout(tmp_path / "gen") == "generated" and len(recs) == len(rows)
    # implant = complete AND NOT defective, on the same grid.
    for r in [x for x in recs if x.label != "complete"][:4]:
        comp, mc, _ = read_mask(r.complete)
        defe, md, _ = read_mask(r.defective)
        imp, mi, _ = read_mask(r.implant)
        assert comp.shape == defe.shape == imp.shape
        np.testing.assert_allclose(mc, md)
        np.testing.assert_allclose(mc, mi)
        assert np.array_equal(imp > 0, (comp > 0) & ~(defe > 0)) and imp.any()


def _centroid_ras(mask: np.ndarray, m: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask > 0)
    return (idx @ m[:3, :3].T + m[:3, 3]).mean(0)


def test_defect_classes_sit_in_their_regions(small_cfg: dict, shell_template) -> None:
    cfg = copy.deepcopy(small_cfg)
    cfg["pose"].update(max_rotation_deg=0.0, max_translation_mm=0.0)
    cfg["grid"]["index_flip_prob"] = 0.5  # regions must hold whatever the index directions
    cfg["defects"].update(cranial_per_source=5, facial_per_source=1)
    tpl = generate.make_template(*shell_template)
    seen = set()
    for sid in range(3):
        res = generate.generate_source(sid, tpl, cfg)
        m = res["ijk_to_ras"]
        idx = np.argwhere(res["complete"])
        pts = idx @ m[:3, :3].T + m[:3, 3]
        lo, hi = pts.min(0), pts.max(0)
        ctr, half = (lo + hi) / 2, (hi - lo) / 2
        for d in res["defects"]:
            c = (_centroid_ras(d["implant"], m) - ctr) / half  # normalised: -1..1 per axis
            st = d["subtype"]
            seen.add(st)
            if st == "bilateral":
                assert c[2] > 0.5 and abs(c[0]) < 0.3, (st, c)
            elif st == "frontoorbital":
                assert c[1] > 0.5 and c[2] < 0.5, (st, c)
            elif st == "parietotemporal":
                assert abs(c[0]) > 0.5 and abs(c[0]) > abs(c[1]), (st, c)
            elif st == "random":
                assert c[2] > 0.0, (st, c)
            elif st == "skullfix":
                assert c[2] > 0.4, (st, c)
            elif st == "facial":
                assert c[1] > 0.5 and c[2] < 0.0 and d["label"] == "facial", (st, c)
            assert d["implant_ml"] >= cfg["defects"]["min_implant_ml"]
    assert seen == {"bilateral", "frontoorbital", "parietotemporal", "random", "skullfix", "facial"}


def test_clinical_families_sit_where_they_belong(small_cfg: dict, shell_template) -> None:
    """Each clinical family is drawn, lies in its region with its size, and leaves the other defects unchanged."""
    from scipy import ndimage

    cfg = copy.deepcopy(small_cfg)
    cfg["pose"].update(max_rotation_deg=0.0, max_translation_mm=0.0)
    families = cfg["defects"]["clinical_subtypes"]
    cfg["defects"]["clinical_per_source"] = len(families)
    cfg["defects"]["clinical"]["burr"]["with_other_prob"] = 0.0  # burr holes alone: the smallest defect
    tpl = generate.make_template(*shell_template)
    res = generate.generate_source(1, tpl, cfg)
    plain = copy.deepcopy(cfg)
    plain["defects"]["clinical_per_source"] = 0
    without = generate.generate_source(1, tpl, plain)
    for before, after in zip(without["defects"], res["defects"], strict=False):
        assert before["subtype"] == after["subtype"] and np.array_equal(before["implant"], after["implant"])
    m = res["ijk_to_ras"]
    pts = np.argwhere(res["complete"]) @ m[:3, :3].T + m[:3, 3]
    ctr, half = (pts.min(0) + pts.max(0)) / 2, (pts.max(0) - pts.min(0)) / 2
    clinical = {d["subtype"]: d for d in res["defects"][len(without["defects"]):]}
    assert set(clinical) == set(families)
    centre = {name: (_centroid_ras(d["implant"], m) - ctr) / half for name, d in clinical.items()}
    volume = {name: d["implant_ml"] for name, d in clinical.items()}
    assert abs(centre["hemicraniectomy"][0]) > 0.4, centre["hemicraniectomy"]
    assert centre["bifrontal"][1] > 0.4 and abs(centre["bifrontal"][0]) < 0.2, centre["bifrontal"]
    assert centre["vertex_large"][2] > 0.5, centre["vertex_large"]
    assert centre["occipital_large"][1] < -0.4 and abs(centre["occipital_large"][0]) < 0.2, centre["occipital_large"]
    # The flaps are the largest defects; burr holes the smallest, several of them.
    assert min(volume[n] for n in ("hemicraniectomy", "bifrontal", "vertex_large")) > volume["burr"]
    for name, at_least in (("multi", 2), ("burr", 2)):
        _, pieces = ndimage.label(clinical[name]["implant"], structure=np.ones((3, 3, 3), bool))
        assert pieces >= at_least, (name, pieces)
