"""What the Logic keeps for each result node, and what it writes again each time that result changes.

A result segmentation is updated in place (another γ, other design options) from its :class:`CachedCompletion`:
the engine's encoding and the implant shown. Each update publishes the result's summary and the record saved with
the scene, hides the distance model until the new implant is measured and then replaces its surface in place; a
completion may also write the implant's STL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..inference.detection import BY_CLASS_HEAD
from ..options import CompletionOptions, DesignOptions
from .files import prepareFolder
from .nodes import InputMask
from .results import CompletionSummary, buildDistanceModel, distanceColorNode, showDistanceModel
from .scene import SceneRollback, addNodeNextTo, removeNodes
from .threads import elapsed

if TYPE_CHECKING:  # the engine (scipy, torch) is imported at first use, after the dependencies are installed
    from ..pipeline import DesignedImplant


@dataclass
class CachedCompletion:
    """What a result node needs to be re-decoded with another γ or re-designed, and its last designed implant."""

    completer: Any
    encoded: Any
    inputMask: InputMask
    options: CompletionOptions  # those of the result shown (γ, class and design as last updated)
    uncertaintyNodeId: str | None
    designed: DesignedImplant | None = None  # the result shown; its completion is where a design change starts
    distanceModelId: str | None = None
    summary: CompletionSummary | None = None  # of the result shown: its quality report is filled in there


def hideStaleDistanceModel(segmentationNode: Any, cached: CachedCompletion) -> Any:
    """The distance map, hidden: it shows the previous implant until this one is measured (None if none)."""
    node = segmentationNode.GetScene().GetNodeByID(cached.distanceModelId) if cached.distanceModelId else None
    if node is not None and node.GetDisplayNode() is not None:
        node.GetDisplayNode().SetVisibility(False)
    return node


def updateDistanceModel(segmentationNode: Any, cached: CachedCompletion, surface: Any) -> Any:
    """Replace the distance map's surface in place, create it, or remove it (``surface`` None)."""
    scene = segmentationNode.GetScene()
    node = scene.GetNodeByID(cached.distanceModelId) if cached.distanceModelId else None
    if surface is None:
        if node is not None:
            removeNodes(scene, [node])
        cached.distanceModelId = None
        return None
    if node is None:
        node = buildDistanceModel(surface, f"{segmentationNode.GetName()} distance to skull")
        addNodeNextTo(scene, node, segmentationNode)
        showDistanceModel(node, distanceColorNode(scene))
        cached.distanceModelId = node.GetID()
    else:
        node.SetAndObservePolyData(surface)
        if node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetVisibility(True)  # hidden while it showed a previous implant
    return node


def resultSummary(completer: Any, result: Any, segmentationNode: Any, uncertaintyNode: Any, start: float,
                  design: DesignOptions | None = None, distanceNode: Any = None) -> CompletionSummary:
    """The summary of a result (``lastResult``): what the engine decided and how long it took since ``start``."""
    bundle = getattr(completer, "bundle", None)
    return CompletionSummary(
        segmentationNode=segmentationNode, uncertaintyNode=uncertaintyNode, defectType=result.defect_type,
        detectedType=result.detected_type, detectedBy=getattr(result, "detected_by", BY_CLASS_HEAD),
        confidence=float(getattr(result, "class_probabilities", {}).get(result.detected_type, result.confidence)),
        gamma=float(result.gamma),
        modelId=getattr(bundle, "model_id", "unknown"), modelVersion=getattr(bundle, "version", "unknown"),
        device=str(getattr(completer, "device", "cpu")), seconds=elapsed(start),
        implantVolumeMl=float(getattr(result, "implant_volume_ml", 0.0)), timings=dict(result.timings),
        result=result, design=design, distanceNode=distanceNode)


def resultRecord(summary: CompletionSummary, maxTriangles: int | None) -> dict:
    """The record saved with the result node (the command line's summary JSON: pipeline.summary_record)."""
    from ..pipeline import summary_record  # noqa: PLC0415  (imports scipy)

    return summary_record(summary.result, summary.modelId, summary.modelVersion,
                          summary.design or DesignOptions(), summary.measuredFit, max_triangles=maxTriangles)


def exportImplantStl(segmentationNode: Any, designed: DesignedImplant, options: CompletionOptions,
                     rollback: SceneRollback | None = None) -> list[str]:
    """Write the implant STL (the command line's surface: pipeline.DesignedImplant.write_stl); a rollback of the
    run deletes the file."""
    if designed.empty:
        logging.warning("The implant is empty (no defect found at this γ): no STL written")
        return []
    path = prepareFolder(options.stl_folder) / f"{segmentationNode.GetName()} implant.stl"
    existed = path.exists()
    if rollback is not None and not existed:
        rollback.onRollback(lambda: path.unlink(missing_ok=True))  # registered first: a failed write may leave it
    return [str(designed.write_stl(path, options.stl_coordinates, options.max_triangles, overwrite=True))]
