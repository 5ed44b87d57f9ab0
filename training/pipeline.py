"""The whole recipe in one command: data → stage 1 → stage 2 → (baseline) → aggregate/export → evaluate.

    python -m training.pipeline --config training/configs/bundled_cpu.yaml [--resume] [--skip-baseline]

Steps whose output exists are resumed (``--resume``) rather than restarted. The synthetic population is
generated first when ``data.root`` has no data and ``data.generate_config`` names a generator config.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training import train
from training.aggregate import aggregate
from training.evaluate import evaluate

log = logging.getLogger("training.pipeline")


def ensure_data(cfg: dict) -> None:
    """Generate the synthetic population if the data folder is empty and a generator config is given."""
    root = train.expand_path(cfg["data"]["root"])
    generator = cfg["data"].get("generate_config")
    if cfg["data"].get("layout") == "synthetic" or (root.exists() and any(root.iterdir())) or not generator:
        return
    from training import generate

    log.info("generating the training population into %s (%s)", root, generator)
    generate.generate_dataset(generate.load_config(generator), root)


def run_pipeline(config: Path, resume: bool = False, baseline: bool = True) -> dict:
    cfg = train.load_config(config)
    ensure_data(cfg)
    for stage in ("stage1", "stage2"):
        train.run_stage(cfg, stage, resume=resume)
    baseline_config = cfg.get("evaluate", {}).get("baseline_config")
    if baseline and baseline_config:
        train.run_stage(train.load_config(baseline_config), "baseline", resume=resume)
    folder = aggregate(cfg)
    return evaluate(cfg, folder, config_path=str(config))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train, aggregate, export and evaluate a SkullVAE model")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue stages from their last checkpoints")
    parser.add_argument("--skip-baseline", action="store_true", help="do not train the small-β comparison VAE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_pipeline(args.config, resume=args.resume, baseline=not args.skip_baseline)


if __name__ == "__main__":
    main()
