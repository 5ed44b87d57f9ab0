"""SkullVAE Completion: complete a defective skull and design the cranial implant with an aggregated β-VAE.

Scripted loadable module (module, widget, logic, test). The Logic is the public, scriptable, blocking API:

    logic = SkullVAECompletionLogic()
    segmentationNode = logic.process(skullSegmentationNode, segmentId="Segment_1")   # or a labelmap node
    print(logic.lastResult.statusText())
    logic.updateGamma(segmentationNode, 0.8)                                          # re-decodes in place

This file imports under plain Python with ``slicer-core`` (no Qt): Qt-only imports are guarded and minimal
stand-ins replace the ScriptedLoadableModule base classes only when the real ones are absent.
Heavy lifting lives in ``SkullVAECompletionLib`` (engine) and ``SkullVAECompletionLib.mrml`` (nodes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import unittest
from collections.abc import Iterator
from dataclasses import dataclass
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
except ImportError:  # slicer-core only (CI, batch scripts): stand-ins, see below
    HAVE_SLICER_APP = False
    qt = ctk = None
    # The parameter node class is built by a stand-in that follows Slicer's serializer and GUI connector rules
    # (an annotation the application could not serialise or connect fails here too).
    from slicer.util import VTKObservationMixin  # in slicer-core

    from SkullVAECompletionLib.parameter_node import Choice, WithinRange, parameterNodeWrapper

    def _(text: str) -> str:
        return text

    def translate(context: str, text: str) -> str:
        return text

    class ScriptedLoadableModule:
        """Stand-in for slicer.ScriptedLoadableModule.ScriptedLoadableModule (absent in slicer-core)."""

        def __init__(self, parent: Any) -> None:
            self.parent = parent
            self.moduleName = self.__class__.__name__

        def resourcePath(self, filename: str) -> str:
            return moduleResourcePath(filename)

    class ScriptedLoadableModuleWidget:
        """Stand-in so the widget class can be defined; it needs the application to be used."""

        def __init__(self, parent: Any = None) -> None:
            raise RuntimeError("The SkullVAE Completion widget needs the 3D Slicer application.")

    class ScriptedLoadableModuleLogic:
        """Stand-in for the logic base class: module name and the scene's singleton parameter node."""

        def __init__(self, parent: Any = None) -> None:
            self.moduleName = self.__class__.__name__.removesuffix("Logic")

        def getParameterNode(self) -> Any:
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
                node.SetAttribute("ModuleName", self.moduleName)
                node.SetHideFromEditors(True)
                node.SetSingletonTag(self.moduleName)
                node = slicer.mrmlScene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        """Stand-in for the test base class: ``delayDisplay`` logs instead of showing a message box."""

        def delayDisplay(self, message: str, requestedDelay: int | None = None, msec: int | None = None) -> None:
            logging.info(message)

        def setUp(self) -> None:
            return


from SkullVAECompletionLib import mrml, options  # noqa: E402  (no torch import: the engine is imported at first use)
from SkullVAECompletionLib.dependencies import DependencyError  # noqa: E402  (imports no slicer/torch)

if TYPE_CHECKING:  # the engine (scipy, torch) is imported at first use, after the dependencies are installed
    from SkullVAECompletionLib.design import DesignOptions
from SkullVAECompletionLib.errors import CancelledError, InputError, SkullVAEError  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parent
SAMPLE_DATA_FILE = "SampleData/CraniumSkull.nrrd"  # relative to Resources/
SAMPLE_DATA_SHA256 = "bbf16d94657c9b3eabb3c3e9b089eaec0c15e21acb6f5b781a357bdb46e73466"
# The GUI's choices (SkullVAECompletionLib/options.py, shared with the engine and the CLI). The Logic checks the defect
# type against the model in use.
DEFECT_TYPES = list(options.DEFECT_TYPES)
METHODS = list(options.METHODS)
EXTRACTIONS = list(options.EXTRACTIONS)
DEVICES = list(options.GUI_DEVICES)


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
    """GUI choices, saved with the scene. Paths and the segment are read from their widgets at Apply."""

    # Node types include None (Slicer's template does too): the wrapper writes the default None at creation, and a
    # union of node types without None cannot serialise it (TypeError in getParameterNode: the panel never connects).
    inputNode: vtkMRMLSegmentationNode | vtkMRMLLabelMapVolumeNode | None
    defectType: Annotated[str, Choice(DEFECT_TYPES)] = "auto"
    method: Annotated[str, Choice(METHODS)] = "auto"
    extraction: Annotated[str, Choice(EXTRACTIONS)] = "auto"
    device: Annotated[str, Choice(DEVICES)] = "auto"
    useDefaultGamma: bool = True
    gamma: Annotated[float, WithinRange(0.0, 2.0)] = 1.0
    livePreview: bool = True
    smoothing: bool = True
    uncertainty: bool = False
    uncertaintySamples: Annotated[int, WithinRange(2, 64)] = 8
    exportStl: bool = False
    # Skull from CT
    ctVolume: vtkMRMLScalarVolumeNode | None
    boneThresholdHu: Annotated[float, WithinRange(-1000.0, 3000.0)] = options.DEFAULT_BONE_THRESHOLD_HU
    # Implant design (see SkullVAECompletionLib.design.DesignOptions); changing one re-runs only the design step
    fixedThickness: bool = False
    thicknessMm: Annotated[float, WithinRange(0.5, 15.0)] = options.DEFAULT_FIXED_THICKNESS_MM
    flangeMm: Annotated[float, WithinRange(0.0, 20.0)] = options.DEFAULT_FLANGE_MM
    flangeThicknessMm: Annotated[float, WithinRange(0.5, 5.0)] = options.DEFAULT_FLANGE_THICKNESS_MM
    clearanceMm: Annotated[float, WithinRange(0.0, 5.0)] = options.DEFAULT_CLEARANCE_MM
    edgeRadiusMm: Annotated[float, WithinRange(0.0, 3.0)] = options.DEFAULT_EDGE_RADIUS_MM
    maxTriangles: Annotated[int, WithinRange(0, 10000000)] = 0
    showDistanceMap: bool = True


DESIGN_PARAMETERS = ("fixedThickness", "thicknessMm", "flangeMm", "flangeThicknessMm", "clearanceMm", "edgeRadiusMm")


def designOptionsFromParameters(parameters: Any) -> DesignOptions:
    """The engine's design options from the parameter node (or any object with the same attributes)."""
    from SkullVAECompletionLib.design import DesignOptions  # noqa: PLC0415  (scipy: installed at first Apply)

    return DesignOptions(
        thickness_mm=float(parameters.thicknessMm) if parameters.fixedThickness else None,
        flange_mm=float(parameters.flangeMm),
        flange_thickness_mm=float(parameters.flangeThicknessMm),
        clearance_mm=float(parameters.clearanceMm),
        edge_radius_mm=float(parameters.edgeRadiusMm),
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
        self.ui.stlFolderLineEdit.currentPath = str(Path.home())
        self.ui.progressBar.setVisible(False)

        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateSegmentList)
        self.ui.modelSourceComboBox.connect("currentIndexChanged(int)", self.updateGuiState)
        self.ui.defaultGammaCheckBox.connect("toggled(bool)", self.updateGuiState)
        self.ui.stlExportCheckBox.connect("toggled(bool)", self.updateGuiState)
        self.ui.uncertaintyCheckBox.connect("toggled(bool)", self.updateGuiState)
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
        previous = combo.currentData
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
        self.ui.segmentLabel.setVisible(isSegmentation)
        combo.setVisible(isSegmentation)
        self.updateGuiState()

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
                                inputNode=self.ui.inputSelector.currentNode())
        self.ui.modelPathLineEdit.enabled = self.ui.modelSourceComboBox.currentIndex == 1 and not running
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

    def _modelPath(self) -> str | None:
        if self.ui.modelSourceComboBox.currentIndex == 1:
            path = self.ui.modelPathLineEdit.currentPath
            if not path:
                raise InputError("Choose the folder of your trained model bundle (it holds manifest.json).")
            return path
        return None

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
                    node = self.ui.inputSelector.currentNode()
                    segmentId = self.ui.segmentComboBox.currentData if node and node.IsA(
                        "vtkMRMLSegmentationNode") else None
                    stlFolder = self.ui.stlFolderLineEdit.currentPath if self.ui.stlExportCheckBox.checked else None
                    design = designOptionsFromParameters(self._parameterNode)
                    self._outputNode = self.logic.process(
                        node, segmentId=segmentId,
                        gamma=None if self.ui.defaultGammaCheckBox.checked else self.ui.gammaSliderWidget.value,
                        defectType=self._parameterNode.defectType, device=self._parameterNode.device,
                        method=None if self._parameterNode.method == "auto" else self._parameterNode.method,
                        extraction=None if self._parameterNode.extraction == "auto" else self._parameterNode.extraction,
                        progress=self.onProgress, modelPath=self._modelPath(),
                        smoothing=self.ui.smoothingCheckBox.checked,
                        uncertaintySamples=self.ui.uncertaintySamplesSpinBox.value
                        if self.ui.uncertaintyCheckBox.checked else 0,
                        stlFolder=stlFolder, showSurfaces=True,
                        design=design,
                        distanceMap=self._parameterNode.showDistanceMap,
                        maxTriangles=self._parameterNode.maxTriangles or None,
                    )
                    # What the result shows: a later difference from the parameters is applied by the design step.
                    self._designShown = design
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
            self.ui.gammaSliderWidget.value = summary.gamma
        finally:
            self._updatingGui = False
        if summary.uncertaintyNode is not None:
            slicer.util.setSliceViewerLayers(foreground=summary.uncertaintyNode, foregroundOpacity=0.5)

    def onGammaChanged(self, value: float) -> None:
        if not self._updatingGui and self.ui.livePreviewCheckBox.checked and self._outputNode is not None:
            self.previewTimer.start()

    def onPreviewTimeout(self) -> None:
        if self.logic.isRunning:  # a preview or design update is running (its events are processed meanwhile)
            self._previewPending = True
            return
        if self._outputNode is None or self._outputNode.GetScene() is None:
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Preview failed."), waitCursor=True):
                self.logic.updateGamma(self._outputNode, self.ui.gammaSliderWidget.value, updateUncertainty=False,
                                       measureFit=False)
                self.ui.statusLabel.text = self.logic.lastResult.statusText()
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
        finally:
            self._restartPendingUpdates()


#
# SkullVAECompletionLogic
#


@dataclass
class _Session:
    """What a result node needs to be re-decoded with another γ."""

    completer: Any
    encoded: Any
    inputMask: mrml.InputMask
    defectType: str
    smoothing: bool
    uncertaintySamples: int
    uncertaintyNodeId: str | None
    completion: Any = None  # the completion before design: a design change starts from it, without decoding
    design: DesignOptions | None = None
    distanceModelId: str | None = None
    maxTriangles: int | None = None
    method: str | None = None  # None: the model's default
    extraction: str | None = None  # None: the model's choice for the class (else the rim-conforming stage)


class SkullVAECompletionLogic(ScriptedLoadableModuleLogic):
    """Scriptable, blocking API; usable without the GUI and without the Slicer application (slicer-core).

    ``process`` never changes the input node and leaves the scene as it was on error or cancel.
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
        self._sessions: dict[str, _Session] = {}
        self._cancelRequested = False

    def getParameterNode(self) -> SkullVAECompletionParameterNode:
        return SkullVAECompletionParameterNode(super().getParameterNode())

    def requestCancel(self) -> None:
        """Stop the running completion at the next step (thread-safe: only sets a flag)."""
        self._cancelRequested = True

    def clearCache(self) -> None:
        """Forget cached encodings (scene closed) and loaded models (free memory)."""
        self._sessions.clear()
        self._completers.clear()

    def releaseResult(self, segmentationNode: Any) -> None:
        """Forget the cached encoding of a result (batch processing: free memory, keep the loaded model)."""
        if segmentationNode is not None:
            self._sessions.pop(segmentationNode.GetID(), None)

    def getCompleter(self, modelPath: str | os.PathLike | None = None, device: str = "auto") -> Any:
        """The engine for a model folder (None: bundled) and device; loaded once and cached."""
        key = (str(modelPath or ""), device)
        if key not in self._completers:
            if self.completerFactory is not None:
                self._completers[key] = self.completerFactory(modelPath, device)
            else:
                from SkullVAECompletionLib.completion import SkullCompleter  # noqa: PLC0415  (imports torch)

                # One bundle per device: moving a model to a device changes it in place.
                self._completers[key] = SkullCompleter(bundle=str(modelPath) if modelPath else None, device=device)
        return self._completers[key]

    def process(
        self,
        inputNode: Any,
        segmentId: str | None = None,
        gamma: float | None = None,
        defectType: str = "auto",
        device: str = "auto",
        progress: mrml.ProgressCallback | None = None,
        modelPath: str | os.PathLike | None = None,
        smoothing: bool = True,
        uncertaintySamples: int = 0,
        stlFolder: str | os.PathLike | None = None,
        outputName: str | None = None,
        showSurfaces: bool = False,
        design: DesignOptions | None = None,
        distanceMap: bool = True,
        maxTriangles: int | None = None,
        method: str | None = None,
        extraction: str | None = None,
    ) -> Any:
        """Complete the skull of ``inputNode``; return the new segmentation node ("Completed skull", "Implant").

        :param inputNode: segmentation node (skull segment ``segmentId``, or its only segment) or labelmap volume.
        :param gamma: latent shift factor; None uses the model's default for the defect type.
        :param defectType: "auto" (the class the model detects) or one of the model's defect classes (bundled
            model: frontal, frontoorbital, parietotemporal_left, parietotemporal_right, occipital, vertex, facial).
        :param device: "auto" (CUDA when available), "cpu" or "cuda" (DeviceError when absent).
        :param progress: ``progress(fraction, message)``; may raise CancelledError to cancel.
        :param modelPath: model bundle folder; None uses ``self.modelPath`` or the bundled model.
        :param uncertaintySamples: > 0 also creates an uncertainty volume node from that many decodes.
        :param stlFolder: if given, the implant is written there as STL (LPS, mm).
        :param design: implant design options (thickness, flange, clearance, rounding); None: as completed.
        :param distanceMap: also add the implant surface coloured by its distance to the skull (a model node).
        :param maxTriangles: decimate the exported STL to at most this many triangles (within 0.2 mm).
        :param method: "dev", "knn", "refine" (decoder with a latent shift) or "mirror" (the healthy side mirrored);
            None: the model's default.
        :param extraction: "rim" (implant surfaces fitted to the intact bone), "decode" (decoded minus input bone,
            the paper's way) or "union" (both); None: the model's choice for the defect class, else "rim".
        :raises InputError, BundleError, DeviceError, CancelledError: with the message the GUI shows.
        """
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
            if self.useWorkerThread:
                inputMask.mask = np.array(inputMask.mask, copy=True)  # the worker must not read the node's memory
            modelPath = modelPath if modelPath is not None else self.modelPath
            if stlFolder:
                mrml.prepareFolder(stlFolder)

            def work(engineProgress: mrml.ProgressCallback) -> tuple[Any, Any, Any]:
                engineProgress(0.0, "Loading the model")
                completer = self.getCompleter(modelPath, device)
                encoded = completer.encode(inputMask.mask, inputMask.worldIjkToRas, name=inputMask.name,
                                           progress=mrml.StageProgress(engineProgress, 0.05, 0.5))
                completion = completer.complete(encoded, gamma=gamma, defect_type=defectType, smoothing=smoothing,
                                                uncertainty_samples=uncertaintySamples, method=method,
                                                extraction=extraction,
                                                progress=mrml.StageProgress(engineProgress, 0.5, 0.8))
                engineProgress(0.8, "Designing the implant")
                designed = _designAndFit(completion, design, inputMask.ijkToRas, distanceMap)
                return completer, encoded, completion, designed

            completer, encoded, completion, designed = mrml.runBlocking(
                work, report, lambda: self._cancelRequested, _processEvents(), self.useWorkerThread)
            result, fit, surface = designed
            # Everything from here on is published inside one rollback: a cancel at any later progress call (the
            # last, 1.0, included) or any error removes every node added since, the cached session and the files.
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
                distanceNode = None
                if surface is not None:
                    distanceNode = mrml.buildDistanceModel(surface, f"{segmentationNode.GetName()} distance to skull")
                summary = self._summary(completer, result, segmentationNode, uncertaintyNode, start, fit, design,
                                        distanceNode)
                mrml.setResultAttributes(segmentationNode, summary, inputMask)
                mrml.setDesignAttributes(segmentationNode, self._record(summary, maxTriangles))
                nodes = [segmentationNode] + [n for n in (uncertaintyNode, distanceNode) if n is not None]
                mrml.addResultToScene(scene, nodes, inputNode, inputMask.transformNodeId, showSurfaces)
                if distanceNode is not None:
                    mrml.showDistanceModel(distanceNode, mrml.distanceColorNode(scene))
                if stlFolder:
                    report(0.96, "Writing the implant STL")
                    summary.stlFiles = self._exportStl(segmentationNode, result, inputMask, stlFolder, maxTriangles,
                                                       rollback)
                nodeId = segmentationNode.GetID()
                self._sessions[nodeId] = _Session(
                    completer, encoded, inputMask, defectType, smoothing, uncertaintySamples,
                    uncertaintyNode.GetID() if uncertaintyNode is not None else None, completion, design,
                    distanceNode.GetID() if distanceNode is not None else None, maxTriangles, method, extraction)
                rollback.onRollback(lambda: self._sessions.pop(nodeId, None))
                summary.seconds = mrml.elapsed(start)
                self.lastResult = summary
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

        ``measureFit=False`` (the γ slider's live preview) skips the fit report and the distance map, which cost
        more than the completion itself on sub-millimetre scans; they are measured again by the next full update.
        """
        session = self._session(segmentationNode)
        start = time.perf_counter()
        self.isRunning = True
        self._cancelRequested = False
        report = self._reporter(progress)
        try:
            samples = session.uncertaintySamples if updateUncertainty else 0
            chosenType = defectType or session.defectType

            def work(engineProgress: mrml.ProgressCallback) -> tuple[Any, Any]:
                completion = session.completer.complete(
                    session.encoded, gamma=gamma, defect_type=chosenType, smoothing=session.smoothing,
                    uncertainty_samples=samples, progress=engineProgress, method=session.method,
                    extraction=session.extraction)
                designed = _designAndFit(completion, session.design, session.inputMask.ijkToRas,
                                         session.distanceModelId is not None, measureFit)
                engineProgress(0.95, "Updating the result")  # the last cancel point: the scene is not changed yet
                return completion, designed

            completion, (result, fit, surface) = mrml.runBlocking(
                work, report, lambda: self._cancelRequested, _processEvents(), self.useWorkerThread)
            with self._inPlaceUpdate(segmentationNode, session):
                mrml.updateResultSegments(segmentationNode, result, session.inputMask.ijkToRas)
                session.defectType = chosenType
                session.completion = completion
                if measureFit:
                    distanceNode = self._updateDistanceModel(segmentationNode, session, surface)
                else:  # hidden until measured again: it describes the previous implant
                    distanceNode = segmentationNode.GetScene().GetNodeByID(session.distanceModelId or "")
                    if distanceNode is not None and distanceNode.GetDisplayNode() is not None:
                        distanceNode.GetDisplayNode().SetVisibility(False)
                uncertaintyNode = None
                if session.uncertaintyNodeId:
                    uncertaintyNode = segmentationNode.GetScene().GetNodeByID(session.uncertaintyNodeId)
                    if uncertaintyNode is not None and result.uncertainty is not None:
                        mrml.updateUncertaintyVolume(uncertaintyNode, result.uncertainty,
                                                     session.inputMask.ijkToRas)
                return self._publish(segmentationNode, session, result, fit, uncertaintyNode, distanceNode, start)
        finally:
            self.isRunning = False

    def updateDesign(self, segmentationNode: Any, design: DesignOptions, distanceMap: bool = True,
                     progress: mrml.ProgressCallback | None = None) -> mrml.CompletionSummary:
        """Apply other design options to the cached completion (no decoding) and update the result in place."""
        session = self._session(segmentationNode)
        start = time.perf_counter()
        self.isRunning = True
        self._cancelRequested = False
        report = self._reporter(progress)
        try:
            def work(engineProgress: mrml.ProgressCallback) -> tuple[Any, Any, Any]:
                engineProgress(0.0, "Designing the implant")
                designed = _designAndFit(session.completion, design, session.inputMask.ijkToRas, distanceMap)
                engineProgress(0.95, "Updating the result")  # the last cancel point: the scene is not changed yet
                return designed

            result, fit, surface = mrml.runBlocking(
                work, report, lambda: self._cancelRequested, _processEvents(), self.useWorkerThread)
            with self._inPlaceUpdate(segmentationNode, session):
                mrml.updateResultSegments(segmentationNode, result, session.inputMask.ijkToRas)
                session.design = design
                distanceNode = self._updateDistanceModel(segmentationNode, session, surface if distanceMap else None)
                uncertaintyNode = segmentationNode.GetScene().GetNodeByID(session.uncertaintyNodeId) \
                    if session.uncertaintyNodeId else None
                return self._publish(segmentationNode, session, result, fit, uncertaintyNode, distanceNode, start)
        finally:
            self.isRunning = False

    @contextlib.contextmanager
    def _inPlaceUpdate(self, segmentationNode: Any, session: _Session) -> Iterator[None]:
        """The scene side of a γ or design update. Every progress call (the cancel points) happened before it; a
        cancel requested meanwhile stops it here, before anything changes. On an error inside, the nodes it added
        are removed and the session and ``lastResult`` are restored (the segments' voxels may hold the new result)."""
        if self._cancelRequested:
            raise CancelledError(mrml.CANCELLED_MESSAGE)
        saved = dataclasses.replace(session)
        previousResult = self.lastResult

        def restore() -> None:
            session.__dict__.update(saved.__dict__)
            self.lastResult = previousResult

        with mrml.SceneRollback(segmentationNode.GetScene()) as rollback:
            rollback.onRollback(restore)
            yield

    def _publish(self, segmentationNode: Any, session: _Session, result: Any, fit: Any, uncertaintyNode: Any,
                 distanceNode: Any, start: float) -> mrml.CompletionSummary:
        """Record an in-place update (γ or design) on the result node and as ``lastResult``."""
        summary = self._summary(session.completer, result, segmentationNode, uncertaintyNode, start, fit,
                                session.design, distanceNode)
        mrml.setResultAttributes(segmentationNode, summary)
        mrml.setDesignAttributes(segmentationNode, self._record(summary, session.maxTriangles))
        self.lastResult = summary
        return summary

    def skullFromCT(self, volumeNode: Any, threshold: float = 300.0, name: str | None = None) -> Any:
        """Extract the skull of a CT (bone ≥ ``threshold`` HU, largest connected piece) into a NEW segmentation
        node with one "Skull" segment, beside the CT (same study, same parent transform). The CT is not changed."""
        from SkullVAECompletionLib.skull_from_ct import skull_from_ct  # noqa: PLC0415

        array, _ = mrml.ctArrayFromNode(volumeNode)
        scene = volumeNode.GetScene()
        if scene is None:
            raise InputError(f"{mrml.describeNode(volumeNode)} is not in a scene.")
        mask = skull_from_ct(array, threshold, name=mrml.describeNode(volumeNode))
        node = mrml.buildSkullSegmentation(mask, volumeNode, name or f"{volumeNode.GetName() or 'CT'} skull")
        node.SetAttribute(mrml.ATTRIBUTE_PREFIX + "BoneThresholdHU", f"{threshold:g}")
        node.SetAttribute(mrml.ATTRIBUTE_PREFIX + "SourceVolumeID", volumeNode.GetID() or "")
        return mrml.addNodeNextTo(scene, node, volumeNode)

    def _session(self, segmentationNode: Any) -> _Session:
        nodeId = segmentationNode.GetID() if segmentationNode is not None else None
        session = self._sessions.get(nodeId) if nodeId else None
        if session is None or segmentationNode.GetScene() is None:
            raise InputError(
                f"{mrml.describeNode(segmentationNode)} has no cached encoding (it was not created by this module "
                "in this session, or the scene was closed): run the completion (Apply) again.")
        if self.isRunning:
            raise RuntimeError("A completion is already running; wait for it or cancel it.")
        return session

    def _updateDistanceModel(self, segmentationNode: Any, session: _Session, surface: Any) -> Any:
        """Replace the distance map's surface in place, create it, or remove it (``surface`` None)."""
        scene = segmentationNode.GetScene()
        node = scene.GetNodeByID(session.distanceModelId) if session.distanceModelId else None
        if surface is None:
            if node is not None:
                mrml.removeNodes(scene, [node])
            session.distanceModelId = None
            return None
        if node is None:
            node = mrml.buildDistanceModel(surface, f"{segmentationNode.GetName()} distance to skull")
            mrml.addNodeNextTo(scene, node, segmentationNode)
            mrml.showDistanceModel(node, mrml.distanceColorNode(scene))
            session.distanceModelId = node.GetID()
        else:
            node.SetAndObservePolyData(surface)
            if node.GetDisplayNode() is not None:
                node.GetDisplayNode().SetVisibility(True)  # a γ preview may have hidden it
        return node

    @staticmethod
    def _record(summary: mrml.CompletionSummary, maxTriangles: int | None) -> dict:
        from SkullVAECompletionLib.design import DesignOptions  # noqa: PLC0415
        from SkullVAECompletionLib.fit import summary_record  # noqa: PLC0415

        return summary_record(summary.result, summary.modelId, summary.modelVersion, summary.design or DesignOptions(),
                              summary.fit, max_triangles=maxTriangles)

    @staticmethod
    def _exportStl(segmentationNode: Any, result: Any, inputMask: mrml.InputMask, folder: Any,
                   maxTriangles: int | None, rollback: mrml.SceneRollback | None = None) -> list[str]:
        """Write the implant STL; a rollback of the run deletes the files this export created."""
        existing = set(mrml.prepareFolder(folder).glob("*.stl"))
        if rollback is not None:
            def deleteCreated() -> None:
                for path in set(mrml.prepareFolder(folder).glob("*.stl")) - existing:
                    path.unlink(missing_ok=True)

            rollback.onRollback(deleteCreated)  # registered first: a failing export may have left a file
        if not maxTriangles:
            return mrml.exportImplantStl(segmentationNode, folder)
        from SkullVAECompletionLib.io import write_stl  # noqa: PLC0415

        if not np.any(result.implant):
            return []
        path = mrml.prepareFolder(folder) / f"{segmentationNode.GetName()} implant.stl"
        return [str(write_stl(path, result.implant, inputMask.ijkToRas, "LPS", overwrite=True,
                              max_triangles=maxTriangles))]

    @staticmethod
    def _summary(completer: Any, result: Any, segmentationNode: Any, uncertaintyNode: Any, start: float,
                 fit: Any = None, design: DesignOptions | None = None,
                 distanceNode: Any = None) -> mrml.CompletionSummary:
        bundle = getattr(completer, "bundle", None)
        return mrml.CompletionSummary(
            segmentationNode=segmentationNode, uncertaintyNode=uncertaintyNode, defectType=result.defect_type,
            detectedType=result.detected_type, detectedBy=getattr(result, "detected_by", mrml.BY_CLASS_HEAD),
            confidence=float(getattr(result, "class_probabilities", {}).get(result.detected_type, result.confidence)),
            gamma=float(result.gamma),
            modelId=getattr(bundle, "model_id", "unknown"), modelVersion=getattr(bundle, "version", "unknown"),
            device=str(getattr(completer, "device", "cpu")), seconds=mrml.elapsed(start),
            implantVolumeMl=float(getattr(result, "implant_volume_ml", 0.0)), timings=dict(result.timings),
            result=result, fit=fit, design=design, distanceModelNode=distanceNode)


def _processEvents() -> Any:
    return slicer.app.processEvents if HAVE_SLICER_APP else None


def _designAndFit(completion: Any, design: DesignOptions | None, ijkToRas: np.ndarray,
                  withSurface: bool, measure: bool = True) -> tuple[Any, Any, Any]:
    """Engine side of the design step (no MRML: it may run in the worker thread).

    Returns the designed result (completed = input ∪ designed implant), its fit report and, if asked for, the
    implant surface carrying the distance-to-skull array (both None for an empty implant or without ``measure``).
    """
    from SkullVAECompletionLib.design import DesignOptions, apply_design  # noqa: PLC0415
    from SkullVAECompletionLib.fit import fit_report  # noqa: PLC0415
    from SkullVAECompletionLib.io import mask_to_surface  # noqa: PLC0415

    design = design or DesignOptions()
    if not measure and not design.changes_shape:
        return completion, None, None  # the γ slider's preview: nothing to reshape or measure
    result, _ = apply_design(completion, ijkToRas, design)
    if not measure or not np.any(result.implant):
        return result, None, None
    surface = mask_to_surface(result.implant, ijkToRas) if withSurface else None
    fit = fit_report(result.implant, completion.defective, ijkToRas, defect=completion.implant, surface=surface)
    return result, fit, surface


#
# SkullVAECompletionTest
#


SYNTHETIC_HOLE_CENTRE_RAS = (35.0, 20.0, 55.0)  # a cranial defect on the upper right of the vault
SYNTHETIC_HOLE_RADIUS_MM = 30.0


def makeSyntheticSkull(shape: tuple[int, int, int] = (60, 70, 60), ijkToRas: np.ndarray | None = None,
                       withHole: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic skull-like shell centred at RAS (0, 0, 0) with a round cranial hole, indexed (i, j, k) on the grid
    ``ijkToRas`` (default: RAS-aligned, 3 mm, centred). See ``SkullVAECompletionLib.synthetic``."""
    from SkullVAECompletionLib import synthetic  # noqa: PLC0415  (numpy only)

    if ijkToRas is None:
        ijkToRas = synthetic.centred_ijk_to_ras(shape, (3.0, 3.0, 3.0))
    shell = synthetic.skull_shell(shape, ijkToRas)
    if withHole:
        shell &= ~syntheticHole(shape, ijkToRas)
    return shell.astype(np.uint8), np.asarray(ijkToRas, dtype=np.float64)


def syntheticHole(shape: tuple[int, int, int], ijkToRas: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The region removed by the synthetic skull's cranial hole (``scale`` enlarges it)."""
    from SkullVAECompletionLib import synthetic  # noqa: PLC0415

    return synthetic.cranial_defect(shape, ijkToRas, SYNTHETIC_HOLE_CENTRE_RAS, scale * SYNTHETIC_HOLE_RADIUS_MM)


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
                _resampleTo(image, inputArray.shape, inputIjkToRas))[0]
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


def _resampleTo(image: Any, shape: tuple[int, int, int], ijkToRas: np.ndarray) -> Any:
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(0, shape[0] - 1, 0, shape[1] - 1, 0, shape[2] - 1)
    reference.SetImageToWorldMatrix(mrml.arrayToMatrix(ijkToRas))
    output = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(image, reference, output)
    return output
