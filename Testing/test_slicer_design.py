"""Slicer side of implant design and Skull from CT, on slicer-core's real MRML scene (no Qt, no application)."""

import json
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

from SkullVAECompletionLib.design.shaping import DesignOptions
from SkullVAECompletionLib.errors import InputError
from SkullVAECompletionLib.options import DISTANCE_ARRAY
from SkullVAECompletionLib.synthetic import centred_ijk_to_ras
from slicer_fixtures import *  # noqa: F403
from slicer_fixtures import addLabelmap, module, mrml, segmentArray, slicer
from test_skull_from_ct import synthetic_ct

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (80, 95, 80)
MATRIX = centred_ijk_to_ras(SHAPE, (2.0, 2.0, 2.0))


def _skull():
    mask, matrix = module.makeSyntheticSkull(SHAPE, MATRIX)
    return mask, matrix


def test_design_options_are_on_the_parameter_node_and_in_the_ui():
    annotations = module.SkullVAECompletionParameterNode.__annotations__
    for name in (*module.DESIGN_PARAMETERS, "maxTriangles", "showDistanceMap", "ctVolume", "boneThresholdHu"):
        assert name in annotations, name
    defaults = type("Defaults", (), {n: module.SkullVAECompletionParameterNode.allParameters[n].default
                                     for n in module.DESIGN_PARAMETERS})()
    assert module.designOptionsFromParameters(defaults) == DesignOptions(), "defaults change nothing"
    ui = ElementTree.parse(ROOT / "Resources/UI/SkullVAECompletion.ui")
    bound = {p.findtext("string") for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert set(module.DESIGN_PARAMETERS) | {"maxTriangles", "showDistanceMap", "ctVolume", "boneThresholdHu"} <= bound


def test_design_adds_a_coloured_distance_model_and_leaves_the_input(scene, fake_logic):
    mask, matrix = _skull()
    inputNode = addLabelmap(scene, mask, matrix)
    before = slicer.util.arrayFromVolume(inputNode).copy()
    options = DesignOptions(flange_mm=6.0, flange_thickness_mm=2.0, edge_radius_mm=1.0)
    result = fake_logic.process(inputNode, design=options)
    assert np.array_equal(before, slicer.util.arrayFromVolume(inputNode)), "input was changed"
    summary = fake_logic.lastResult
    model = summary.distanceModelNode
    assert model is not None and model.GetScene() is scene and model.IsA("vtkMRMLModelNode")
    distances = model.GetPolyData().GetPointData().GetArray(DISTANCE_ARRAY)
    assert distances is not None and distances.GetNumberOfTuples() == model.GetPolyData().GetNumberOfPoints()
    display = model.GetDisplayNode()
    assert display.GetScalarVisibility() and display.GetActiveScalarName() == DISTANCE_ARRAY
    assert scene.GetNodeByID(display.GetColorNodeID()).IsA("vtkMRMLColorTableNode")
    # The segments hold the designed implant: it lies partly over the bone (the flange), never in it.
    implant = segmentArray(result, mrml.IMPLANT_SEGMENT_ID, SHAPE, matrix)
    completed = segmentArray(result, mrml.SKULL_SEGMENT_ID, SHAPE, matrix)
    assert not np.any(implant & (mask > 0)) and np.array_equal(completed, implant | (mask > 0))
    assert summary.fit.rim_overlap_mm_max > 3.0
    # Options and summary on the node: enough to redo the result.
    assert json.loads(result.GetAttribute(mrml.ATTRIBUTE_PREFIX + "Design.flange_mm")) == 6.0
    record = json.loads(result.GetAttribute(mrml.ATTRIBUTE_PREFIX + "Summary"))
    assert DesignOptions.from_dict({k: record[k] for k in DesignOptions().as_dict()}) == options
    assert set(record["fit"]) >= {"volume_ml", "thickness_mm", "rim_gap_mm_max"}
    assert re.search(r"implant \d+\.\d ml, thickness \d+\.\d mm", summary.statusText())


def test_design_change_reuses_the_cached_completion(scene, fake_logic):
    mask, matrix = _skull()
    inputNode = addLabelmap(scene, mask, matrix)
    result = fake_logic.process(inputNode)
    plain = segmentArray(result, mrml.IMPLANT_SEGMENT_ID, SHAPE, matrix)
    calls = (fake_logic.fake.encodeCalls, fake_logic.fake.completeCalls)
    nodes = scene.GetNumberOfNodes()
    summary = fake_logic.updateDesign(result, DesignOptions(clearance_mm=3.0))
    assert (fake_logic.fake.encodeCalls, fake_logic.fake.completeCalls) == calls, "no encode or decode"
    assert scene.GetNumberOfNodes() == nodes, "updated in place"
    cleared = segmentArray(result, mrml.IMPLANT_SEGMENT_ID, SHAPE, matrix)
    assert 0 < cleared.sum() < plain.sum()
    assert summary.fit.rim_gap_mm_max >= 2.0
    assert json.loads(result.GetAttribute(mrml.ATTRIBUTE_PREFIX + "Design.clearance_mm")) == 3.0
    # Back to the defaults: the completion's implant again. A γ update keeps the current design.
    fake_logic.updateDesign(result, DesignOptions())
    assert np.array_equal(segmentArray(result, mrml.IMPLANT_SEGMENT_ID, SHAPE, matrix), plain)
    fake_logic.updateDesign(result, DesignOptions(clearance_mm=3.0))
    fake_logic.updateGamma(result, 1.0)
    assert np.array_equal(segmentArray(result, mrml.IMPLANT_SEGMENT_ID, SHAPE, matrix), cleared)
    # Without a distance map the model node goes away.
    fake_logic.updateDesign(result, DesignOptions(clearance_mm=3.0), distanceMap=False)
    assert fake_logic.lastResult.distanceModelNode is None
    assert scene.GetNodesByClass("vtkMRMLModelNode").GetNumberOfItems() == 0


def test_skull_from_ct_adds_a_new_segmentation_and_keeps_the_ct(scene, fake_logic):
    from test_skull_from_ct import SHAPE as CT_SHAPE

    ct, skull, matrix = synthetic_ct()
    ctNode = addLabelmap(scene, ct, matrix, name="HeadCT", className="vtkMRMLScalarVolumeNode")
    before = slicer.util.arrayFromVolume(ctNode).copy()
    nodes = scene.GetNumberOfNodes()
    segmentation = fake_logic.skullFromCT(ctNode, threshold=300)
    assert np.array_equal(before, slicer.util.arrayFromVolume(ctNode)), "the CT was changed"
    assert segmentation.GetScene() is scene and scene.GetNumberOfNodes() > nodes
    segmentIds = list(segmentation.GetSegmentation().GetSegmentIDs())
    assert len(segmentIds) == 1
    assert segmentation.GetSegmentation().GetSegment(segmentIds[0]).GetName() == "Skull"
    assert np.array_equal(segmentArray(segmentation, segmentIds[0], CT_SHAPE, matrix), skull)
    # The new skull is the completion's input.
    fake_logic.process(segmentation, segmentId=segmentIds[0])
    assert fake_logic.lastResult.implantVolumeMl > 0
    # A mask is not a CT; a CT with no bone above the threshold says what to change.
    labelmap = addLabelmap(scene, skull.astype(np.uint8), matrix)
    with pytest.raises(InputError, match="not a CT"):
        fake_logic.skullFromCT(labelmap)
    with pytest.raises(InputError, match="bone threshold"):
        fake_logic.skullFromCT(ctNode, threshold=5000)
