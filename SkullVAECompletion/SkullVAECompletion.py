"""SkullVAE Completion: complete a defective skull and design the cranial implant with an aggregated β-VAE.

Scripted loadable module (module, widget, logic, test). The Logic is the public, scriptable, blocking API:

    logic = SkullVAECompletionLogic()
    segmentationNode = logic.process(skullSegmentationNode, segmentId="Segment_1")   # or a labelmap node
    print(logic.lastResult.statusText())
    logic.updateGamma(segmentationNode, 0.8)                                          # re-decodes in place

This file imports under plain Python with ``slicer-core`` (no Qt): Qt-only imports are guarded, and only when the
application's ScriptedLoadableModule classes and parameter node wrapper are absent do the stand-ins of
``SkullVAECompletionLib.mrml.scripted_module`` and ``.parameter_node`` replace them.
Heavy lifting lives in ``SkullVAECompletionLib`` (engine) and ``SkullVAECompletionLib.mrml`` (nodes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import unittest
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

try:  # The Slicer application: Qt, CTK and the scripted-module framework.
    import ctk
    import qt
    from slicer.i18n import tr as _
    from slicer.i18n import translate
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    HAVE_SLICER_APP = True
except ImportError:  # slicer-core only (CI, batch scripts): the stand-ins of SkullVAECompletionLib.mrml
    HAVE_SLICER_APP = False
    qt = ctk = None
    # The parameter node class is built by a stand-in that follows Slicer's serializer and GUI connector rules
    # (an annotation the application could not serialise or connect fails here too).
    from slicer.util import VTKObservationMixin  # in slicer-core

    from SkullVAECompletionLib.mrml.parameter_node import Choice, WithinRange, parameterNodeWrapper
    from SkullVAECompletionLib.mrml.scripted_module import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
        translate,
    )
    from SkullVAECompletionLib.mrml.scripted_module import tr as _


from SkullVAECompletionLib import mrml, options  # noqa: E402  (no torch import: the engine is imported at first use)
from SkullVAECompletionLib.dependencies import DependencyError  # noqa: E402  (imports no slicer/torch)
from SkullVAECompletionLib.errors import CancelledError, InputError, SkullVAEError  # noqa: E402
from SkullVAECompletionLib.mrml.console_options import completionOptions  # noqa: E402  (the Logic's keywords)
from SkullVAECompletionLib.mrml.synthetic_input import (  # noqa: E402  (the self-test's data; numpy only)
    makeSyntheticSkull,
    resampleToGrid,
    syntheticHole,
)
from SkullVAECompletionLib.options import CompletionOptions, DesignOptions  # noqa: E402  (torch- and scipy-free)

if TYPE_CHECKING:  # the engine (scipy, torch) is imported at first use, after the dependencies are installed
    from SkullVAECompletionLib.pipeline import DesignedImplant

MODULE_DIR = Path(__file__).resolve().parent
SAMPLE_DATA_FILE = "SampleData/CraniumSkull.nrrd"  # relative to Resources/
SAMPLE_DATA_SHA256 = "bbf16d94657c9b3eabb3c3e9b089eaec0c15e21acb6f5b781a357bdb46e73466"
# The GUI's choices are options.DEFECT_TYPES, METHODS, EXTRACTIONS and GUI_DEVICES (shared with the engine and the CLI);
# the Logic checks the defect type against the model in use.
DEFECT_TYPES = options.DEFECT_TYPES  # the name scripts and the tests know
GAMMA_RANGE = (0.0, 2.0)  # the γ slider's


def moduleResourcePath(filename: str) -> str:
    """Path of a file in Resources/: next to the installed module, or at the top of a source checkout."""
    for resources in (MODULE_DIR / "Resources", MODULE_DIR.parent / "Resources"):
        if (resources / filename).exists():
            return str(resources / filename)
    return str(MODULE_DIR / "Resources" / filename)


def errorMessage(error: BaseException) -> str:
    """The text shown to the user for an exception (status line and error dialog)."""
    if isinstance(error, SkullVAEError | DependencyError):
        return str(error)
    return f"{type(error).__name__}: {error}"


#
# SkullVAECompletion
#


class SkullVAECompletion(ScriptedLoadableModule):
    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SkullVAE Completion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SkullVAE Completion contributors"]
        self.parent.helpText = _("""
<p>Completes a defective skull and designs a patient-specific cranial implant. An aggregated β-VAE encodes the
skull, shifts its latent code along the learned direction from the defect's class to complete skulls (γ·DEV) and
decodes the expected skull; the implant's outer and inner surfaces are then fitted to the patient's intact bone
around each defect (its rim) at the input's resolution. Design options shape the implant (plate thickness, flange,
clearance, rounded edges) and a fit report measures it (volume, thickness, gap at the rim).</p>
<p><b>Use:</b> select the skull (a segment of a segmentation, or a labelmap volume; "Skull from CT" makes one
from a head CT), keep the bundled model or
choose a model folder you trained, and click Apply. A new segmentation with the segments "Completed skull" and
"Implant" is created next to the input. γ is the model's default for the defect class (bundled model: 1.5,
vertex 2.0, facial 0.75); uncheck "Use the model's default γ" to move it (0 keeps the input's hole). The status
line shows the detected defect class (the region: frontal, frontoorbital, parietotemporal
left/right, occipital, vertex, facial, or no defect) and what decided it: the class head's confidence, or where the
hole the implant fills lies; choose another class to override it.
Advanced: implant smoothing, an uncertainty map, STL export of the implant.</p>
<p><b>Limits:</b> research software, not a medical device. The bundled model was trained on a synthetic population
derived from ONE real head CT (deformed copies with generated cranial and facial defects), on a coarse model grid;
defects unlike those (hemicraniectomy size, several holes, burr holes) and facial defects do poorly. See the
README for its measured accuracy. For clinical-grade results train a model on real data (SkullFix, SkullBreak) with
the extension's training/ pipeline and select its folder. Check every implant before use.</p>
<p><b>Cite:</b> Li, Fragemann, Ahmadi, Kleesiek, Egger, "Training β-VAE by Aggregating a Learned Gaussian
Posterior with a Decoupled Decoder", arXiv 2209.14783, 2022.</p>
""")
        self.parent.acknowledgementText = _("""
Method by J. Li, J. Fragemann, S.-A. Ahmadi, J. Kleesiek and J. Egger (arXiv 2209.14783). Built on 3D Slicer,
PyTorch and MONAI. Bundled model and sample: derived from the head CT "Cranium" of the Debian package
invesalius-examples (CTI Renato Archer, GPL-2).
""")
        if HAVE_SLICER_APP:
            slicer.app.connect("startupCompleted()", registerSampleData)

    def resourcePath(self, filename: str) -> str:
        return moduleResourcePath(filename)


def registerSampleData() -> None:
    """Add the sample defective skull to the Sample Data module (called after start-up, never at import)."""
    import SampleData  # noqa: PLC0415  (application only)

    samplePath = Path(moduleResourcePath(SAMPLE_DATA_FILE))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="SkullVAE Completion",
        sampleName="CraniumSkull",
        thumbnailFileName=moduleResourcePath("Icons/SkullVAECompletion.png"),
        uris=samplePath.as_uri(),  # shipped with the extension: works offline
        fileNames=samplePath.name,
        nodeNames="CraniumSkull",
        checksums=f"SHA256:{SAMPLE_DATA_SHA256}",
        loadFileTypes="VolumeFile",
        loadFileProperties={"labelmap": True},
    )


#
# SkullVAECompletionParameterNode
#


@parameterNodeWrapper
class SkullVAECompletionParameterNode:
    """Every option of the panel, saved with the scene: Apply reads this node only (completionOptionsFromParameters).

    The segment, the model folder and the STL folder have no connector in Slicer's wrapper (a combo box of the
    input's segments, folder paths that may be empty): the widget keeps them and their widgets in step itself.
    """

    # Node types include None (Slicer's template does too): the wrapper writes the default None at creation, and a
    # union of node types without None cannot serialise it (TypeError in getParameterNode: the panel never connects).
    inputNode: vtkMRMLSegmentationNode | vtkMRMLLabelMapVolumeNode | None
    segmentId: str = ""  # the input segmentation's skull segment ("": the widget preselects a bone-like one)
    useBundledModel: bool = True  # False: the model bundle in modelFolder
    modelFolder: str = ""
    defectType: Annotated[str, Choice(options.DEFECT_TYPES)] = options.AUTO
    method: Annotated[str, Choice(options.METHODS)] = options.AUTO
    extraction: Annotated[str, Choice(options.EXTRACTIONS)] = options.AUTO
    device: Annotated[str, Choice(options.GUI_DEVICES)] = options.AUTO
    useDefaultGamma: bool = True
    gamma: Annotated[float, WithinRange(*GAMMA_RANGE)] = 1.0
    livePreview: bool = True
    smoothing: bool = True
    uncertainty: bool = False
    uncertaintySamples: Annotated[int, WithinRange(2, 64)] = 8
    exportStl: bool = False
    stlFolder: str = ""  # set to the home folder when the panel first opens
    # Skull from CT
    ctVolume: vtkMRMLScalarVolumeNode | None
    boneThresholdHu: Annotated[float, WithinRange(-1000.0, 3000.0)] = options.DEFAULT_BONE_THRESHOLD_HU
    # Implant design (see SkullVAECompletionLib.design.shaping.DesignOptions); changing one re-runs only the design step
    fixedThickness: bool = False
    thicknessMm: Annotated[float, WithinRange(0.5, 15.0)] = options.DEFAULT_FIXED_THICKNESS_MM
    flangeMm: Annotated[float, WithinRange(0.0, 20.0)] = options.DEFAULT_FLANGE_MM
    flangeThicknessMm: Annotated[float, WithinRange(0.5, 5.0)] = options.DEFAULT_FLANGE_THICKNESS_MM
    clearanceMm: Annotated[float, WithinRange(0.0, 5.0)] = options.DEFAULT_CLEARANCE_MM
    edgeRadiusMm: Annotated[float, WithinRange(0.0, 3.0)] = options.DEFAULT_EDGE_RADIUS_MM
    maxTriangles: Annotated[int, WithinRange(0, 10000000)] = 0
    showDistanceMap: bool = True


# Parameters whose widgets have no connector in Slicer's wrapper: the widget keeps them in step itself.
WIDGET_SYNCED_PARAMETERS = ("segmentId", "useBundledModel", "modelFolder", "stlFolder")
DESIGN_PARAMETERS = ("fixedThickness", "thicknessMm", "flangeMm", "flangeThicknessMm", "clearanceMm", "edgeRadiusMm")


def designOptionsFromParameters(parameters: Any) -> DesignOptions:
    """The engine's design options from the parameter node (or any object with the same attributes)."""
    return DesignOptions(
        thickness_mm=float(parameters.thicknessMm) if parameters.fixedThickness else None,
        flange_mm=float(parameters.flangeMm),
        flange_thickness_mm=float(parameters.flangeThicknessMm),
        clearance_mm=float(parameters.clearanceMm),
        edge_radius_mm=float(parameters.edgeRadiusMm),
    )


def completionOptionsFromParameters(parameters: Any) -> CompletionOptions:
    """Everything Apply does, from the parameter node alone (the one source of truth; the widgets only edit it)."""
    if parameters.useBundledModel:
        modelPath = None
    elif parameters.modelFolder:
        modelPath = parameters.modelFolder
    else:
        raise InputError("Choose the folder of your trained model bundle (it holds manifest.json).")
    if parameters.exportStl and not parameters.stlFolder:
        raise InputError("Choose the folder the implant STL is written to.")
    return CompletionOptions(
        gamma=None if parameters.useDefaultGamma else float(parameters.gamma),
        defect_type=parameters.defectType,
        method=parameters.method,
        extraction=parameters.extraction,
        device=parameters.device,
        model_path=modelPath,
        smoothing=bool(parameters.smoothing),
        uncertainty_samples=int(parameters.uncertaintySamples) if parameters.uncertainty else 0,
        design=designOptionsFromParameters(parameters),
        distance_map=bool(parameters.showDistanceMap),
        stl_folder=parameters.stlFolder if parameters.exportStl else None,
        max_triangles=int(parameters.maxTriangles) or None,
    )


#
# SkullVAECompletionWidget
#


class SkullVAECompletionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI over the Logic; layout in Resources/UI/SkullVAECompletion.ui."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._outputNode = None
        self._updatingGui = False
        self._previewPending = False  # a γ preview asked for while another update ran: run it when that ends
        self._designPending = False
        self._syncingWidgets = False  # writing the node's segment and folders into their widgets

    def resourcePath(self, filename: str) -> str:
        return moduleResourcePath(filename)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SkullVAECompletion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SkullVAECompletionLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.modelSourceComboBox.addItems([_("Bundled model"), _("Model folder (trained by you)")])
        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.stlFolderLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.progressBar.setVisible(False)

        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateSegmentList)
        # The widgets without a wrapper connector write into the parameter node themselves.
        self.ui.segmentComboBox.connect("currentIndexChanged(int)", self.onSegmentChanged)
        self.ui.modelSourceComboBox.connect("currentIndexChanged(int)", self.onModelSourceChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelFolderChanged)
        self.ui.stlFolderLineEdit.connect("currentPathChanged(QString)", self.onStlFolderChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.extractSkullButton.connect("clicked(bool)", self.onExtractSkull)
        # A design option changed: re-run only the design step on the cached completion, shortly after.
        self.designTimer = qt.QTimer()
        self.designTimer.setSingleShot(True)
        self.designTimer.interval = 500
        self.designTimer.connect("timeout()", self.onDesignTimeout)
        self._designShown = None
        # Live preview: re-decode shortly after the slider stops moving (the encoding is cached).
        self.previewTimer = qt.QTimer()
        self.previewTimer.setSingleShot(True)
        self.previewTimer.interval = 300
        self.previewTimer.connect("timeout()", self.onPreviewTimeout)
        self.ui.gammaSliderWidget.connect("valueChanged(double)", self.onGammaChanged)
        # The quality report and the distance map are measured after the result is shown (not on Apply's path).
        self.qualityTimer = qt.QTimer()
        self.qualityTimer.setSingleShot(True)
        self.qualityTimer.interval = 0
        self.qualityTimer.connect("timeout()", self.onQualityTimeout)

        self.initializeParameterNode()
        self.updateSegmentList()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.updateSegmentList()  # segments may have been added or renamed in another module meanwhile

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiState)

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        if self.logic.isRunning:
            self.logic.requestCancel()
        self.setParameterNode(None)
        self.logic.clearCache()
        self._outputNode = None

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.stlFolder:
            self._parameterNode.stlFolder = str(Path.home())
        if not self._parameterNode.inputNode:
            node = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode") or \
                slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLabelMapVolumeNode")
            if node:
                self._parameterNode.inputNode = node

    def setParameterNode(self, inputParameterNode: SkullVAECompletionParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiState)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiState)
        self.updateGuiState()

    # --- GUI state ---------------------------------------------------------------------------------
    def updateSegmentList(self, *args: Any) -> None:
        node = self.ui.inputSelector.currentNode()
        combo = self.ui.segmentComboBox
        previous = self._parameterNode.segmentId if self._parameterNode else combo.currentData
        self._syncingWidgets = True
        try:
            combo.clear()
            isSegmentation = node is not None and node.IsA("vtkMRMLSegmentationNode")
            if isSegmentation:
                segmentation = node.GetSegmentation()
                for segmentId in segmentation.GetSegmentIDs():
                    combo.addItem(segmentation.GetSegment(segmentId).GetName(), segmentId)
                index = combo.findData(previous)
                if index < 0:  # preselect a segment that looks like bone
                    names = [combo.itemText(i).lower() for i in range(combo.count)]
                    index = next((i for i, n in enumerate(names) if "skull" in n or "bone" in n), 0)
                combo.currentIndex = index
        finally:
            self._syncingWidgets = False
        self.ui.segmentLabel.setVisible(isSegmentation)
        combo.setVisible(isSegmentation)
        self.onSegmentChanged()

    def onSegmentChanged(self, *args: Any) -> None:
        if self._parameterNode is not None and not self._syncingWidgets:
            segmentId = self.ui.segmentComboBox.currentData or ""
            if self._parameterNode.segmentId != segmentId:
                self._parameterNode.segmentId = segmentId  # its ModifiedEvent updates the GUI state
                return
        self.updateGuiState()

    def onModelSourceChanged(self, index: int) -> None:
        if self._parameterNode is not None and not self._syncingWidgets:
            self._parameterNode.useBundledModel = index != 1

    def onModelFolderChanged(self, path: str) -> None:
        if self._parameterNode is not None and not self._syncingWidgets:
            self._parameterNode.modelFolder = path

    def onStlFolderChanged(self, path: str) -> None:
        if self._parameterNode is not None and not self._syncingWidgets:
            self._parameterNode.stlFolder = path

    def _showUnboundParameters(self, p: Any) -> None:
        """Write the parameters the wrapper does not connect into their widgets (a scene load, a script)."""
        self._syncingWidgets = True
        try:
            index = 0 if p.useBundledModel else 1
            if self.ui.modelSourceComboBox.currentIndex != index:
                self.ui.modelSourceComboBox.currentIndex = index
            if self.ui.modelPathLineEdit.currentPath != p.modelFolder:
                self.ui.modelPathLineEdit.currentPath = p.modelFolder
            if self.ui.stlFolderLineEdit.currentPath != p.stlFolder:
                self.ui.stlFolderLineEdit.currentPath = p.stlFolder
            index = self.ui.segmentComboBox.findData(p.segmentId)
            if index >= 0 and self.ui.segmentComboBox.currentIndex != index:
                self.ui.segmentComboBox.currentIndex = index
        finally:
            self._syncingWidgets = False

    def updateGuiState(self, *args: Any) -> None:
        if not hasattr(self, "ui"):
            return
        running = self.logic is not None and self.logic.isRunning
        # Read the parameter node, not the widgets: inside its ModifiedEvent this observer runs before the wrapper's
        # (VTK calls the newest observer first), so a value set from code is not in its widget yet.
        p = self._parameterNode
        if p is None:
            p = SimpleNamespace(useDefaultGamma=self.ui.defaultGammaCheckBox.checked,
                                exportStl=self.ui.stlExportCheckBox.checked,
                                uncertainty=self.ui.uncertaintyCheckBox.checked,
                                fixedThickness=self.ui.fixedThicknessCheckBox.checked,
                                flangeMm=self.ui.flangeSpinBox.value, ctVolume=self.ui.ctVolumeSelector.currentNode(),
                                inputNode=self.ui.inputSelector.currentNode(),
                                useBundledModel=self.ui.modelSourceComboBox.currentIndex != 1)
        else:
            self._showUnboundParameters(p)
        self.ui.modelPathLineEdit.enabled = not p.useBundledModel and not running
        self.ui.gammaSliderWidget.enabled = not p.useDefaultGamma
        self.ui.stlFolderLineEdit.enabled = p.exportStl
        self.ui.uncertaintySamplesSpinBox.enabled = p.uncertainty
        self.ui.thicknessSpinBox.enabled = p.fixedThickness
        self.ui.flangeThicknessSpinBox.enabled = p.flangeMm > 0
        self.ui.extractSkullButton.enabled = p.ctVolume is not None and not running
        self._scheduleDesignUpdate()
        # Everything a run reads is locked while it runs: a change made then would be shown but never applied.
        for widget in (self.ui.ctCollapsibleButton, self.ui.inputsCollapsibleButton, self.ui.designCollapsibleButton,
                       self.ui.gammaCollapsibleButton, self.ui.advancedCollapsibleButton):
            widget.enabled = not running
        hasInput = p.inputNode is not None
        self.ui.applyButton.enabled = running or hasInput
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.toolTip = _("Stop the running completion") if running else (
            _("Complete the skull and create the implant") if hasInput else _("Select the input skull first"))

    def onProgress(self, fraction: float, message: str) -> None:
        if self.ui.applyButton.text != _("Cancel"):
            self.updateGuiState()  # first report of a run: Apply becomes Cancel
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    # --- actions -----------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self.logic.isRunning:  # the button reads "Cancel" while running
            self.logic.requestCancel()
            self.ui.statusLabel.text = _("Cancelling after the current step…")
            return
        self.ui.progressBar.value = 0
        self.ui.progressBar.setVisible(True)
        self._previewPending = self._designPending = False  # the new result supersedes them
        self.updateGuiState()
        try:
            with slicer.util.tryWithErrorDisplay(_("Skull completion failed."), waitCursor=False):
                try:
                    from SkullVAECompletionLib import dependencies  # noqa: PLC0415

                    dependencies.ensureDependencies()
                    # The parameter node only: what the scene saves is what the run did.
                    parameters = self._parameterNode
                    node = parameters.inputNode
                    segmentId = (parameters.segmentId or None) if node and node.IsA("vtkMRMLSegmentationNode") \
                        else None
                    runOptions = completionOptionsFromParameters(parameters)
                    self._outputNode = self.logic.process(node, segmentId=segmentId, options=runOptions,
                                                          progress=self.onProgress, showSurfaces=True)
                    # What the result shows: a later difference from the parameters is applied by the design step.
                    self._designShown = runOptions.design
                    self._showResult()
                except CancelledError as error:
                    self.ui.statusLabel.text = errorMessage(error)  # not an error: no dialog
                except Exception as error:
                    self.ui.statusLabel.text = errorMessage(error)
                    raise
        finally:
            self.ui.progressBar.setVisible(False)
            self.updateGuiState()

    def _showResult(self) -> None:
        summary = self.logic.lastResult
        self.ui.statusLabel.text = summary.statusText()
        self._updatingGui = True
        try:
            # The slider shows the γ used (the model's default, say), within its range.
            self._parameterNode.gamma = min(max(summary.gamma, GAMMA_RANGE[0]), GAMMA_RANGE[1])
        finally:
            self._updatingGui = False
        if summary.uncertaintyNode is not None:
            slicer.util.setSliceViewerLayers(foreground=summary.uncertaintyNode, foregroundOpacity=0.5)
        self.qualityTimer.start()

    def onQualityTimeout(self) -> None:
        """Measure the shown result's quality report and distance map, then show them in the status line."""
        if self.logic.isRunning:
            self.qualityTimer.start()  # after the running update, which needs its own measurement anyway
            return
        if self._outputNode is None or self._outputNode.GetScene() is None or not self.logic.qualityPending:
            return
        with slicer.util.tryWithErrorDisplay(_("Measuring the implant failed."), waitCursor=True):
            summary = self.logic.measureQuality(self._outputNode)
            if summary is not None:
                self.ui.statusLabel.text = summary.statusText()

    def onGammaChanged(self, value: float) -> None:
        if not self._updatingGui and self._parameterNode is not None and self._parameterNode.livePreview \
                and self._outputNode is not None:
            self.previewTimer.start()

    def onPreviewTimeout(self) -> None:
        if self.logic.isRunning:  # a preview or design update is running (its events are processed meanwhile)
            self._previewPending = True
            return
        if self._outputNode is None or self._outputNode.GetScene() is None:
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Preview failed."), waitCursor=True):
                # The segments first; the quality report follows when nothing else is waiting (qualityTimer).
                self.logic.updateGamma(self._outputNode, self._parameterNode.gamma, updateUncertainty=False)
                self.ui.statusLabel.text = self.logic.lastResult.statusText()
                self.qualityTimer.start()
        finally:
            self._restartPendingUpdates()

    def _restartPendingUpdates(self) -> None:
        """Run the slider move or design change that came while an update ran (it reads the widgets' latest state)."""
        if self._previewPending:
            self._previewPending = False
            self.previewTimer.start()
        if self._designPending:
            self._designPending = False
            self.designTimer.start()

    def onExtractSkull(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Skull extraction failed."), waitCursor=True):
            from SkullVAECompletionLib import dependencies  # noqa: PLC0415

            dependencies.ensureDependencies(dependencies.SKULL_FROM_CT_PACKAGES)  # scipy; no torch needed
            node = self.logic.skullFromCT(self.ui.ctVolumeSelector.currentNode(), self._parameterNode.boneThresholdHu)
            self._parameterNode.inputNode = node  # the new skull is the completion's input
            self.ui.statusLabel.text = _("Skull extracted: {name}. Click Apply to complete it.").format(
                name=node.GetName())

    def _scheduleDesignUpdate(self) -> None:
        if self._parameterNode is None or self._outputNode is None or self.logic.isRunning:
            return
        try:
            design = designOptionsFromParameters(self._parameterNode)
        except InputError:
            return  # an intermediate value while typing; Apply reports it
        if design != self._designShown:
            self.designTimer.start()

    def onDesignTimeout(self) -> None:
        if self.logic.isRunning:
            self._designPending = True
            return
        if self._outputNode is None or self._outputNode.GetScene() is None:
            return
        design = designOptionsFromParameters(self._parameterNode)
        try:
            with slicer.util.tryWithErrorDisplay(_("Implant design failed."), waitCursor=True):
                self._designShown = design
                self.logic.updateDesign(self._outputNode, design, distanceMap=self._parameterNode.showDistanceMap)
                self.ui.statusLabel.text = self.logic.lastResult.statusText()
                self.qualityTimer.start()
        finally:
            self._restartPendingUpdates()


#
# SkullVAECompletionLogic
#


class SkullVAECompletionLogic(ScriptedLoadableModuleLogic):
    """Scriptable, blocking API; usable without the GUI and without the Slicer application (slicer-core).

    ``process`` never changes the input node and leaves the scene as it was on error or cancel. The quality report
    and the distance map of a result are measured on first use (``lastResult.fit``, ``measureQuality``), after the
    segments are shown.
    """

    def __init__(self, modelPath: str | os.PathLike | None = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.modelPath = modelPath  # None: the bundled model
        self.lastResult: mrml.CompletionSummary | None = None
        self.isRunning = False
        # In the application the engine runs in a worker thread while the GUI keeps processing events.
        self.useWorkerThread = HAVE_SLICER_APP
        self.completerFactory = None  # optional callable(modelPath, device) -> completer (tests, custom engines)
        self._completers: dict[tuple[str, str], Any] = {}
        self._cache: dict[str, mrml.CachedCompletion] = {}
        self._cancelRequested = False

    def getParameterNode(self) -> SkullVAECompletionParameterNode:
        return SkullVAECompletionParameterNode(super().getParameterNode())

    def requestCancel(self) -> None:
        """Stop the running completion at the next step (thread-safe: only sets a flag)."""
        self._cancelRequested = True

    def clearCache(self) -> None:
        """Forget cached encodings (scene closed) and loaded models (free memory)."""
        self._cache.clear()
        self._completers.clear()

    def releaseResult(self, segmentationNode: Any) -> None:
        """Forget the cached encoding of a result (batch processing: free memory, keep the loaded model)."""
        if segmentationNode is not None:
            self._cache.pop(segmentationNode.GetID(), None)

    def getCompleter(self, modelPath: str | os.PathLike | None = None, device: str = "auto") -> Any:
        """The engine for a model folder (None: bundled) and device; loaded once and cached."""
        key = (str(modelPath or ""), device)
        if key not in self._completers:
            if self.completerFactory is not None:
                self._completers[key] = self.completerFactory(modelPath, device)
            else:
                from SkullVAECompletionLib.inference.completion import SkullCompleter  # noqa: PLC0415  (imports torch)

                # One bundle per device: moving a model to a device changes it in place.
                self._completers[key] = SkullCompleter(bundle=str(modelPath) if modelPath else None, device=device)
        return self._completers[key]

    def process(
        self,
        inputNode: Any,
        segmentId: str | None = None,
        options: CompletionOptions | None = None,
        progress: mrml.ProgressCallback | None = None,
        outputName: str | None = None,
        showSurfaces: bool = False,
        **changes: Any,
    ) -> Any:
        """Complete the skull of ``inputNode``; return the new segmentation node ("Completed skull", "Implant").

        :param inputNode: segmentation node (skull segment ``segmentId``, or its only segment) or labelmap volume.
        :param options: what to do (:class:`SkullVAECompletionLib.options.CompletionOptions`; the panel's come from
            ``completionOptionsFromParameters``); None: the model's choices.
        :param progress: ``progress(fraction, message)``; may raise CancelledError to cancel.
        :param changes: single options by name, over ``options``: ``gamma`` (None: the model's default for the
            class), ``defectType`` ("auto" or one of the model's classes), ``method``, ``extraction``, ``device``,
            ``modelPath`` (None: ``self.modelPath`` or the bundled model), ``smoothing``, ``uncertaintySamples``,
            ``design`` (DesignOptions), ``distanceMap``, ``stlFolder`` (write the implant STL there, LPS mm),
            ``maxTriangles`` (decimate that STL); see CompletionOptions.
        :raises InputError, BundleError, DeviceError, CancelledError: with the message the GUI shows.
        """
        options = completionOptions(options, **changes)
        if self.isRunning:
            raise RuntimeError("A completion is already running; wait for it or cancel it.")
        start = time.perf_counter()
        self.isRunning = True
        self._cancelRequested = False
        report = self._reporter(progress)
        try:
            inputMask = mrml.inputMaskFromNode(inputNode, segmentId)
            scene = inputNode.GetScene()
            if scene is None:
                raise InputError(f"{mrml.describeNode(inputNode)} is not in a scene.")
            if inputMask.mask.base is not None:
                # A view of the node's voxels: the engine keeps its input for γ steps, and a worker thread reads it
                # while the scene may change, so it gets its own copy (which the engine then uses as it is).
                inputMask.mask = np.array(inputMask.mask, copy=True)
            modelPath = options.model_path if options.model_path is not None else self.modelPath
            if options.stl_folder:
                mrml.prepareFolder(options.stl_folder)

            def work(engineProgress: mrml.ProgressCallback) -> tuple[Any, Any, DesignedImplant]:
                from SkullVAECompletionLib import pipeline  # noqa: PLC0415  (imports scipy)

                engineProgress(0.0, "Loading the model")
                completer = self.getCompleter(modelPath, options.device)
                encoded = completer.encode(inputMask.mask, inputMask.worldIjkToRas, name=inputMask.name,
                                           progress=mrml.StageProgress(engineProgress, 0.05, 0.5))
                completion = pipeline.complete(completer, encoded, options,
                                               mrml.StageProgress(engineProgress, 0.5, 0.8))
                engineProgress(0.8, "Designing the implant")
                return completer, encoded, pipeline.design_completion(completion, inputMask.ijkToRas, options.design)

            completer, encoded, designed = mrml.runBlocking(
                work, report, lambda: self._cancelRequested, _processEvents(), self.useWorkerThread)
            result = designed.result
            # Everything from here on is published inside one rollback: a cancel at any later progress call (the
            # last, 1.0, included) or any error removes every node added since, the cached result and the files.
            with mrml.SceneRollback(scene) as rollback:
                previousResult = self.lastResult
                rollback.onRollback(lambda: setattr(self, "lastResult", previousResult))
                report(0.92, "Creating the segmentation")
                baseName = inputNode.GetName() or "Skull"
                segmentationNode = mrml.buildResultSegmentation(result, inputMask,
                                                                outputName or f"{baseName} completed")
                uncertaintyNode = None
                if result.uncertainty is not None:
                    uncertaintyNode = mrml.buildUncertaintyVolume(result.uncertainty, inputMask,
                                                                  f"{segmentationNode.GetName()} uncertainty")
                nodes = [segmentationNode] + [n for n in (uncertaintyNode,) if n is not None]
                mrml.addResultToScene(scene, nodes, inputNode, inputMask.transformNodeId, showSurfaces)
                uncertaintyNodeId = uncertaintyNode.GetID() if uncertaintyNode is not None else None
                cached = mrml.CachedCompletion(completer, encoded, inputMask, options, uncertaintyNodeId, designed)
                summary = self._publish(segmentationNode, cached, uncertaintyNode, None, start, measure=True)
                mrml.setResultAttributes(segmentationNode, summary, inputMask)
                if options.stl_folder:
                    report(0.96, "Writing the implant STL")
                    summary.stlFiles = mrml.exportImplantStl(segmentationNode, designed, options, rollback)
                nodeId = segmentationNode.GetID()
                self._cache[nodeId] = cached
                rollback.onRollback(lambda: self._cache.pop(nodeId, None))
                summary.seconds = mrml.elapsed(start)
                report(1.0, summary.statusText())  # a cancel point too: it takes all of the above back
            inputMask.mask = None  # the encoding keeps what it needs; don't pin the input's voxels
            logging.info("SkullVAE Completion: %s", summary.statusText())
            return segmentationNode
        finally:
            self.isRunning = False

    def _reporter(self, progress: mrml.ProgressCallback | None) -> mrml.ProgressCallback:
        """``progress`` made a cancel point: after each call a requested cancel raises CancelledError (the caller's
        rollback then undoes what the run published), as does the callback raising it itself."""
        def report(fraction: float, message: str) -> None:
            if progress is not None:
                progress(fraction, message)
            if self._cancelRequested:
                raise CancelledError(mrml.CANCELLED_MESSAGE)

        return report

    def updateGamma(self, segmentationNode: Any, gamma: float, defectType: str | None = None,
                    progress: mrml.ProgressCallback | None = None,
                    updateUncertainty: bool = True, measureFit: bool = True) -> mrml.CompletionSummary:
        """Re-decode with another γ (cached encoding) and replace the segments of ``segmentationNode`` in place.

        The quality report and the distance map are measured on first use (``measureQuality``; until then the
        distance map of the previous implant is hidden); ``measureFit=False`` leaves this result unmeasured.
        """
        cached = self._cached(segmentationNode)
        options = cached.options.replace(gamma=gamma, defect_type=defectType or cached.options.defect_type)

        def work(engineProgress: mrml.ProgressCallback) -> DesignedImplant:
            from SkullVAECompletionLib import pipeline  # noqa: PLC0415

            return pipeline.complete_and_design(cached.completer, cached.encoded, cached.inputMask.ijkToRas, options,
                                                engineProgress, uncertainty=updateUncertainty)

        def finish(designed: DesignedImplant) -> tuple[Any, bool]:
            uncertaintyNode = None
            if cached.uncertaintyNodeId:
                uncertaintyNode = segmentationNode.GetScene().GetNodeByID(cached.uncertaintyNodeId)
                if uncertaintyNode is not None and designed.result.uncertainty is not None:
                    mrml.updateUncertaintyVolume(uncertaintyNode, designed.result.uncertainty,
                                                 cached.inputMask.ijkToRas)
            return uncertaintyNode, measureFit

        return self._rerunInPlace(segmentationNode, cached, options, work, finish, progress)

    def updateDesign(self, segmentationNode: Any, design: DesignOptions, distanceMap: bool = True,
                     progress: mrml.ProgressCallback | None = None) -> mrml.CompletionSummary:
        """Apply other design options to the cached completion (no decoding) and update the result in place."""
        cached = self._cached(segmentationNode)
        options = cached.options.replace(design=design, distance_map=distanceMap)
        completion = cached.designed.completion

        def work(engineProgress: mrml.ProgressCallback) -> DesignedImplant:
            from SkullVAECompletionLib import pipeline  # noqa: PLC0415

            engineProgress(0.0, "Designing the implant")
            return pipeline.design_completion(completion, cached.inputMask.ijkToRas, design)

        def finish(designed: DesignedImplant) -> tuple[Any, bool]:
            if not distanceMap:
                mrml.updateDistanceModel(segmentationNode, cached, None)
            uncertaintyNode = segmentationNode.GetScene().GetNodeByID(cached.uncertaintyNodeId) \
                if cached.uncertaintyNodeId else None
            return uncertaintyNode, True

        return self._rerunInPlace(segmentationNode, cached, options, work, finish, progress)

    def _rerunInPlace(self, segmentationNode: Any, cached: mrml.CachedCompletion, options: CompletionOptions,
                       work: Callable[[mrml.ProgressCallback], DesignedImplant],
                       finish: Callable[[DesignedImplant], tuple[Any, bool]],
                       progress: mrml.ProgressCallback | None) -> mrml.CompletionSummary:
        """Run ``work`` (a new designed implant for the cached completion), then replace the result's segments in
        place; ``finish`` updates what else the change touches and says (uncertainty node, measure the quality)."""
        start = time.perf_counter()
        self.isRunning = True
        self._cancelRequested = False
        report = self._reporter(progress)

        def workThenLastCancelPoint(engineProgress: mrml.ProgressCallback) -> DesignedImplant:
            designed = work(engineProgress)
            engineProgress(0.95, "Updating the result")  # the last cancel point: the scene is not changed yet
            return designed

        try:
            designed = mrml.runBlocking(workThenLastCancelPoint, report, lambda: self._cancelRequested,
                                        _processEvents(), self.useWorkerThread)
            with self._inPlaceUpdate(segmentationNode, cached):
                mrml.updateResultSegments(segmentationNode, designed.result, cached.inputMask.ijkToRas)
                cached.options, cached.designed = options, designed
                uncertaintyNode, measure = finish(designed)
                staleDistanceMap = mrml.hideStaleDistanceModel(segmentationNode, cached)
                return self._publish(segmentationNode, cached, uncertaintyNode, staleDistanceMap, start, measure)
        finally:
            self.isRunning = False

    @property
    def qualityPending(self) -> bool:
        """Whether the last result's quality report is still to be measured (``measureQuality``)."""
        return self.lastResult is not None and self.lastResult.qualityPending

    def measureQuality(self, segmentationNode: Any = None,
                       progress: mrml.ProgressCallback | None = None) -> mrml.CompletionSummary | None:
        """Measure the quality report of the result shown in ``segmentationNode`` (default: the last result) and
        show its distance map; returns its summary (None when there is no such result). Done once per result:
        ``lastResult.fit`` calls this on first use, the module's panel right after it shows a result."""
        if segmentationNode is None:
            segmentationNode = self.lastResult.segmentationNode if self.lastResult is not None else None
        cached = self._cache.get(segmentationNode.GetID()) if segmentationNode is not None else None
        if cached is None or cached.designed is None or segmentationNode.GetScene() is None:
            return None
        designed, distanceMap, summary = cached.designed, cached.options.distance_map, cached.summary
        if not designed.measured:
            def work(engineProgress: mrml.ProgressCallback) -> None:
                engineProgress(0.0, "Measuring the implant")
                designed.quality(distanceMap)

            if self.isRunning:  # asked for from inside a run (a progress callback reading lastResult.fit)
                designed.quality(distanceMap)
            else:
                self.isRunning = True
                try:
                    mrml.runBlocking(work, self._reporter(progress), lambda: False, _processEvents(),
                                     self.useWorkerThread)
                finally:
                    self.isRunning = False
        distanceNode = mrml.updateDistanceModel(segmentationNode, cached,
                                                designed.surface() if distanceMap else None)
        if summary is not None:
            summary.setQuality(designed.quality(), distanceNode)
            mrml.setDesignAttributes(segmentationNode, mrml.resultRecord(summary, cached.options.max_triangles))
        return summary

    @contextlib.contextmanager
    def _inPlaceUpdate(self, segmentationNode: Any, cached: mrml.CachedCompletion) -> Iterator[None]:
        """The scene side of a γ or design update. Every progress call (the cancel points) happened before it; a
        cancel requested meanwhile stops it here, before anything changes. On an error inside, the nodes it added
        are removed and the cached result and ``lastResult`` are restored (the segments' voxels may hold the new
        result)."""
        if self._cancelRequested:
            raise CancelledError(mrml.CANCELLED_MESSAGE)
        saved = dataclasses.replace(cached)
        previousResult = self.lastResult

        def restore() -> None:
            cached.__dict__.update(saved.__dict__)
            self.lastResult = previousResult

        with mrml.SceneRollback(segmentationNode.GetScene()) as rollback:
            rollback.onRollback(restore)
            yield

    def _publish(self, segmentationNode: Any, cached: mrml.CachedCompletion, uncertaintyNode: Any, distanceNode: Any,
                 start: float, measure: bool) -> mrml.CompletionSummary:
        """Record a result (new or updated in place) on the result node and as ``lastResult``; its quality report is
        measured on first use when ``measure``, never otherwise (a γ preview)."""
        designed = cached.designed
        summary = mrml.resultSummary(cached.completer, designed.result, segmentationNode, uncertaintyNode, start,
                                     cached.options.design, distanceNode)
        if measure and not designed.empty:
            summary.measureQuality = lambda: self.measureQuality(segmentationNode)
        cached.summary = summary
        mrml.setResultAttributes(segmentationNode, summary)
        mrml.setDesignAttributes(segmentationNode, mrml.resultRecord(summary, cached.options.max_triangles))
        self.lastResult = summary
        return summary

    def skullFromCT(self, volumeNode: Any, threshold: float = options.DEFAULT_BONE_THRESHOLD_HU,
                    name: str | None = None) -> Any:
        """Extract the skull of a CT (bone ≥ ``threshold`` HU, largest connected piece) into a NEW segmentation
        node with one "Skull" segment, beside the CT (same study, same parent transform). The CT is not changed."""
        from SkullVAECompletionLib.preprocessing.skull_from_ct import skull_from_ct  # noqa: PLC0415

        array, _ = mrml.ctArrayFromNode(volumeNode)
        scene = volumeNode.GetScene()
        if scene is None:
            raise InputError(f"{mrml.describeNode(volumeNode)} is not in a scene.")
        mask = skull_from_ct(array, threshold, name=mrml.describeNode(volumeNode))
        node = mrml.buildSkullSegmentation(mask, volumeNode, name or f"{volumeNode.GetName() or 'CT'} skull")
        node.SetAttribute(mrml.ATTRIBUTE_PREFIX + "BoneThresholdHU", f"{threshold:g}")
        node.SetAttribute(mrml.ATTRIBUTE_PREFIX + "SourceVolumeID", volumeNode.GetID() or "")
        return mrml.addNodeNextTo(scene, node, volumeNode)

    def _cached(self, segmentationNode: Any) -> mrml.CachedCompletion:
        nodeId = segmentationNode.GetID() if segmentationNode is not None else None
        cached = self._cache.get(nodeId) if nodeId else None
        if cached is None or segmentationNode.GetScene() is None:
            raise InputError(
                f"{mrml.describeNode(segmentationNode)} has no cached encoding (it was not created by this module "
                "in this session, or the scene was closed): run the completion (Apply) again.")
        if self.isRunning:
            raise RuntimeError("A completion is already running; wait for it or cancel it.")
        return cached


def _processEvents() -> Any:
    return slicer.app.processEvents if HAVE_SLICER_APP else None


#
# SkullVAECompletionTest
#


class SkullVAECompletionTest(ScriptedLoadableModuleTest):
    """Builds a synthetic defective skull in the scene and runs the Logic on it (labelmap and segmentation).

    In Slicer: ``Slicer --no-main-window --testing --python-code "slicer.selfTests['SkullVAECompletion']()"``.
    ``modelPath`` (class attribute) selects the model bundle; None = the bundled model.
    """

    modelPath: str | None = None

    @staticmethod
    def missingDependencies() -> str | None:
        """Why the test cannot run (PyTorch or another engine package missing), or None.

        In the application outside testing mode the packages are installed (after the usual confirmation), as Apply
        does; in testing mode (``--testing``, ctest) and outside the application nothing is installed.
        """
        from SkullVAECompletionLib import dependencies  # noqa: PLC0415

        missing = dependencies.missingPackages()
        if not missing:
            return None
        if HAVE_SLICER_APP and not slicer.app.testingEnabled():
            dependencies.ensureDependencies()  # raises DependencyError if declined or failed
            return None
        return "SkullVAECompletion self-test skipped: " + dependencies.missingMessage(missing)

    def setUp(self) -> None:
        reason = self.missingDependencies()
        if reason:
            raise unittest.SkipTest(reason)  # the unittest runner (ctest's slicer_add_python_unittest) reports a skip
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        reason = self.missingDependencies()
        if reason:  # called directly (Reload and Test, slicer.selfTests): a SkipTest would show as an error there
            logging.warning(reason)
            self.delayDisplay(reason)
            return
        self.setUp()
        self.test_LabelmapInput()
        self.setUp()
        self.test_SegmentationInputAndGamma()

    def _addLabelmap(self) -> Any:
        mask, ijkToRas = makeSyntheticSkull()
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "DefectiveSkull")
        slicer.util.updateVolumeFromArray(node, mask.transpose(2, 1, 0))
        node.SetIJKToRASMatrix(mrml.arrayToMatrix(ijkToRas))
        return node

    def _checkResult(self, result: Any, inputArray: np.ndarray, inputIjkToRas: np.ndarray) -> None:
        segmentation = result.GetSegmentation()
        self.assertEqual(list(segmentation.GetSegmentIDs()), [mrml.SKULL_SEGMENT_ID, mrml.IMPLANT_SEGMENT_ID])
        images = {}
        for segmentId in segmentation.GetSegmentIDs():
            image = slicer.vtkOrientedImageData()
            slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
                result, segmentId, image, False)
            reference = mrml.orientedImageToArray(
                resampleToGrid(image, inputArray.shape, inputIjkToRas))[0]
            images[segmentId] = reference.astype(bool)
        completed, implant = images[mrml.SKULL_SEGMENT_ID], images[mrml.IMPLANT_SEGMENT_ID]
        self.assertTrue(np.all(completed[inputArray > 0]), "the completed skull must contain the input bone")
        self.assertFalse(np.any(implant & (inputArray > 0)), "the implant must not overlap the input bone")
        self.assertGreater(implant.sum(), 0, "the implant must not be empty")
        nearHole = syntheticHole(inputArray.shape, inputIjkToRas, scale=1.5)
        self.assertGreater((implant & nearHole).sum(), 0.5 * implant.sum(), "the implant must sit in the defect")
        self.assertTrue(result.GetAttribute(mrml.ATTRIBUTE_PREFIX + "ModelId"))

    def test_LabelmapInput(self) -> None:
        self.delayDisplay("Completing a synthetic labelmap skull")
        inputNode = self._addLabelmap()
        before = slicer.util.arrayFromVolume(inputNode).copy()
        logic = SkullVAECompletionLogic(modelPath=self.modelPath)
        result = logic.process(inputNode)
        self.assertTrue(np.array_equal(before, slicer.util.arrayFromVolume(inputNode)), "input was changed")
        mask, ijkToRas = makeSyntheticSkull()
        self._checkResult(result, mask, ijkToRas)
        self.assertIn(logic.lastResult.detectedType, logic.lastResult.result.class_probabilities)
        self.delayDisplay("Labelmap input passed")

    def test_SegmentationInputAndGamma(self) -> None:
        self.delayDisplay("Completing a synthetic segmentation skull, then changing γ")
        labelmap = self._addLabelmap()
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "SkullSegmentation")
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentationNode)
        segmentId = segmentationNode.GetSegmentation().GetNthSegmentID(0)
        logic = SkullVAECompletionLogic(modelPath=self.modelPath)
        result = logic.process(segmentationNode, segmentId=segmentId)
        mask, ijkToRas = makeSyntheticSkull()
        self._checkResult(result, mask, ijkToRas)
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        summary = logic.updateGamma(result, 0.5)
        self.assertAlmostEqual(summary.gamma, 0.5)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore, "γ update must work in place")
        self._checkResult(result, mask, ijkToRas)
        self.delayDisplay("Segmentation input passed")
