"""SkullVAE Completion engine: skull completion and cranial implant design with an aggregated β-VAE.

Pure Python (numpy, torch, MONAI, VTK); importable without 3D Slicer. The Slicer module
(``SkullVAECompletion.py``) and the ``skullvae-complete`` command line both run :mod:`SkullVAECompletionLib.pipeline`.

Layout: ``preprocessing/`` (input checks, model grid), ``model/`` (networks, bundle), ``inference/`` (the completion
engine, detection, trust), ``extraction/`` (the implant from the decode: rim fit, decode difference, mirror),
``design/`` (implant design, quality report), ``imageio/`` (files), ``mrml/`` (Slicer scene). Importing the package
imports no torch: the names below load their module when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names and the module that holds each; loaded on first use (the package import stays torch-free).
_LAZY = {
    "SkullCompleter": "inference.completion",
    "CompletionResult": "inference.results",
    "load_bundle": "model.bundle",
    "DesignOptions": "options",
    "CompletionOptions": "options",
    "read_mask": "imageio.volumes",
    "write_mask": "imageio.volumes",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
