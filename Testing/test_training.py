"""Smoke tests of training/: every stage through its real entry point, checkpoint + resume, export round trip.

A tiny grid and synthetic shells (training/configs/smoke.yaml) keep the whole file well under a minute.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from SkullVAECompletionLib.bundle import load_bundle
from SkullVAECompletionLib.completion import SkullCompleter
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
    for name in ("bundled_cpu", "baseline_small_beta", "paper_full", "smoke"):
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


def test_stage2_freezes_encoder_and_baseline_trains(smoke_cfg: dict, smoke_data: dict) -> None:
    stage1 = train.load_checkpoint(train.stage_dir(smoke_cfg, "stage1") / train.CHECKPOINT_NAME)
    model = train.run_stage({**smoke_cfg, "overwrite": True}, "stage2", data=smoke_data)
    state = model.state_dict()
    encoder_keys = [k for k in state if k.startswith("vae.encode") or k.startswith("vae.mu") or "logvar" in k]
    assert encoder_keys and all(torch.equal(state[k].cpu(), stage1["model"][k]) for k in encoder_keys)
    assert any(not torch.equal(state[k].cpu(), stage1["model"][k]) for k in state if k.startswith("decoder."))
    assert _log_rows(train.stage_dir(smoke_cfg, "stage2") / train.LOG_NAME)
    train.main(["baseline", "--config", str(SMOKE), "--overwrite"])
    baseline = train.load_checkpoint(train.stage_dir(smoke_cfg, "baseline") / train.CHECKPOINT_NAME)
    assert baseline["epoch"] == smoke_cfg["baseline"]["epochs"]


def test_export_load_complete_round_trip(smoke_cfg: dict, workdir: Path) -> None:
    folder = aggregate(smoke_cfg)
    bundle = load_bundle(folder)
    assert bundle.model_id == smoke_cfg["name"]
    assert set(bundle.dev) == {"cranial", "facial"} and set(bundle.default_gamma) == {"cranial", "facial"}
    assert bundle.paired_latents["defective"].shape == bundle.paired_latents["delta"].shape
    manifest = bundle.manifest
    assert manifest["completion"]["method"] in ("dev", "knn", "refine")
    expected = {"data", "config", "seed", "git_commit", "date", "provenance", "stage1", "stage2"}
    assert expected <= set(manifest["training"])
    complete, defective, matrix = defective_pair("cranial")
    result = SkullCompleter(bundle, device="cpu").run(defective, matrix, gamma=1.0, defect_type="cranial")
    assert result.completed.shape == defective.shape and result.implant.dtype == np.uint8
    assert not np.any(result.implant & defective)


def test_bundled_model_loads_and_completes() -> None:
    """The shipped bundle (Resources/Models/skullvae-cranium-population) verifies, loads and completes a skull."""
    from SkullVAECompletionLib.bundle import DEFAULT_MODEL_NAME, resources_dir

    folder = resources_dir() / "Models" / DEFAULT_MODEL_NAME
    if not (folder / "manifest.json").exists():
        pytest.skip("the bundled model has not been exported yet")
    bundle = load_bundle(folder)
    assert bundle.model_id == DEFAULT_MODEL_NAME and set(bundle.class_names) == {"complete", "cranial", "facial"}
    assert sum(f.stat().st_size for f in folder.iterdir()) < 50 * 2**20
    complete, defective, matrix = defective_pair("cranial")
    result = SkullCompleter(bundle, device="cpu").run(defective, matrix)
    assert result.completed.shape == defective.shape and result.method == bundle.completion_options["method"]
