"""The module's widget on its real .ui, with stand-in Qt widgets (slicer_fixtures.widget_harness) and a real scene."""

from __future__ import annotations

import ast
import types

import numpy as np

from ct_cases import synthetic_head_ct
from SkullVAECompletionLib import dependencies, mrml
from slicer_fixtures import *  # noqa: F403
from slicer_fixtures import FakeCompleter, addSegmentation, module

SECTIONS = ("ctCollapsibleButton", "inputsCollapsibleButton", "designCollapsibleButton", "gammaCollapsibleButton",
            "advancedCollapsibleButton")


def _fakeLogic() -> module.SkullVAECompletionLogic:
    logic = module.SkullVAECompletionLogic()
    fake = FakeCompleter()
    logic.completerFactory = lambda modelPath, device: fake
    return logic


def _segmentNames(widget) -> list[str]:
    return [text for text, _ in widget.ui.segmentComboBox.items]


def _withSkull(scene, harness, logic=None):
    mask, ijkToRas = module.makeSyntheticSkull()
    node, segmentId = addSegmentation(scene, mask, ijkToRas)
    widget = harness(logic).widget
    return widget, node


def test_setup_connects_the_panel_and_enter_offers_segments_added_meanwhile(scene, widget_harness):
    widget, node = _withSkull(scene, widget_harness)
    assert widget.ui.inputSelector.currentNode().GetID() == node.GetID()  # connected to the parameter node
    assert widget.ui.defectTypeComboBox.count == len(module.DEFECT_TYPES)
    assert _segmentNames(widget) == ["Skull"]
    widget.exit()
    node.GetSegmentation().AddEmptySegment("frontal", "Frontal bone")  # e.g. in Segment Editor
    widget.enter()
    assert _segmentNames(widget) == ["Skull", "Frontal bone"]
    assert widget.ui.segmentComboBox.currentData == node.GetSegmentation().GetNthSegmentID(0)  # choice kept


def test_every_section_is_locked_during_a_run_and_a_design_change_then_is_applied_after(scene, widget_harness):
    widget, _ = _withSkull(scene, widget_harness, _fakeLogic())
    seen = []

    def onProgress(fraction: float, message: str) -> None:
        module.SkullVAECompletionWidget.onProgress(widget, fraction, message)
        seen.append({name: getattr(widget.ui, name).enabled for name in SECTIONS})
        if len(seen) == 1:  # a script (or a widget that stayed enabled) changes a design option mid-run
            widget._parameterNode.flangeMm = 2.0

    widget.onProgress = onProgress
    widget.onApplyButton()
    assert widget._outputNode is not None and not widget.errors if hasattr(widget, "errors") else True
    assert seen and all(not any(states.values()) for states in seen), seen
    assert all(getattr(widget.ui, name).enabled for name in SECTIONS)
    assert widget.logic.lastResult.design.flange_mm == 0.0  # the run used the options read when it started
    assert widget.designTimer.isActive(), "the change made during the run must be applied, not recorded as shown"
    widget.designTimer.fire()
    assert widget.logic.lastResult.design.flange_mm == 2.0


def test_a_slider_move_during_a_running_preview_is_previewed_after_it(scene, widget_harness):
    widget, _ = _withSkull(scene, widget_harness, _fakeLogic())
    widget.onApplyButton()
    logic = widget.logic
    gammas = []
    updateGamma = logic.updateGamma

    def slowUpdateGamma(node, gamma, **kwargs):
        gammas.append(gamma)
        if len(gammas) == 1:  # while this preview runs, the GUI processes events: the slider moves, its timer fires
            logic.isRunning = True
            widget.ui.gammaSliderWidget.value = 0.3
            widget.previewTimer.fire()
            logic.isRunning = False
        return updateGamma(node, gamma, **kwargs)

    logic.updateGamma = slowUpdateGamma
    widget.ui.gammaSliderWidget.value = 0.6
    assert widget.previewTimer.isActive()
    widget.previewTimer.fire()
    assert gammas == [0.6]
    assert widget.previewTimer.isActive(), "the slider move that came during the preview was dropped"
    widget.previewTimer.fire()
    assert gammas == [0.6, 0.3] and logic.lastResult.gamma == 0.3


def test_extract_skull_ensures_only_what_it_needs_and_selects_the_new_skull(scene, widget_harness, monkeypatch):
    asked = []
    monkeypatch.setattr(dependencies, "ensureDependencies", lambda packages=None, **kwargs: asked.append(packages))
    ct, _, matrix = synthetic_head_ct()
    ctNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    import slicer

    slicer.util.updateVolumeFromArray(ctNode, np.ascontiguousarray(ct.transpose(2, 1, 0)))
    ctNode.SetIJKToRASMatrix(module.mrml.arrayToMatrix(matrix))
    widget = widget_harness().widget
    widget._parameterNode.ctVolume = ctNode
    assert widget.ui.extractSkullButton.enabled
    widget.onExtractSkull()
    assert asked == [dependencies.SKULL_FROM_CT_PACKAGES]
    assert all(p.importName != "torch" for p in dependencies.SKULL_FROM_CT_PACKAGES)
    skull = widget._parameterNode.inputNode
    assert skull is not None and skull.IsA("vtkMRMLSegmentationNode")
    assert _segmentNames(widget) == ["Skull"]


def test_category_is_translated_in_the_core_module_context():
    parent = types.SimpleNamespace()
    module.SkullVAECompletion(parent)
    assert parent.categories == ["Segmentation"]
    tree = ast.parse(open(module.__file__, encoding="utf-8").read())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Assign)
             and any(isinstance(t, ast.Attribute) and t.attr == "categories" for t in n.targets)]
    assert len(calls) == 1
    call = calls[0].value.elts[0]
    assert isinstance(call, ast.Call) and call.func.id == "translate"
    assert [a.value for a in call.args] == ["qSlicerAbstractCoreModule", "Segmentation"]


def test_a_saved_scene_reopens_with_the_input_segment_and_options_apply_used(scene, widget_harness, tmp_path):
    import slicer

    mask, ijkToRas = module.makeSyntheticSkull()
    node, _ = addSegmentation(scene, mask, ijkToRas)
    copy = node.GetSegmentation().AddEmptySegment("bone_copy", "Skull copy")
    image = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        node, node.GetSegmentation().GetNthSegmentID(0), image, False)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, node, copy, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    widget = widget_harness(_fakeLogic()).widget
    # The user's choices, made in the widgets: each lands in the parameter node.
    widget.ui.segmentComboBox.currentIndex = 1
    widget.ui.modelSourceComboBox.currentIndex = 1
    widget.ui.modelPathLineEdit.currentPath = str(tmp_path / "my-model")
    widget.ui.stlFolderLineEdit.currentPath = str(tmp_path / "stl")
    parameters = widget._parameterNode
    parameters.exportStl, parameters.useDefaultGamma, parameters.gamma = True, False, 0.7
    parameters.smoothing, parameters.clearanceMm, parameters.maxTriangles = False, 1.0, 5000
    assert parameters.segmentId == copy and not parameters.useBundledModel
    widget.onApplyButton()
    assert not widget.errors and widget._outputNode is not None
    applied = widget.logic._cache[widget._outputNode.GetID()].options
    assert applied == module.completionOptionsFromParameters(parameters)
    assert applied.model_path == str(tmp_path / "my-model") and applied.stl_folder == str(tmp_path / "stl")
    assert widget.logic.lastResult.stlFiles, "the STL went to the folder the node names"

    mrml.saveSegmentation(node, tmp_path / "skull.seg.nrrd")
    scene.SetURL(str(tmp_path / "scene.mrml"))
    scene.SetRootDirectory(str(tmp_path))
    assert scene.Commit()
    reopened = slicer.vtkMRMLScene()
    reopened.SetURL(str(tmp_path / "scene.mrml"))
    reopened.SetRootDirectory(str(tmp_path))
    previous = slicer.mrmlScene
    slicer.mrmlScene = reopened
    try:
        assert reopened.Connect()
        fresh = widget_harness(_fakeLogic()).widget
        shown = fresh._parameterNode
        assert shown.inputNode is not None and shown.inputNode.GetID() == node.GetID()
        assert shown.inputNode.GetSegmentation().GetSegment(copy) is not None
        assert shown.segmentId == copy and fresh.ui.segmentComboBox.currentData == copy
        assert fresh.ui.modelSourceComboBox.currentIndex == 1
        assert fresh.ui.modelPathLineEdit.currentPath == str(tmp_path / "my-model")
        assert fresh.ui.stlFolderLineEdit.currentPath == str(tmp_path / "stl")
        assert module.completionOptionsFromParameters(shown) == applied
    finally:
        slicer.mrmlScene = previous
        reopened.Clear(1)
