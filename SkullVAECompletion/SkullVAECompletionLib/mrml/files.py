"""Files: the folders the module writes to, loading labelmap files and saving segmentations.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from .nodes import _slicer


def prepareFolder(folder: str | os.PathLike) -> Path:
    """Create the STL export folder (done before the completion runs, so a bad folder fails fast)."""
    from ..imageio.outputs import ensure_writable_folder  # noqa: PLC0415  (keeps VTK/nibabel imports out of module import)

    return ensure_writable_folder(folder, "STL export folder", "choose another folder")


def saveSegmentation(node: Any, path: str | os.PathLike) -> None:
    """Write a segmentation node to ``.seg.nrrd`` (works without the application's IO manager)."""
    storage = node.GetStorageNode() or node.CreateDefaultStorageNode()
    if node.GetScene() is not None and storage.GetScene() is None:
        node.GetScene().AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    if not storage.WriteData(node):
        raise RuntimeError(f"Could not write {path}.")


def loadSegmentation(scene: Any, path: str | os.PathLike) -> Any:
    """Read a ``.seg.nrrd`` into a new segmentation node of ``scene``."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", Path(path).name.split(".")[0])
    storage = node.CreateDefaultStorageNode()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise RuntimeError(f"Could not read segmentation {path}.")
    return node


def loadLabelmapFile(scene: Any, path: str | os.PathLike) -> Any:
    """Load a mask file (NRRD, NIfTI, ...) as a labelmap volume node: through the application when there is
    one (``slicer.util.loadLabelVolume``), else through a volume storage node (slicer-core)."""
    slicer = _slicer()
    if hasattr(slicer, "app") and scene is slicer.mrmlScene:
        return slicer.util.loadLabelVolume(str(path))
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", Path(path).name.split(".")[0])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        scene.RemoveNode(storage)
        scene.RemoveNode(node)
        raise InputError(f"Could not read {path} as a volume.")
    return node
