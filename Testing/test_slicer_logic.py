# ruff: noqa: F811  (pytest fixtures imported from slicer_fixtures are parameters of the tests)
"""The Slicer module's Logic on a real vtkMRMLScene (slicer-core, no Qt): inputs, geometry, files, γ, errors.

Run: ``PYTHONPATH=SkullVAECompletion:. pytest Testing/test_slicer_logic.py``
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import SkullVAECompletion as module
from SkullVAECompletionLib import mrml
from SkullVAECompletionLib.errors import CancelledError, DeviceError, InputError
from SkullVAECompletionLib.mrml.synthetic_input import SYNTHETIC_HOLE_CENTRE_RAS
from slicer_fixtures import (  # noqa: F401  (fixtures are used by name)
    GEOMETRIES,
    addLabelmap,
    addSegmentation,
    fake_logic,
    geometry,
    nodeCount,
    real_completer,
    real_logic,
    scene,
    segmentArray,
)

slicer = pytest.importorskip("slicer")


# --- geometry: the MRML layer must hand the engine the right matrix and put the result back exactly ---------
@pytest.mark.parametrize("inputKind", ["labelmap", "segmentation"])
def test_result_overlays_input_in_every_orientation(scene, fake_logic, geometry, inputKind):
    name, shape, ijkToRas = geometry
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    complete, _ = module.makeSyntheticSkull(shape, ijkToRas, withHole=False)
    if inputKind == "labelmap":
        node, segmentId = addLabelmap(scene, defective, ijkToRas), None
    else:
        node, segmentId = addSegmentation(scene, defective, ijkToRas)
    result = fake_logic.process(node, segmentId=segmentId)

    assert result.GetScene() is scene and result.IsA("vtkMRMLSegmentationNode")
    completed = segmentArray(result, mrml.SKULL_SEGMENT_ID, shape, ijkToRas)
    implant = segmentArray(result, mrml.IMPLANT_SEGMENT_ID, shape, ijkToRas)
    expectedImplant = complete.astype(bool) & ~defective.astype(bool)
    # The fake completes the analytic skull in RAS: any orientation mistake breaks these equalities.
    assert implant.sum() > 100, name
    assert np.array_equal(implant, expectedImplant), name
    assert np.array_equal(completed, complete.astype(bool)), name
    # The result's voxels are the input's voxels.
    image = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        result, mrml.IMPLANT_SEGMENT_ID, image, False)
    matrix = mrml.orientedImageToArray(image)[1]
    assert np.allclose(matrix[:3, :3], ijkToRas[:3, :3])


def test_labelmap_under_linear_transform_keeps_overlay(scene, fake_logic):
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    node = addLabelmap(scene, defective, ijkToRas)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = (5.0, -7.0, 3.0)
    transform.SetMatrixTransformToParent(mrml.arrayToMatrix(shift))
    node.SetAndObserveTransformNodeID(transform.GetID())
    result = fake_logic.process(node)
    assert result.GetTransformNodeID() == transform.GetID()
    # The engine saw world coordinates (fake skull is centred in world space: the hole moved with it).
    implant = segmentArray(result, mrml.IMPLANT_SEGMENT_ID, shape, ijkToRas)
    worldComplete, _ = module.makeSyntheticSkull(shape, shift @ ijkToRas, withHole=False)
    assert implant.sum() > 0 and not np.any(implant & ~worldComplete.astype(bool))


def test_segment_selection_by_id_or_name_and_shared_layers(scene, fake_logic):
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    node, skullId = addSegmentation(scene, defective, ijkToRas, segmentName="Skull bone")
    node.GetSegmentation().AddEmptySegment("other", "Other")
    with pytest.raises(InputError, match="choose the skull segment"):
        fake_logic.process(node)
    byName = fake_logic.process(node, segmentId="Skull bone")
    byId = fake_logic.process(node, segmentId=skullId)
    a = segmentArray(byName, mrml.IMPLANT_SEGMENT_ID, shape, ijkToRas)
    b = segmentArray(byId, mrml.IMPLANT_SEGMENT_ID, shape, ijkToRas)
    assert np.array_equal(a, b) and a.sum() > 0


def test_segmentation_without_reference_geometry_is_padded(scene, fake_logic):
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    node, segmentId = addSegmentation(scene, defective, ijkToRas)
    segmentation = node.GetSegmentation()
    segmentation.SetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), "")
    result = fake_logic.process(node, segmentId=segmentId)
    implant = segmentArray(result, mrml.IMPLANT_SEGMENT_ID, shape, ijkToRas)
    assert implant.sum() > 0


# --- the result node -----------------------------------------------------------------------------------------
def test_result_segments_metadata_and_input_untouched(scene, real_logic):
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    node, segmentId = addSegmentation(scene, defective, ijkToRas)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Study")
    sh.CreateItem(study, node)
    before = mrml.orientedImageToArray(node.GetSegmentation().GetSegment(segmentId).GetRepresentation(
        mrml.BINARY_LABELMAP))[0].copy()
    mtime = node.GetSegmentation().GetSegment(segmentId).GetRepresentation(mrml.BINARY_LABELMAP).GetMTime()
    progress = []
    result = real_logic.process(node, segmentId=segmentId, progress=lambda f, m: progress.append((f, m)))

    segmentation = result.GetSegmentation()
    assert list(segmentation.GetSegmentIDs()) == [mrml.SKULL_SEGMENT_ID, mrml.IMPLANT_SEGMENT_ID]
    skull = segmentation.GetSegment(mrml.SKULL_SEGMENT_ID)
    implantSegment = segmentation.GetSegment(mrml.IMPLANT_SEGMENT_ID)
    assert (skull.GetName(), implantSegment.GetName()) == ("Completed skull", "Implant")
    assert skull.GetColor() != implantSegment.GetColor()
    assert "SCT^89546000^" in skull.GetTerminology() and "SCT^123037004^" in skull.GetTerminology()
    assert "SCT^40388003^" in implantSegment.GetTerminology() and "SCT^260787004^" in implantSegment.GetTerminology()
    assert result.GetAttribute("SkullVAECompletion.ModelId") == "tiny-test-model"
    assert result.GetAttribute("SkullVAECompletion.ModelVersion") == "0.0.1"
    assert sh.GetItemParent(sh.GetItemByDataNode(result)) == study
    # Engine semantics seen through the scene: completed ⊇ input, implant ∩ input = ∅.
    completed = segmentArray(result, mrml.SKULL_SEGMENT_ID, shape, ijkToRas)
    implant = segmentArray(result, mrml.IMPLANT_SEGMENT_ID, shape, ijkToRas)
    assert np.all(completed[defective > 0]) and not np.any(implant & (defective > 0))
    summary = real_logic.lastResult
    assert summary.segmentationNode is result and summary.detectedType in ("complete", "cranial", "facial")
    assert 0.0 <= summary.confidence <= 1.0 and summary.defectType in ("cranial", "facial")
    assert "confidence" in summary.statusText()
    assert progress[-1][0] == 1.0 and all(b[0] >= a[0] for a, b in zip(progress, progress[1:], strict=False))
    # The input is unchanged.
    after = node.GetSegmentation().GetSegment(segmentId).GetRepresentation(mrml.BINARY_LABELMAP)
    assert after.GetMTime() == mtime and np.array_equal(mrml.orientedImageToArray(after)[0], before)
    assert node.GetSegmentation().GetNumberOfSegments() == 1


def test_save_and_reload_seg_nrrd(scene, fake_logic, tmp_path):
    shape, ijkToRas = GEOMETRIES["lps_flipped"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    result = fake_logic.process(addLabelmap(scene, defective, ijkToRas))
    expected = segmentArray(result, mrml.IMPLANT_SEGMENT_ID, shape, ijkToRas)
    path = tmp_path / "result.seg.nrrd"
    mrml.saveSegmentation(result, path)
    reloaded = mrml.loadSegmentation(scene, path)
    assert list(reloaded.GetSegmentation().GetSegmentIDs()) == [mrml.SKULL_SEGMENT_ID, mrml.IMPLANT_SEGMENT_ID]
    assert np.array_equal(segmentArray(reloaded, mrml.IMPLANT_SEGMENT_ID, shape, ijkToRas), expected)
    assert "SCT^40388003^" in reloaded.GetSegmentation().GetSegment(mrml.IMPLANT_SEGMENT_ID).GetTerminology()


def test_gamma_update_in_place(scene, fake_logic, real_logic):
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    result = fake_logic.process(addLabelmap(scene, defective, ijkToRas), gamma=1.0, uncertaintySamples=2)
    assert fake_logic.lastResult.uncertaintyNode is not None
    full = segmentArray(result, mrml.IMPLANT_SEGMENT_ID, shape, ijkToRas).sum()
    nodes, nodeId = nodeCount(scene), result.GetID()
    summary = fake_logic.updateGamma(result, 0.5)
    half = segmentArray(result, mrml.IMPLANT_SEGMENT_ID, shape, ijkToRas).sum()
    assert 0 < half < full and summary.gamma == 0.5
    assert nodeCount(scene) == nodes and result.GetID() == nodeId
    assert fake_logic.fake.encodeCalls == 1  # re-decoded only
    assert result.GetAttribute("SkullVAECompletion.Gamma") == "0.5000"
    # Only the changed box of the completed skull was made (CompletionResult.completed is built on first use).
    assert summary.result._completed is None
    # Both segments hold exactly the new result (the skull is updated in place inside the changed box).
    for segmentId, expected in ((mrml.SKULL_SEGMENT_ID, summary.result.completed),
                                (mrml.IMPLANT_SEGMENT_ID, summary.result.implant)):
        assert np.array_equal(segmentArray(result, segmentId, shape, ijkToRas), expected.astype(bool)), segmentId
    assert np.array_equal(segmentArray(result, mrml.SKULL_SEGMENT_ID, shape, ijkToRas) & (defective == 0),
                          segmentArray(result, mrml.IMPLANT_SEGMENT_ID, shape, ijkToRas))
    fake_logic.updateGamma(result, 1.0)  # and back: the larger implant returns in full
    assert segmentArray(result, mrml.IMPLANT_SEGMENT_ID, shape, ijkToRas).sum() == full
    # Real engine: a new γ re-decodes the cached encoding.
    result2 = real_logic.process(addLabelmap(scene, defective, ijkToRas, name="second"), gamma=1.0)
    summary2 = real_logic.updateGamma(result2, 0.0)
    assert summary2.gamma == 0.0 and result2.GetAttribute("SkullVAECompletion.Gamma") == "0.0000"
    for segmentId, expected in ((mrml.SKULL_SEGMENT_ID, summary2.result.completed),
                                (mrml.IMPLANT_SEGMENT_ID, summary2.result.implant)):
        assert np.array_equal(segmentArray(result2, segmentId, shape, ijkToRas), expected.astype(bool)), segmentId
    # A node this logic did not make has nothing cached.
    with pytest.raises(InputError, match="no cached encoding"):
        real_logic.updateGamma(result, 0.3)


def test_stl_export(scene, fake_logic, tmp_path):
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    fake_logic.process(addLabelmap(scene, defective, ijkToRas), stlFolder=tmp_path / "stl")
    files = fake_logic.lastResult.stlFiles
    assert len(files) == 1 and files[0].endswith(".stl")
    import vtk

    reader = vtk.vtkSTLReader()
    reader.SetFileName(files[0])
    reader.Update()
    bounds = reader.GetOutput().GetBounds()  # LPS: L = -R, P = -A
    assert reader.GetOutput().GetNumberOfPoints() > 100
    centreLps = np.array([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
    hole = np.array(SYNTHETIC_HOLE_CENTRE_RAS) * np.array([-1, -1, 1])
    assert np.linalg.norm(centreLps - hole) < 25.0


def test_worker_thread_mode_pumps_events_and_cancels(scene, fake_logic):
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    node = addLabelmap(scene, defective, ijkToRas)
    pumped = []
    fake_logic.useWorkerThread = True
    module_processEvents = module._processEvents
    module._processEvents = lambda: (lambda: pumped.append(1))
    try:
        result = fake_logic.process(node)
        assert result.GetScene() is scene and pumped
        count = nodeCount(scene)

        def cancelHalfway(fraction, message):
            if fraction > 0.3:
                fake_logic.requestCancel()

        with pytest.raises(CancelledError):
            fake_logic.process(node, progress=cancelHalfway)
        assert nodeCount(scene) == count
    finally:
        module._processEvents = module_processEvents


# --- errors: clear messages, and the scene left as it was --------------------------------------------------
def _expectError(scene, logic, exceptionType, pattern, *args, **kwargs):
    count = nodeCount(scene)
    with pytest.raises(exceptionType) as info:
        logic.process(*args, **kwargs)
    assert nodeCount(scene) == count, "the scene changed on error"
    message = module.errorMessage(info.value)
    assert message == str(info.value)  # the GUI shows exactly the exception's text
    assert pattern.lower() in message.lower(), message
    return message


def test_errors_leave_scene_unchanged(scene, real_logic):
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    _expectError(scene, real_logic, InputError, "No input selected", None)

    ct = addLabelmap(scene, defective.astype(np.int16) * 1200 - 1000, ijkToRas, name="CT",
                     className="vtkMRMLScalarVolumeNode")
    _expectError(scene, real_logic, InputError, "scalar (intensity) volume", ct)

    empty, emptyId = addSegmentation(scene, defective, ijkToRas, name="EmptySeg")
    empty.GetSegmentation().AddEmptySegment("blank", "Blank")
    _expectError(scene, real_logic, InputError, "is empty", empty, segmentId="blank")
    _expectError(scene, real_logic, InputError, "has no segment 'nope'", empty, segmentId="nope")

    noSegments = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "NoSegments")
    _expectError(scene, real_logic, InputError, "has no segments", noSegments)

    flat = addLabelmap(scene, np.ones((60, 70, 1), np.uint8), ijkToRas, name="Slice")
    _expectError(scene, real_logic, InputError, "2D", flat)

    tinyMask = np.zeros((12, 12, 12), np.uint8)
    tinyMask[3:9, 3:9, 3:9] = 1
    tiny = addLabelmap(scene, tinyMask, np.eye(4), name="Tiny")
    _expectError(scene, real_logic, InputError, "too small", tiny)

    noImage = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "NoImage")
    _expectError(scene, real_logic, InputError, "has no voxels", noImage)

    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "Model")
    _expectError(scene, real_logic, InputError, "select a segmentation", model)


def test_cuda_requested_but_absent(scene, real_logic):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    _expectError(scene, real_logic, DeviceError, "CUDA was requested", addLabelmap(scene, defective, ijkToRas),
                 device="cuda")


def test_cancel_from_progress_leaves_scene_unchanged(scene, real_logic):
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    node = addLabelmap(scene, defective, ijkToRas)

    def cancel(fraction, message):
        if fraction >= 0.5:
            raise CancelledError("Cancelled by the user; the scene was not changed.")

    _expectError(scene, real_logic, CancelledError, "cancelled", node, progress=cancel)
    assert not real_logic.isRunning


def test_stl_export_failure_rolls_back(scene, fake_logic, tmp_path):
    """The STL export fails inside, after the result nodes, the distance model and its colour table were added:
    the rollback removes them all, and the cached session."""
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    node = addLabelmap(scene, defective, ijkToRas)
    before = mrml.nodeIds(scene)
    # A folder where the STL file must go: the final rename of the written file fails.
    (tmp_path / "stl" / "DefectiveSkull completed implant.stl").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        fake_logic.process(node, stlFolder=tmp_path / "stl", maxTriangles=2000, uncertaintySamples=2)
    assert mrml.nodeIds(scene) == before
    assert fake_logic._cache == {} and fake_logic.lastResult is None
    assert [p.name for p in (tmp_path / "stl").iterdir()] == ["DefectiveSkull completed implant.stl"]
    # The same run into a usable folder adds exactly those nodes: the failing run had got that far.
    fake_logic.process(node, stlFolder=tmp_path / "ok", maxTriangles=2000, uncertaintySamples=2)
    added = {scene.GetNodeByID(i).GetClassName() for i in mrml.nodeIds(scene)} - {
        scene.GetNodeByID(i).GetClassName() for i in before}
    assert {"vtkMRMLSegmentationNode", "vtkMRMLScalarVolumeNode"} <= added
    # The distance map comes with the quality report, measured after the result is shown.
    assert fake_logic.lastResult.qualityPending and fake_logic.lastResult.distanceModelNode is not None
    assert not fake_logic.lastResult.qualityPending


def test_unusable_stl_folder_fails_before_any_work(scene, fake_logic, tmp_path):
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    node = addLabelmap(scene, defective, ijkToRas)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _expectError(scene, fake_logic, InputError, "STL export folder", node, stlFolder=blocker / "sub")
    assert fake_logic.fake.encodeCalls == 0


# --- the module's own self-test runs under pytest too ---------------------------------------------------------
def test_module_self_test(scene, tiny_bundle):
    tester = module.SkullVAECompletionTest()
    tester.modelPath = str(tiny_bundle)
    tester.runTest()


def test_method_and_extraction_reach_the_engine_and_the_node(scene, fake_logic, real_logic):
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    result = fake_logic.process(addLabelmap(scene, defective, ijkToRas), method="knn", extraction="decode")
    assert fake_logic.fake.lastOptions == {"method": "knn", "extraction": "decode"}
    fake_logic.updateGamma(result, 0.5)
    assert fake_logic.fake.lastOptions == {"method": "knn", "extraction": "decode"}, "γ updates keep the options"
    # The real engine records what it did on the result node.
    node = real_logic.process(addLabelmap(scene, defective, ijkToRas, name="real"), defectType="cranial",
                              extraction="decode")
    assert node.GetAttribute("SkullVAECompletion.Extraction") == "decode"
    assert node.GetAttribute("SkullVAECompletion.Method") in ("dev", "knn", "refine")
    node = real_logic.process(addLabelmap(scene, defective, ijkToRas, name="rim"), defectType="cranial")
    assert node.GetAttribute("SkullVAECompletion.Extraction") == "rim"
    assert real_logic.lastResult.result.implant.sum() > 100, "the synthetic skull's hole gets an implant"


def test_gamma_preview_skips_the_fit_and_hides_the_stale_distance_map(scene, fake_logic):
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    result = fake_logic.process(addLabelmap(scene, defective, ijkToRas), gamma=1.0)
    distance = fake_logic.lastResult.distanceModelNode
    assert distance is not None and fake_logic.lastResult.fit is not None
    preview = fake_logic.updateGamma(result, 0.7, updateUncertainty=False, measureFit=False)
    assert preview.fit is None and "fit not measured" in preview.statusText()
    assert not distance.GetDisplayNode().GetVisibility(), "the distance map of the previous implant is hidden"
    full = fake_logic.updateGamma(result, 0.7)
    assert full.fit is not None and distance.GetDisplayNode().GetVisibility()


def test_region_model_detection_and_override_on_the_node(scene, region_bundle):
    """A region-class model in the Logic: the detected class and its probability on the node and the status line;
    a chosen class overrides the detection; a class the model lacks is refused before the scene changes."""
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    node = addLabelmap(scene, defective, ijkToRas)
    logic = module.SkullVAECompletionLogic(modelPath=region_bundle)
    result = logic.process(node)
    summary = logic.lastResult
    probabilities = summary.result.class_probabilities
    assert len(probabilities) == 8
    if summary.detectedBy == "class head":
        assert summary.detectedType == max(probabilities, key=probabilities.get)
    else:  # the rim stage found the defect: its position decided, and the completion used that class
        assert summary.detectedBy == "defect position" and summary.defectType == summary.detectedType
    assert summary.confidence == pytest.approx(probabilities[summary.detectedType])
    assert result.GetAttribute("SkullVAECompletion.DetectedType") == summary.detectedType
    assert result.GetAttribute("SkullVAECompletion.DetectedBy") == summary.detectedBy
    recorded = json.loads(result.GetAttribute("SkullVAECompletion.Summary"))
    assert recorded["class_probabilities"] and recorded["detected_class"] == summary.detectedType
    assert recorded["detected_by"] == summary.detectedBy
    logic.process(node, defectType="facial")
    assert logic.lastResult.defectType == "facial"
    before = nodeCount(scene)
    with pytest.raises(InputError, match="unknown defect class 'cranial'"):
        logic.process(node, defectType="cranial")
    assert nodeCount(scene) == before


def test_the_cached_completion_keeps_no_view_of_the_input_nodes_voxels(scene, real_logic):
    """γ steps reuse the encoding: it must hold its own copy of the input, not the node's memory (which the user may
    edit, or another thread change)."""
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    node = addLabelmap(scene, defective.astype(np.uint8), ijkToRas)
    voxels = slicer.util.arrayFromVolume(node)
    result = real_logic.process(node)
    encoded = real_logic._cache[result.GetID()].encoded
    assert not np.shares_memory(encoded.defective, voxels)
    assert np.array_equal(encoded.defective, voxels.transpose(2, 1, 0) > 0)
