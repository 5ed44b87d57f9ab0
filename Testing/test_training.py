"""Smoke tests of training/: every stage through its real entry point, checkpoint + resume, export round trip.

A tiny grid and synthetic shells (training/configs/smoke.yaml) keep the whole file well under a minute.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from SkullVAECompletionLib.inference import regions
from SkullVAECompletionLib.inference.completion import SkullCompleter
from SkullVAECompletionLib.model.bundle import load_bundle
from SkullVAECompletionLib.synthetic import defective_pair
from training import train
from training.aggregate import aggregate

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "training" / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("skullvae_work")


@pytest.fixture(scope="module")
def smoke_cfg(workdir: Path) -> dict:
    mp = pytest.MonkeyPatch()
    mp.setenv("SKULLVAE_WORK", str(workdir))
    yield train.load_config(SMOKE)
    mp.undo()


@pytest.fixture(scope="module")
def smoke_data(smoke_cfg: dict) -> dict:
    return train.load_volumes(smoke_cfg, ("train", "val"))


def _log_rows(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_configs_load_and_build() -> None:
    """Every shipped config parses, and its grid and network agree (the paper's config is one file away)."""
    for name in ("bundled_cpu", "bundled_gpu", "baseline_small_beta", "paper_full", "smoke"):
        cfg = train.load_config(ROOT / "training" / "configs" / f"{name}.yaml")
        network = train.network_config(cfg)
        assert tuple(network.grid) == tuple(cfg["grid"]["shape"])
        for stage in ("stage1", "stage2", "baseline"):
            assert {"lr", "batch_size", "epochs"} <= set(cfg[stage])
    paper = train.network_config(train.load_config(ROOT / "training" / "configs" / "paper_full.yaml"))
    assert paper.channels == (32, 64, 64, 128, 128, 256) and paper.strides == (2,) * 6
    assert train.load_config(ROOT / "training" / "configs" / "baseline_small_beta.yaml")["baseline"]["beta"] == 1e-4


def test_stage1_cli_checkpoint_and_resume(smoke_cfg: dict, workdir: Path) -> None:
    train.main(["stage1", "--config", str(SMOKE)])
    checkpoint = train.stage_dir(smoke_cfg, "stage1") / train.CHECKPOINT_NAME
    state = train.load_checkpoint(checkpoint)  # weights_only=True
    assert state["epoch"] == smoke_cfg["stage1"]["epochs"]
    assert {"model", "optimiser", "rng", "config", "history"} <= set(state)
    rows = _log_rows(checkpoint.parent / train.LOG_NAME)
    assert len(rows) == state["epoch"] and {"train_dice_loss", "train_kld", "val_dice_loss", "val_kld"} <= set(rows[0])
    # The defect band and the class head are trained and measured (smoke.yaml inherits the bundled weights).
    assert float(rows[0]["train_defect"]) > 0 and float(rows[0]["train_classification"]) > 0
    assert 0 <= float(rows[-1]["val_hole_kept"]) <= 1 and 0 <= float(rows[-1]["val_class_accuracy"]) <= 1
    assert any(k.startswith("classifier.") for k in state["model"])
    with pytest.raises(SystemExit):  # a second run must not silently overwrite the checkpoint
        train.main(["stage1", "--config", str(SMOKE)])
    # Resume with one more epoch: continues at the stored epoch, keeps the history.
    longer = {**smoke_cfg, "stage1": {**smoke_cfg["stage1"], "epochs": state["epoch"] + 1}}
    train.run_stage(longer, "stage1", resume=True)
    resumed = train.load_checkpoint(checkpoint)
    assert resumed["epoch"] == state["epoch"] + 1
    assert len(resumed["history"]) == state["epoch"] + 1
    changed = [not torch.equal(resumed["model"][k], state["model"][k]) for k in state["model"] if "vae" in k]
    assert any(changed)


def test_a_gpu_checkpoint_resumes_on_the_cpu(smoke_cfg: dict) -> None:
    """A checkpoint written by a CUDA run (GradScaler state, CUDA RNG state) resumes on a CPU-only machine."""
    checkpoint = train.stage_dir(smoke_cfg, "stage1") / train.CHECKPOINT_NAME
    state = train.load_checkpoint(checkpoint)
    state["scaler"] = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 3}
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    train.save_checkpoint(checkpoint, state)
    longer = {**smoke_cfg, "stage1": {**smoke_cfg["stage1"], "epochs": state["epoch"] + 1}}
    train.run_stage(longer, "stage1", resume=True)
    assert train.load_checkpoint(checkpoint)["epoch"] == state["epoch"] + 1


def test_a_slim_checkpoint_is_smaller_and_resumes(smoke_cfg: dict, tmp_path: Path) -> None:
    """The slim copy a GPU machine sends back keeps the weights, config and history, drops the optimiser,
    and a run resumes from it (with a fresh optimiser)."""
    checkpoint = train.stage_dir(smoke_cfg, "stage1") / train.CHECKPOINT_NAME
    full = train.load_checkpoint(checkpoint)
    slim = train.slim_checkpoint(checkpoint, tmp_path / "slim.pt")
    state = train.load_checkpoint(slim)
    assert "optimiser" not in state and "rng" not in state
    assert state["epoch"] == full["epoch"] and len(state["history"]) == len(full["history"])
    assert all(torch.equal(state["model"][k], v) for k, v in full["model"].items())
    assert slim.stat().st_size < 0.6 * checkpoint.stat().st_size
    cfg = {**smoke_cfg, "output_dir": str(tmp_path / "resumed"),
           "stage1": {**smoke_cfg["stage1"], "epochs": full["epoch"] + 1}}
    target = train.stage_dir(cfg, "stage1") / train.CHECKPOINT_NAME
    target.parent.mkdir(parents=True)
    target.write_bytes(slim.read_bytes())
    train.run_stage(cfg, "stage1", resume=True)
    resumed = train.load_checkpoint(target)
    assert resumed["epoch"] == full["epoch"] + 1 and "optimiser" in resumed


def test_stage2_freezes_encoder_and_baseline_trains(smoke_cfg: dict, smoke_data: dict) -> None:
    stage1 = train.load_checkpoint(train.stage_dir(smoke_cfg, "stage1") / train.CHECKPOINT_NAME)
    model = train.run_stage({**smoke_cfg, "overwrite": True}, "stage2", data=smoke_data)
    state = model.state_dict()
    encoder_keys = [k for k in state if k.startswith("vae.encode") or k.startswith("vae.mu") or "logvar" in k]
    assert encoder_keys and all(torch.equal(state[k].cpu(), stage1["model"][k]) for k in encoder_keys)
    assert any(not torch.equal(state[k].cpu(), stage1["model"][k]) for k in state if k.startswith("decoder."))
    rows = _log_rows(train.stage_dir(smoke_cfg, "stage2") / train.LOG_NAME)
    assert rows and float(rows[0]["train_shift"]) > 0 and float(rows[0]["train_defect"]) > 0
    stage2 = train.load_checkpoint(train.stage_dir(smoke_cfg, "stage2") / train.CHECKPOINT_NAME)
    assert "facial" in stage2["dev"] and stage2["class_names"] == list(regions.CLASS_NAMES)
    train.main(["baseline", "--config", str(SMOKE), "--overwrite"])
    baseline = train.load_checkpoint(train.stage_dir(smoke_cfg, "baseline") / train.CHECKPOINT_NAME)
    assert baseline["epoch"] == smoke_cfg["baseline"]["epochs"]


def test_export_load_complete_round_trip(smoke_cfg: dict, workdir: Path) -> None:
    folder = aggregate(smoke_cfg)
    bundle = load_bundle(folder)
    assert bundle.model_id == smoke_cfg["name"]
    # Region classes: the synthetic shells' cranial defect lies in one region; facial is its own class.
    assert "facial" in bundle.dev and len(bundle.dev) == 2 and set(bundle.default_gamma) == set(bundle.dev)
    assert bundle.defect_classes == [c for c in regions.DEFECT_CLASSES if c in bundle.dev]
    assert bundle.class_names == list(regions.CLASS_NAMES) and bundle.model.classifier is not None
    assert bundle.paired_latents["defective"].shape == bundle.paired_latents["delta"].shape
    manifest = bundle.manifest
    assert manifest["completion"]["method"] in ("dev", "knn", "refine")
    assert len(manifest["training_config_sha256"]) == 64 and "synthetic" in manifest["data_description"]
    expected = {"data", "config", "seed", "git_commit", "date", "provenance", "stage1", "stage2"}
    assert expected <= set(manifest["training"])
    complete, defective, matrix = defective_pair("cranial")
    cranial = next(c for c in bundle.defect_classes if c != "facial")
    result = SkullCompleter(bundle, device="cpu").run(defective, matrix, gamma=1.0, defect_type=cranial)
    assert result.completed.shape == defective.shape and result.implant.dtype == np.uint8
    assert not np.any(result.implant & defective)


def test_bundled_model_loads_and_completes() -> None:
    """The shipped bundle (Resources/Models/skullvae-cranium-population) verifies, loads and completes a skull."""
    from SkullVAECompletionLib.model.bundle import DEFAULT_MODEL_NAME, resources_dir

    folder = resources_dir() / "Models" / DEFAULT_MODEL_NAME
    if not (folder / "manifest.json").exists():
        pytest.skip("the bundled model has not been exported yet")
    bundle = load_bundle(folder)
    assert bundle.model_id == DEFAULT_MODEL_NAME and bundle.class_names == list(regions.CLASS_NAMES)
    assert bundle.defect_classes == list(regions.DEFECT_CLASSES) and bundle.model.classifier is not None
    assert sum(f.stat().st_size for f in folder.iterdir()) < 50 * 2**20
    complete, defective, matrix = defective_pair("cranial")
    result = SkullCompleter(bundle, device="cpu").run(defective, matrix)
    assert result.completed.shape == defective.shape and result.method == bundle.completion_options["method"]


def test_flip_swaps_left_and_right_classes(smoke_data: dict) -> None:
    """A left-right flipped training item carries the mirrored region class; the defect moves with it."""
    volume = torch.rand((1, 1, 8, 6, 4)).half()  # not left-right symmetric: a flip is visible
    volume_set = train.VolumeSet(volume, ["cranial"], ["x"], implants=volume.clone(), completes=volume.clone(),
                                 classes=["parietotemporal_left"])
    dataset = train.AugmentedVolumes(volume_set, regions.CLASS_NAMES, {"flip_lr": True})
    original = volume_set.volumes[0].float()
    seen = set()
    torch.manual_seed(0)
    for _ in range(12):
        item = dataset[0]
        name = regions.CLASS_NAMES[int(item["class_index"])]
        flipped = torch.equal(item["input"], torch.flip(original, dims=(1,)))
        assert name == ("parietotemporal_right" if flipped else "parietotemporal_left")
        assert torch.equal(item["input"], torch.flip(original, dims=(1,)) if flipped else original)
        assert item["implant"].shape == item["input"].shape == item["complete"].shape
        seen.add(name)
    assert len(seen) == 2


def test_balanced_sampling_weights() -> None:
    """Every class (left and right pooled) gets the same total sampling weight."""
    classes = ["complete"] * 6 + ["vertex"] * 3 + ["parietotemporal_left"] + ["parietotemporal_right"] * 2
    weights = train.balanced_weights(classes, regions.CLASS_NAMES).numpy()
    totals = {}
    for name, weight in zip(classes, weights, strict=True):
        key = name.replace("_left", "_right")
        totals[key] = totals.get(key, 0.0) + weight
    assert np.allclose(list(totals.values()), 1.0)


def test_warm_start_from_a_bundle(tiny_bundle: Path) -> None:
    """A model with a new class head starts from a bundle's weights; a different network is refused clearly."""
    import dataclasses

    from SkullVAECompletionLib.model.networks import AggregatedVAE
    from tiny_model import TINY_NETWORK

    model = AggregatedVAE(dataclasses.replace(TINY_NETWORK, num_classes=len(regions.CLASS_NAMES)))
    train.warm_start(model, tiny_bundle)
    source = load_bundle(tiny_bundle).model.state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())
    other = AggregatedVAE(dataclasses.replace(TINY_NETWORK, latent_size=4))
    with pytest.raises(SystemExit, match="init_from: null"):
        train.warm_start(other, tiny_bundle)


def test_default_gamma_is_the_best_one_whose_decode_closes_the_defect() -> None:
    """The validation rows of two γ: the smaller has the better DSC, but its decode still shows half the hole."""
    from training.aggregate import choose_defaults

    rows = [{"method": "dev", "type": "vertex", "gamma": gamma, "dsc": dsc, "closes": closes, "case_id": str(case)}
            for case in range(3) for gamma, dsc, closes in ((0.5, 0.83, 0.55), (1.0, 0.82, 0.93))]
    assert choose_defaults(rows)[1] == {"vertex": 1.0}
    # No γ closes enough (facial defects on a small model): the best DSC decides.
    for row in rows:
        row["closes"] = 0.4
    assert choose_defaults(rows)[1] == {"vertex": 0.5}


def test_the_primary_method_stays_unless_another_is_clearly_better() -> None:
    from training.aggregate import METHOD_MARGIN, choose_defaults

    def rows(knn_dsc: float) -> list[dict]:
        return [{"method": method, "type": "vertex", "gamma": 1.0, "dsc": dsc, "case_id": str(case)}
                for case in range(3) for method, dsc in (("dev", 0.80), ("knn", knn_dsc))]

    assert choose_defaults(rows(0.80 + METHOD_MARGIN / 2))[0] == "dev", "a gap within validation noise"
    assert choose_defaults(rows(0.80 + 2 * METHOD_MARGIN))[0] == "knn"


def test_eta_respects_the_time_budget() -> None:
    history = [{"time_s": 30.0}] * 3
    assert train.eta_text(history, 3, 13, elapsed_s=90.0, limit_s=float("inf")) == "ETA 5.0 min"
    assert train.eta_text(history, 3, 13, elapsed_s=90.0, limit_s=150.0) == "ETA 1.0 min"


def test_evaluation_report_on_the_smoke_bundle(smoke_cfg: dict, workdir: Path) -> None:
    """training/evaluate.py end to end on the smoke bundle: the γ sweep with the share of the defect the decode fills,
    the detection's confusion matrix and figures, the auto-class completions, and the report."""
    import json

    from training.evaluate import evaluate

    folder = train.expand_path(smoke_cfg["aggregate"]["bundle_dir"])
    if not (folder / "manifest.json").exists():
        aggregate(smoke_cfg)
    results = evaluate(smoke_cfg, folder, workdir / "results", "smoke.yaml")
    assert {r["gamma"] for r in results["sweep"]} == {0.0, 1.0}
    assert all(0.0 <= r["defect_fill"] <= r["defect_area_fill"] + 1e-9 <= 1.0 + 1e-9 for r in results["sweep"])
    head = results["detection_class_head"]
    assert head["by"] == "class head on μ" and head["n"] == 3
    assert sum(sum(row.values()) for row in head["confusion"].values()) == 3
    # What a user gets with "auto": every test volume completed once, its class placed by the defect's position.
    located = results["detection"]
    import csv

    with open(workdir / "results" / "cases.csv", newline="") as stream:
        auto_rows = [r for r in csv.DictReader(stream) if r["role"] == "auto"]
    complete_skulls = [r for r in results["natural_openings"] if r["extraction"] == "rim"]
    assert located["by"].startswith("class head, then") and located["n"] == len(auto_rows) + len(complete_skulls)
    assert sum(sum(row.values()) for row in located["confusion"].values()) == located["n"]
    assert results["auto"] and {"dsc", "defect_fill", "defect_area_fill"} <= set(results["auto"][0])
    # The resolution check at the config's 1.5 mm: the same case resampled 2x finer per axis, both completed.
    check = results["resolution_check"]
    assert np.allclose(check["resampled"]["spacing_mm"], 1.5, atol=0.05) and 0.0 <= check["dsc_difference"] <= 1.0
    assert results["template_mirror_check"] is None
    # The extractions on the true complete skull, per cranial case: the ceilings a perfect decoder would reach.
    from training.evaluate import CEILING, CEILINGS

    ceilings = {e["variant"] for e in results["regions"] if e["variant"].startswith(CEILING)}
    assert ceilings == {f"{CEILING}: {suffix}" for suffix in CEILINGS}
    assert all(0.0 <= e["dsc"] <= 1.0 for e in results["regions"] if e["variant"] in ceilings)
    for name in ("README.md", "results.json", "cases.csv", "detection_confusion.png", "shift_vs_gamma.png"):
        assert (workdir / "results" / name).is_file(), name
    report = (workdir / "results" / "README.md").read_text()
    assert "closes (area)" in report and "Defect-class detection" in report and CEILING in report
    assert json.loads((workdir / "results" / "results.json").read_text())["default_gamma"]


def test_stage2_weighs_the_hole_and_the_shift_separately() -> None:
    """``shift_defect_weight`` sets the defect-band weight of the shifted decode's loss on its own (tried: the hole
    weighing 20 at γ = 0 and 5 in the shift); by default it is ``defect_weight``."""
    import copy

    from SkullVAECompletionLib.model.networks import AggregatedVAE
    from tiny_model import TINY_NETWORK
    from training.stages import Batch, dice_loss, stage2_step

    torch.manual_seed(0)
    model = AggregatedVAE(TINY_NETWORK)
    model.eval()
    shape = (2, 1, *TINY_NETWORK.grid)
    complete = (torch.rand(shape) > 0.7).float()
    implant = torch.zeros(shape)
    implant[:, :, 10:16, 10:16, 20:26] = complete[:, :, 10:16, 10:16, 20:26]
    batch = Batch(complete - implant, implant, complete, torch.tensor([1, 1]))
    table = torch.zeros(2, TINY_NETWORK.latent_size)
    table[1] = 0.5

    def shift_loss(**weights: float | None) -> float:
        trained = copy.deepcopy(model)
        optimiser = torch.optim.SGD(trained.decoder.parameters(), lr=0.0)
        return stage2_step(trained, batch, optimiser, sample_latent=False, shift_weight=1.0, dev_table=table,
                           **weights).shift

    with torch.no_grad():
        mu, _ = model.encode(batch.input)
        dice_only = dice_loss(model.decode(mu + table[batch.class_index]), complete).item()
    assert shift_loss(defect_weight=20.0, shift_defect_weight=0.0) == pytest.approx(dice_only, rel=1e-5)
    five = shift_loss(defect_weight=20.0, shift_defect_weight=5.0)
    assert dice_only < five < shift_loss(defect_weight=20.0)
    assert shift_loss(defect_weight=5.0) == pytest.approx(five, rel=1e-5)
