"""The module's test input: a synthetic defective skull, and a result segment read back onto the input's grid.

The module's self-test (in the application) and the Slicer tests (slicer-core) build this skull themselves, so they
need no data files; its hole's position is known, so a test can check that the implant sits in it. The shell is
``SkullVAECompletionLib.synthetic``'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import synthetic
from .nodes import _slicer, arrayToMatrix

SYNTHETIC_HOLE_CENTRE_RAS = (35.0, 20.0, 55.0)  # a cranial defect on the upper right of the vault
SYNTHETIC_HOLE_RADIUS_MM = 30.0


def makeSyntheticSkull(shape: tuple[int, int, int] = (60, 70, 60), ijkToRas: np.ndarray | None = None,
                       withHole: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic skull-like shell centred at RAS (0, 0, 0) with a round cranial hole, indexed (i, j, k) on the grid
    ``ijkToRas`` (default: RAS-aligned, 3 mm, centred)."""
    if ijkToRas is None:
        ijkToRas = synthetic.centred_ijk_to_ras(shape, (3.0, 3.0, 3.0))
    shell = synthetic.skull_shell(shape, ijkToRas)
    if withHole:
        shell &= ~syntheticHole(shape, ijkToRas)
    return shell.astype(np.uint8), np.asarray(ijkToRas, dtype=np.float64)


def syntheticHole(shape: tuple[int, int, int], ijkToRas: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The region removed by the synthetic skull's cranial hole (``scale`` enlarges it)."""
    return synthetic.cranial_defect(shape, ijkToRas, SYNTHETIC_HOLE_CENTRE_RAS, scale * SYNTHETIC_HOLE_RADIUS_MM)


def resampleToGrid(image: Any, shape: tuple[int, int, int], ijkToRas: np.ndarray) -> Any:
    """An oriented image resampled onto the grid ``shape``/``ijkToRas`` (a segment compared voxel for voxel with the
    input it was made from)."""
    slicer = _slicer()
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(0, shape[0] - 1, 0, shape[1] - 1, 0, shape[2] - 1)
    reference.SetImageToWorldMatrix(arrayToMatrix(ijkToRas))
    output = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(image, reference, output)
    return output
