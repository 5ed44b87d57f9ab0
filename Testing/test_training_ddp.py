"""DistributedDataParallel on the CPU (gloo): two processes train a few steps and must stay in sync."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "training" / "configs" / "smoke.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, workdir: str) -> None:
    """One rank: the same run_stage the CLI uses under torchrun, then dump this rank's parameters."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), SKULLVAE_WORK=workdir)
    import torch.distributed as dist

    from training import train

    cfg = train.load_config(SMOKE)
    runtime = train.setup_runtime(cfg)
    try:
        for stage in ("stage1", "stage2"):
            model = train.run_stage(cfg, stage, runtime=runtime)
            params = {k: v.detach().cpu().clone() for k, v in model.named_parameters()}
            torch.save(params, Path(workdir) / f"{stage}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_cpu_processes_stay_in_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    from training import train

    monkeypatch.setenv("SKULLVAE_WORK", str(tmp_path))
    cfg = train.load_config(SMOKE)
    for stage in ("stage1", "stage2"):
        ranks = [torch.load(tmp_path / f"{stage}_rank{r}.pt", weights_only=True) for r in range(2)]
        assert ranks[0].keys() == ranks[1].keys()
        for name in ranks[0]:
            assert torch.equal(ranks[0][name], ranks[1][name]), f"{stage}: {name} differs between ranks"
        # Only rank 0 writes; the checkpoint holds the synchronised weights and every epoch is logged.
        state = train.load_checkpoint(train.stage_dir(cfg, stage) / train.CHECKPOINT_NAME)
        assert state["epoch"] == cfg[stage]["epochs"]
        trained = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state["model"].items()}
        for name, value in ranks[0].items():
            assert torch.equal(trained[name], value)
