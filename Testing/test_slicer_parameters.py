"""The parameter node against the rules of Slicer's parameterNodeWrapper (serializers and GUI connectors).

Outside the application the module's parameter node class is built by SkullVAECompletionLib.mrml.parameter_node, which
follows Slicer 5.10 on those rules; these tests hold the module to them, and the stand-in to Slicer's behaviour.
"""

from __future__ import annotations

import typing
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Annotated, Optional, Union

import pytest
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode

from SkullVAECompletionLib.mrml import parameter_node as pnw
from slicer_fixtures import *  # noqa: F403
from slicer_fixtures import module

UI_FILE = Path(__file__).resolve().parents[1] / "Resources" / "UI" / "SkullVAECompletion.ui"
Parameters = module.SkullVAECompletionParameterNode


def _uiParameters() -> list[tuple[str, str, str]]:
    found = []
    for widget in ET.parse(UI_FILE).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                found.append((widget.get("class"), widget.get("name"), prop.find("string").text))
    return found


def test_parameter_node_is_created_with_every_default_and_round_trips(scene):
    wrapper = module.SkullVAECompletionLogic().getParameterNode()  # (writes every default)
    for name, parameter in Parameters.allParameters.items():
        assert wrapper.getValue(name) == parameter.default, name
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    for value in (segmentation, labelmap, None):
        wrapper.inputNode = value
        assert (wrapper.inputNode.GetID() if wrapper.inputNode else None) == (value.GetID() if value else None)
    wrapper.ctVolume = ct
    assert wrapper.ctVolume.GetID() == ct.GetID()
    wrapper.defectType, wrapper.gamma, wrapper.exportStl = "vertex", 0.25, True
    again = Parameters(wrapper.parameterNode)  # a second wrapper reads what the first wrote (a saved scene)
    assert (again.defectType, again.gamma, again.exportStl) == ("vertex", 0.25, True)
    assert again.ctVolume.GetID() == ct.GetID()
    with pytest.raises(ValueError):
        wrapper.defectType = "elbow"
    with pytest.raises(TypeError):
        wrapper.inputNode = ct  # a scalar volume is neither a segmentation nor a labelmap


def test_node_parameters_are_optional_unions_of_nodes():
    hints = typing.get_type_hints(Parameters, include_extras=True)
    nodeParameters = [n for n, h in hints.items() if pnw.isNodeOrUnionOfNodes(h)]
    assert set(nodeParameters) == {"inputNode", "ctVolume"}
    for name in nodeParameters:
        assert type(None) in typing.get_args(pnw.splitAnnotations(hints[name])[0]), f"{name} must include None"


@pytest.mark.parametrize("widgetClass,widgetName,parameter", _uiParameters(), ids=lambda v: str(v))
def test_every_ui_parameter_names_a_field_with_a_gui_connector(widgetClass, widgetName, parameter):
    assert parameter in Parameters.allParameters, f"{widgetName}: no parameter {parameter!r}"
    kind = pnw.connectorKind(widgetClass, Parameters.dataType(parameter))
    assert kind is not None, f"{widgetName} ({widgetClass}) cannot be connected to {Parameters.dataType(parameter)}"


def test_a_union_of_nodes_without_none_cannot_write_its_default_like_in_slicer(scene):
    @pnw.parameterNodeWrapper
    class WithoutNone:
        node: vtkMRMLSegmentationNode | vtkMRMLLabelMapVolumeNode

    parameterNode = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    with pytest.raises(TypeError, match="Unable to write value 'None'"):
        WithoutNone(parameterNode)

    for annotation in (vtkMRMLSegmentationNode | vtkMRMLLabelMapVolumeNode | None,
                       Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None],  # noqa: UP007
                       Optional[vtkMRMLSegmentationNode], vtkMRMLSegmentationNode):  # noqa: UP045
        cls = pnw.parameterNodeWrapper(type("WithNone", (), {"__annotations__": {"node": annotation}}))
        assert cls(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")).node is None
        assert pnw.connectorKind("qMRMLNodeComboBox", annotation) == "node"


def test_connector_and_serializer_rules_refuse_what_slicer_refuses():
    with pytest.raises(RuntimeError, match="Choice"):
        pnw.connectorKind("QComboBox", str)
    with pytest.raises(RuntimeError, match="unbounded"):
        pnw.connectorKind("ctkSliderWidget", float)
    assert pnw.connectorKind("ctkSliderWidget", Annotated[float, pnw.WithinRange(0, 1)]) == "value"
    assert pnw.connectorKind("QCheckBox", str) is None
    assert pnw.connectorKind("QSpinBox", float) is None  # an int widget: Slicer has no float connector for it
    assert pnw.connectorKind("qMRMLNodeComboBox", int | None) is None
    with pytest.raises(Exception, match="Unable to create serializer"):
        pnw.parameterNodeWrapper(type("Bad", (), {"__annotations__": {"x": complex}}))
    with pytest.raises(ValueError):  # a default outside its range is refused when the node is created
        bad = pnw.parameterNodeWrapper(type("Bad", (), {"__annotations__": {
            "x": Annotated[float, pnw.WithinRange(0, 1)]}, "x": 2.0}))
        import slicer

        bad(slicer.vtkMRMLScriptedModuleNode())
