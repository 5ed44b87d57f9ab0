"""Shared pytest fixtures: a tiny trained model bundle and synthetic skulls."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "SkullVAECompletion", ROOT, ROOT / "Testing"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from tiny_model import build_tiny_bundle  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny model bundle trained on synthetic shells (once per test session)."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny-model")


@pytest.fixture(scope="session")
def region_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle built like the bundled model 2.x: region classes, a class head, the shift-aware decoder."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny-region-model", region_classes=True)


@pytest.fixture(scope="session")
def synthetic_case() -> dict[str, np.ndarray]:
    """A synthetic skull with a cranial defect: complete, defective, implant and IJK→RAS."""
    from SkullVAECompletionLib.synthetic import defective_pair

    complete, defective, matrix = defective_pair("cranial")
    return {"complete": complete, "defective": defective, "implant": complete & ~defective, "ijk_to_ras": matrix}


@pytest.fixture(scope="module")
def completer(tiny_bundle: Path):
    """The engine on the tiny bundle, CPU (one per test module)."""
    from SkullVAECompletionLib.inference.completion import SkullCompleter

    return SkullCompleter(tiny_bundle, device="cpu")


@pytest.fixture(scope="module")
def encoded(completer, synthetic_case: dict[str, np.ndarray]):
    """The synthetic cranial case encoded by ``completer`` (its decode cache is shared within a module)."""
    return completer.encode(synthetic_case["defective"], synthetic_case["ijk_to_ras"])
