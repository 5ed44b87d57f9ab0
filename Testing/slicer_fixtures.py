"""Fixtures and helpers for the Slicer-module tests (slicer-core only: no Qt, no application).

Import the fixtures into a test file with ``from slicer_fixtures import *`` (conftest.py puts Testing/ and
SkullVAECompletion/ on sys.path and provides ``tiny_bundle``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")  # slicer-core

import SkullVAECompletion as module  # noqa: E402
from SkullVAECompletionLib import mrml  # noqa: E402
from SkullVAECompletionLib.inference.completion import SkullCompleter  # noqa: E402
from SkullVAECompletionLib.inference.results import CompletionResult  # noqa: E402
from SkullVAECompletionLib.mrml.synthetic_input import (  # noqa: E402
    SYNTHETIC_HOLE_CENTRE_RAS,
    SYNTHETIC_HOLE_RADIUS_MM,
    resampleToGrid,
)

__all__ = [
    "FakeCompleter",
    "FakeTimer",
    "FakeWidget",
    "GEOMETRIES",
    "addLabelmap",
    "addSegmentation",
    "fake_logic",
    "geometry",
    "nodeCount",
    "rotation_matrix",
    "real_completer",
    "real_logic",
    "scene",
    "segmentArray",
    "widget_harness",
]


def rotation_matrix(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [(1, 2), (0, 2), (0, 1)][axis]
    matrix = np.eye(3)
    matrix[a, a] = matrix[b, b] = c
    matrix[a, b], matrix[b, a] = -s, s
    return matrix


def _centred(directions: np.ndarray, spacing: tuple[float, float, float], shape: tuple[int, int, int]) -> np.ndarray:
    """IJK→RAS with the given direction columns and spacing, whose volume centre is at RAS (0, 0, 0)."""
    matrix = np.eye(4)
    matrix[:3, :3] = directions @ np.diag(spacing)
    matrix[:3, 3] = -matrix[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return matrix


# (name, shape (i, j, k), IJK→RAS): every grid covers the synthetic skull (about 140 x 170 x 140 mm).
GEOMETRIES = {
    "ras_3mm": ((60, 70, 60), _centred(np.eye(3), (3.0, 3.0, 3.0), (60, 70, 60))),
    "lps_flipped": ((60, 70, 60), _centred(np.diag([-1.0, -1.0, 1.0]), (3.0, 3.0, 3.0), (60, 70, 60))),
    # i runs S→I, j runs R→L... : permuted and flipped axes with anisotropic spacing
    "permuted_anisotropic": (
        (48, 72, 84),
        _centred(np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]), (4.0, 2.5, 2.2), (48, 72, 84)),
    ),
    "oblique": (
        (66, 76, 66),
        _centred(rotation_matrix(2, 20.0) @ rotation_matrix(0, 10.0), (3.0, 3.0, 3.0), (66, 76, 66)),
    ),
}


@pytest.fixture(params=sorted(GEOMETRIES))
def geometry(request: pytest.FixtureRequest) -> tuple[str, tuple[int, int, int], np.ndarray]:
    shape, matrix = GEOMETRIES[request.param]
    return request.param, shape, matrix


@pytest.fixture
def scene() -> Any:
    """A fresh MRML scene, also installed as ``slicer.mrmlScene`` (slicer.util needs it)."""
    previous = getattr(slicer, "mrmlScene", None)
    newScene = slicer.vtkMRMLScene()
    slicer.mrmlScene = newScene
    yield newScene
    newScene.Clear(1)
    slicer.mrmlScene = previous


def nodeCount(scene: Any) -> int:
    return scene.GetNumberOfNodes()


def addLabelmap(scene: Any, array_ijk: np.ndarray, ijkToRas: np.ndarray, name: str = "DefectiveSkull",
                className: str = "vtkMRMLLabelMapVolumeNode") -> Any:
    node = scene.AddNewNodeByClass(className, name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(np.asarray(array_ijk).transpose(2, 1, 0)))
    node.SetIJKToRASMatrix(mrml.arrayToMatrix(ijkToRas))
    return node


def addSegmentation(scene: Any, array_ijk: np.ndarray, ijkToRas: np.ndarray, name: str = "SkullSegmentation",
                    segmentName: str = "Skull") -> tuple[Any, str]:
    """A segmentation with one segment made from the mask; the temporary labelmap is removed again."""
    labelmap = addLabelmap(scene, array_ijk, ijkToRas, name="tmp")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    scene.RemoveNode(labelmap)
    segmentId = node.GetSegmentation().GetNthSegmentID(0)
    node.GetSegmentation().GetSegment(segmentId).SetName(segmentName)
    return node, segmentId


def segmentArray(segmentationNode: Any, segmentId: str, shape: tuple[int, int, int],
                 ijkToRas: np.ndarray) -> np.ndarray:
    """A segment resampled onto a given grid (i, j, k) — to compare it voxel for voxel with an input."""
    image = slicer.vtkOrientedImageData()
    assert slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentationNode, segmentId, image, False)
    return mrml.orientedImageToArray(resampleToGrid(image, shape, ijkToRas))[0].astype(bool)


@dataclass
class FakeEncoded:
    mask: np.ndarray
    ijkToRas: np.ndarray
    decode_cache: dict = field(default_factory=dict)


class FakeCompleter:
    """The engine's interface with an exact answer: the analytic complete skull at each voxel's RAS position.

    If the module passed a wrong matrix or transposed an array, the fake's skull would not line up with the
    input and the implant checks fail — so it tests the MRML layer's geometry without a trained model.
    γ scales the hole that is filled (γ = 1: all of it, γ = 0: nothing), so γ updates are visible.
    """

    def __init__(self) -> None:
        self.bundle = type("Bundle", (), {"model_id": "fake-model", "version": "9.9.9"})()
        self.device = "cpu"
        self.encodeCalls = 0
        self.completeCalls = 0

    def encode(self, mask: np.ndarray, ijk_to_ras: np.ndarray, name: str = "input",
               progress: Any = None) -> FakeEncoded:
        self.encodeCalls += 1
        for fraction in (0.0, 0.5, 1.0):
            if progress:
                progress(fraction, "fake encode")
        return FakeEncoded(np.asarray(mask).astype(bool), np.asarray(ijk_to_ras))

    def complete(self, encoded: FakeEncoded, gamma: float | None = None, defect_type: str = "auto",
                 smoothing: bool = True, uncertainty_samples: int = 0, progress: Any = None,
                 method: str | None = None, extraction: str | None = None) -> CompletionResult:
        self.completeCalls += 1
        self.lastOptions = {"method": method, "extraction": extraction}
        gamma = 1.0 if gamma is None else float(gamma)
        for fraction in (0.0, 0.5, 1.0):
            if progress:
                progress(fraction, "fake decode")
        complete, _ = module.makeSyntheticSkull(encoded.mask.shape, encoded.ijkToRas, withHole=False)
        shape = encoded.mask.shape
        ijk = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij"), axis=-1)
        ras = ijk @ encoded.ijkToRas[:3, :3].T.astype(np.float32) + encoded.ijkToRas[:3, 3].astype(np.float32)
        centre = np.asarray(SYNTHETIC_HOLE_CENTRE_RAS, np.float32)
        inside = ((ras - centre) ** 2).sum(axis=-1) <= (gamma * SYNTHETIC_HOLE_RADIUS_MM) ** 2
        implant = complete.astype(bool) & ~encoded.mask & inside
        uncertainty = implant.astype(np.float32) * 0.5 if uncertainty_samples else None
        return CompletionResult(defective=encoded.mask, implant=implant.astype(np.uint8),
                                defect_type="cranial" if defect_type == "auto" else defect_type,
                                detected_type="cranial", confidence=0.9, gamma=gamma, method=method or "dev",
                                uncertainty=uncertainty, timings={"total": 0.0},
                                implant_volume_ml=float(implant.sum()))


@pytest.fixture
def fake_logic() -> Any:
    logic = module.SkullVAECompletionLogic()
    fake = FakeCompleter()
    logic.completerFactory = lambda modelPath, device: fake
    logic.fake = fake
    return logic


@pytest.fixture(scope="session")
def real_completer(tiny_bundle: Any) -> SkullCompleter:
    return SkullCompleter(bundle=str(tiny_bundle), device="cpu")


@pytest.fixture
def real_logic(tiny_bundle: Any, real_completer: SkullCompleter) -> Any:
    """The Logic with the tiny trained bundle (one completer shared by all tests: loading is done once)."""
    logic = module.SkullVAECompletionLogic(modelPath=tiny_bundle)

    def factory(modelPath: Any, device: str) -> Any:
        if device in ("auto", "cpu"):
            return real_completer
        return SkullCompleter(bundle=str(modelPath), device=device)  # e.g. "cuda" → DeviceError when absent

    logic.completerFactory = factory
    return logic


#
# The widget without the application: stand-ins for the Qt widgets of the .ui, QTimer and the widget base class.
#


class FakeWidget:
    """A Qt widget as the module uses it through PythonQt: properties, PythonQt ``connect(signal, slot)``, items.

    Setting ``checked``, ``value`` or ``currentIndex`` emits the widget's change signal, as Qt does when a value
    changes; signals are matched by name (``valueChanged(int)`` and ``valueChanged(double)`` are one signal).
    """

    SIGNAL_OF = {"checked": "toggled", "value": "valueChanged", "currentIndex": "currentIndexChanged",
                 "currentPath": "currentPathChanged", "text": "textChanged"}

    def __init__(self, className: str, name: str = "", dynamicProperties: dict | None = None) -> None:
        self.__dict__.update(_className=className, objectName=name, _properties=dict(dynamicProperties or {}),
                             _slots={}, items=[], enabled=True, visible=True, checked=False, value=0.0,
                             currentIndex=-1, text="", toolTip="", currentPath="", minimum=0.0, maximum=99.99,
                             _node=None, scene=None)

    def __setattr__(self, key: str, value: Any) -> None:
        old = self.__dict__.get(key)
        self.__dict__[key] = value
        if key in self.SIGNAL_OF and old != value:
            self.emit(self.SIGNAL_OF[key], value)

    def className(self) -> str:
        return self._className

    def connect(self, signal: str, slot: Any) -> None:
        self._slots.setdefault(signal.split("(")[0], []).append(slot)

    def emit(self, signal: str, *args: Any) -> None:
        for slot in list(self._slots.get(signal.split("(")[0], [])):
            slot(*args)

    def setVisible(self, visible: bool) -> None:
        self.visible = visible

    def setMRMLScene(self, scene: Any) -> None:
        self.scene = scene

    # QComboBox
    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def currentData(self) -> Any:
        return self.items[self.currentIndex][1] if 0 <= self.currentIndex < len(self.items) else None

    def clear(self) -> None:
        self.__dict__["items"] = []
        self.currentIndex = -1

    def addItem(self, text: str, data: Any = None) -> None:
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.currentIndex = 0

    def addItems(self, texts: list[str]) -> None:
        for text in texts:
            self.addItem(text)

    def findData(self, data: Any) -> int:
        return next((i for i, (_, d) in enumerate(self.items) if d == data and data is not None), -1)

    def itemText(self, index: int) -> str:
        return self.items[index][0]

    # qMRMLNodeComboBox
    def currentNode(self) -> Any:
        return self._node

    def setCurrentNode(self, node: Any) -> None:
        changed = (node.GetID() if node else None) != (self._node.GetID() if self._node else None)
        self.__dict__["_node"] = node
        if changed:
            self.emit("currentNodeChanged", node)

    def property(self, name: str) -> Any:  # after the @property uses above: this name shadows the builtin
        return self._properties.get(name)


class FakeTimer:
    """qt.QTimer: ``fire()`` stands for the timeout (the tests decide when time has passed)."""

    def __init__(self) -> None:
        self.interval = 0
        self.active = False
        self._slots: list = []

    def setSingleShot(self, singleShot: bool) -> None:
        self.singleShot = singleShot

    def connect(self, signal: str, slot: Any) -> None:
        self._slots.append(slot)

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def isActive(self) -> bool:
        return self.active

    def fire(self) -> None:
        self.active = False
        for slot in self._slots:
            slot()


def loadFakeUI(path: str) -> FakeWidget:
    """The .ui file's widgets as FakeWidgets (class, name and the ``SlicerParameterName`` property)."""
    import xml.etree.ElementTree as ET  # noqa: PLC0415

    root = ET.parse(path).getroot().find("widget")
    top = FakeWidget(root.get("class"), root.get("name"))
    top.__dict__["children"] = []
    for element in root.iter("widget"):
        if element is root:
            continue
        properties = {}
        for prop in element.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                properties["SlicerParameterName"] = prop.find("string").text
        top.children.append(FakeWidget(element.get("class"), element.get("name"), properties))
    return top


@dataclass
class WidgetHarness:
    widget: Any
    errors: list


@pytest.fixture
def widget_harness(monkeypatch: pytest.MonkeyPatch, scene: Any) -> Any:
    """Build the module's widget on the real .ui with stand-in Qt widgets; returns a function making one."""
    import contextlib  # noqa: PLC0415
    import types  # noqa: PLC0415

    errors: list = []

    @contextlib.contextmanager
    def tryWithErrorDisplay(message: str | None = None, show: bool = True, waitCursor: bool = False) -> Any:
        try:
            yield
        except Exception as error:  # Slicer shows a dialog and re-raises
            errors.append((message, error))
            raise

    class FakeLayout:
        def addWidget(self, widget: Any) -> None:
            self.widget = widget

    def baseInit(self: Any, parent: Any = None) -> None:
        self.parent = parent or types.SimpleNamespace(isEntered=True)
        self.layout = FakeLayout()

    monkeypatch.setattr(module, "qt", types.SimpleNamespace(QTimer=FakeTimer))
    monkeypatch.setattr(module, "ctk", types.SimpleNamespace(ctkPathLineEdit=types.SimpleNamespace(Dirs=1)))
    monkeypatch.setattr(module.ScriptedLoadableModuleWidget, "__init__", baseInit)
    monkeypatch.setattr(module.ScriptedLoadableModuleWidget, "setup", lambda self: None, raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", loadFakeUI)
    monkeypatch.setattr(slicer.util, "childWidgetVariables",
                        lambda top: types.SimpleNamespace(**{w.objectName: w for w in top.children}))
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", tryWithErrorDisplay)

    made = []

    def make(logic: Any = None) -> Any:
        widget = module.SkullVAECompletionWidget()
        made.append(widget)  # cleaned up even if setup fails half-way (its scene observers are added first)
        widget.setup()
        if logic is not None:
            widget.logic = logic
        widget.errors = errors
        return WidgetHarness(widget, errors)

    yield make
    for widget in made:  # before the scene is closed: no observer may call into a test's widget afterwards
        widget.cleanup()
