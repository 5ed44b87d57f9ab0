"""The scene: add the result nodes at once (and remove them again if anything fails), place them under the input's
study in the subject hierarchy and under the input's parent transform.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .nodes import _transformInfo
from .results import SKULL_SEGMENT_ID

logger = logging.getLogger(__name__)


def addResultToScene(scene: Any, nodes: list[Any], inputNode: Any, transformNodeId: str | None,
                     showSurfaces: bool = False) -> None:
    """Add the new nodes; on any failure remove what was added, so the scene is left as it was."""
    added = []
    try:
        for node in nodes:
            node.SetName(scene.GenerateUniqueName(node.GetName()))
            scene.AddNode(node)
            added.append(node)
            node.CreateDefaultDisplayNodes()
            if transformNodeId:
                node.SetAndObserveTransformNodeID(transformNodeId)
        segmentationNode = nodes[0]
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            # The completed skull contains the implant: show it as outline so the implant stays visible.
            displayNode.SetSegmentVisibility2DFill(SKULL_SEGMENT_ID, False)
            displayNode.SetSegmentOpacity3D(SKULL_SEGMENT_ID, 0.4)
        if showSurfaces:
            segmentationNode.CreateClosedSurfaceRepresentation()
        placeInSubjectHierarchy(scene, nodes, inputNode)
    except BaseException:
        removeNodes(scene, added)
        raise


def removeNodes(scene: Any, nodes: list[Any]) -> None:
    """Remove nodes with their display and storage nodes (slicer-core does not remove those by itself)."""
    for node in reversed([n for n in nodes if n is not None]):
        helpers = []
        for getCount, getNth in (("GetNumberOfDisplayNodes", "GetNthDisplayNode"),
                                 ("GetNumberOfStorageNodes", "GetNthStorageNode")):
            if hasattr(node, getCount):
                helpers += [getattr(node, getNth)(i) for i in range(getattr(node, getCount)())]
        for helper in [node, *helpers]:
            if helper is not None and helper.GetScene() is scene:
                scene.RemoveNode(helper)


def nodeIds(scene: Any) -> list[str]:
    """The IDs of every node in the scene (display, storage and colour nodes included), in scene order."""
    nodes = (scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes()))
    return [node.GetID() for node in nodes if node is not None]


class SceneRollback:
    """One undo mechanism for a run: ``with SceneRollback(scene) as rollback: ...``.

    On entry it records the IDs of the scene's nodes; if the block raises anything (CancelledError included), every
    node added since is removed (newest first: display and storage nodes before their data nodes, colour tables
    too) and the undo actions registered with :meth:`onRollback` run, newest first. So whatever the block
    published -- nodes, cached state, files -- is taken back as one, wherever it stopped.
    """

    def __init__(self, scene: Any) -> None:
        self.scene = scene
        self.before: set[str] = set()
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> SceneRollback:
        self.before = set(nodeIds(self.scene))
        return self

    def onRollback(self, action: Callable[[], None]) -> None:
        self._undo.append(action)

    def __exit__(self, excType: Any, exc: Any, traceback: Any) -> bool:
        if excType is not None:
            self.rollback()
        return False  # the exception goes on

    def rollback(self) -> None:
        for action in reversed(self._undo):
            try:
                action()
            except Exception:  # the original error matters more; an undo that fails is logged, not raised
                logger.exception("Could not undo a step of a cancelled or failed run")
        self._undo.clear()
        added = [self.scene.GetNodeByID(nodeId) for nodeId in nodeIds(self.scene) if nodeId not in self.before]
        for node in reversed(added):
            if node is not None and node.GetScene() is self.scene:
                self.scene.RemoveNode(node)


def placeInSubjectHierarchy(scene: Any, nodes: list[Any], inputNode: Any) -> None:
    """Put the result next to the input (i.e. in the input's study), if the input has a hierarchy item."""
    # Only use an existing hierarchy (GetSubjectHierarchyNode would create one: no new nodes on the side).
    shNode = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")
    if shNode is None or inputNode is None:
        return
    inputItem = shNode.GetItemByDataNode(inputNode)
    if not inputItem:
        return  # slicer-core without the application creates no items automatically
    parentItem = shNode.GetItemParent(inputItem)
    for node in nodes:
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, parentItem)
        else:
            shNode.CreateItem(parentItem, node)


def addNodeNextTo(scene: Any, node: Any, inputNode: Any) -> Any:
    """Add a new node to the scene beside ``inputNode``: same parent transform, same study."""
    node.SetName(scene.GenerateUniqueName(node.GetName()))
    scene.AddNode(node)
    try:
        node.CreateDefaultDisplayNodes()
        transformId, _ = _transformInfo(inputNode)
        if transformId:
            node.SetAndObserveTransformNodeID(transformId)
        placeInSubjectHierarchy(scene, [node], inputNode)
    except BaseException:
        removeNodes(scene, [node])
        raise
    return node
