"""The Logic's keyword options: the Python console's camelCase names for the engine's CompletionOptions.

``logic.process(node, gamma=0.8, defectType="frontal", stlFolder=...)`` reads like the rest of Slicer's Python API;
the engine and the command line keep their snake_case names. Either name is accepted.
"""

from __future__ import annotations

import os
from typing import Any

from ..options import CompletionOptions, DesignOptions

# What the Logic's keyword arguments are called (the console API, camelCase) in CompletionOptions.
OPTION_NAMES = {
    "gamma": "gamma",
    "defectType": "defect_type",
    "method": "method",
    "extraction": "extraction",
    "device": "device",
    "precision": "precision",
    "modelPath": "model_path",
    "smoothing": "smoothing",
    "uncertaintySamples": "uncertainty_samples",
    "design": "design",
    "distanceMap": "distance_map",
    "stlFolder": "stl_folder",
    "maxTriangles": "max_triangles",
}


def completionOptions(options: CompletionOptions | None = None, **changes: Any) -> CompletionOptions:
    """``options`` (default: all defaults) with ``changes`` given by their console names (``gamma=0.8``,
    ``defectType="frontal"``, ``stlFolder=...``: :data:`OPTION_NAMES`) or their CompletionOptions names."""
    fields = {}
    for name, value in changes.items():
        field = OPTION_NAMES.get(name, name)
        if field not in OPTION_NAMES.values():
            raise TypeError(f"unknown option {name!r}; known: {', '.join(OPTION_NAMES)}")
        if field == "design" and value is None:
            value = DesignOptions()
        elif field in ("model_path", "stl_folder") and value is not None:
            value = os.fspath(value)
        fields[field] = value
    return (options or CompletionOptions()).replace(**fields)
