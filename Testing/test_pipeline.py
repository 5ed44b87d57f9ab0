"""The module and the command line run one pipeline: the same input gives the same implant surface and summary."""

from __future__ import annotations

import json

import pytest
import vtk

from SkullVAECompletionLib import cli, mrml
from SkullVAECompletionLib.imageio.surfaces import hausdorff_mm
from SkullVAECompletionLib.imageio.volumes import write_mask
from SkullVAECompletionLib.options import CompletionOptions, DesignOptions
from slicer_fixtures import *  # noqa: F403
from slicer_fixtures import module


def _readStl(path) -> vtk.vtkPolyData:
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


def test_the_modules_stl_is_the_command_lines(scene, real_logic, tiny_bundle, tmp_path):
    defective, ijkToRas = module.makeSyntheticSkull()
    path = write_mask(tmp_path / "skull.nrrd", defective, ijkToRas)
    out = tmp_path / "cli"
    assert cli.main([str(path), "-o", str(out), "--model", str(tiny_bundle), "--device", "cpu", "--defect-type",
                     "cranial", "--extraction", "rim", "--no-preview", "-q"]) == 0
    node = mrml.loadLabelmapFile(scene, path)
    real_logic.process(node, options=CompletionOptions(defect_type="cranial", extraction="rim",
                                                       stl_folder=str(tmp_path / "module")))
    summary = real_logic.lastResult
    assert summary.result.implant_field, "the rim stage's surfaces: the case where the two used to differ"
    [moduleStl] = summary.stlFiles
    cliSurface, moduleSurface = _readStl(out / "skull_implant.stl"), _readStl(moduleStl)
    assert moduleSurface.GetNumberOfPolys() > 100
    assert hausdorff_mm(cliSurface, moduleSurface) <= 0.5
    # The summary the node keeps is the command line's (measured on first use in the module).
    written = json.loads((out / "skull_summary.json").read_text())
    assert summary.fit is not None
    record = json.loads(real_logic.lastResult.segmentationNode.GetAttribute(mrml.ATTRIBUTE_PREFIX + "Summary"))
    for key in ("detected_class", "defect_class", "gamma", "extraction", "implant_volume_ml", "fit"):
        assert record[key] == written[key], key


def test_options_by_console_name_and_by_object_are_one(scene, fake_logic):
    defective, ijkToRas = module.makeSyntheticSkull()
    node = addLabelmap(scene, defective, ijkToRas)  # noqa: F405
    design = DesignOptions(clearance_mm=1.0)
    fake_logic.process(node, gamma=0.8, defectType="cranial", design=design, maxTriangles=0)
    byName = fake_logic._cache[fake_logic.lastResult.segmentationNode.GetID()].options
    assert byName == CompletionOptions(gamma=0.8, defect_type="cranial", design=design)
    fake_logic.process(node, options=byName)
    assert fake_logic._cache[fake_logic.lastResult.segmentationNode.GetID()].options == byName
    assert module.completionOptions(None, method="auto").method is None, '"auto" is the model\'s choice: None'
    with pytest.raises(TypeError, match="gama"):
        fake_logic.process(node, gama=0.8)  # a misspelt option is refused, not ignored
