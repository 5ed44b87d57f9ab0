"""Size normalisation and trust: heads of other sizes reach the model at its size; inputs that are no skull, or
that the model cannot read, are refused with a message that says what was expected."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAECompletionLib.errors import InputError
from SkullVAECompletionLib.imageio.volumes import read_mask
from SkullVAECompletionLib.inference.completion import SkullCompleter
from SkullVAECompletionLib.inference.trust import Trust, TrustPolicy, UntrustedInputError, reconstruction_trust
from SkullVAECompletionLib.metrics import dice
from SkullVAECompletionLib.preprocessing.geometry import GridSpec, plan_mapping, to_model_grid
from SkullVAECompletionLib.synthetic import NON_SKULL_KINDS, ShellSpec, defective_pair, non_skull_mask

SAMPLE = "Resources/SampleData/CraniumSkull.nrrd"


def scaled(ijk_to_ras: np.ndarray, scale: float) -> np.ndarray:
    """The same voxels describing a head ``scale`` times the size."""
    matrix = np.asarray(ijk_to_ras, float).copy()
    matrix[:3, :] *= scale
    return matrix


@pytest.fixture(scope="module")
def bundled() -> SkullCompleter:
    return SkullCompleter(device="cpu")


@pytest.fixture(scope="module")
def sample(bundled: SkullCompleter) -> dict:
    from conftest import ROOT

    mask, matrix, _ = read_mask(ROOT / SAMPLE)
    encoded = bundled.encode(mask, matrix)
    # The class is fixed: this real defect lies between the frontal and fronto-orbital regions, and which of the two
    # its position is called may differ between sizes (a different extraction), which is not what is tested here.
    return {"mask": mask, "matrix": matrix, "implant": bundled.complete(encoded, defect_type="frontal").implant,
            "scale": encoded.mapping.scale, "trust": encoded.trust.figure}


def test_the_grid_scales_with_the_skull():
    """Scaled copies of one skull map to (nearly) the same model volume; without a reference size they do not."""
    _, skull, matrix = defective_pair("cranial", shape=(60, 72, 60), spacing=(3.0, 3.0, 3.0),
                                      spec=ShellSpec(semi_axes_mm=(70.0, 90.0, 75.0)))
    normalised = GridSpec(shape=(48, 64, 48), spacing_mm=4.0, reference_size_mm=150.0)
    millimetres = GridSpec(shape=(48, 64, 48), spacing_mm=4.0)
    reference = to_model_grid(skull, plan_mapping(skull, matrix, normalised))
    for scale in (0.75, 0.9, 1.1):
        mapping = plan_mapping(skull, scaled(matrix, scale), normalised)
        assert mapping.scale == pytest.approx(scale * plan_mapping(skull, matrix, normalised).scale, rel=0.02)
        assert mapping.grid.spacing_mm == pytest.approx(4.0 * mapping.scale)
        assert dice(to_model_grid(skull, mapping) >= 0.5, reference >= 0.5) > 0.9
        unscaled = to_model_grid(skull, plan_mapping(skull, scaled(matrix, scale), millimetres))
        assert dice(unscaled >= 0.5, reference >= 0.5) < 0.6


@pytest.mark.parametrize("scale", [0.75, 0.9, 1.1])
def test_a_scaled_sample_skull_gets_the_same_implant(bundled: SkullCompleter, sample: dict, scale: float):
    """The real sample skull made smaller or larger (same voxels, scaled spacing) gets the implant it gets at its
    own size, voxel for voxel, and is trusted."""
    encoded = bundled.encode(sample["mask"], scaled(sample["matrix"], scale))
    assert encoded.trust.status == "ok"
    assert encoded.mapping.scale == pytest.approx(scale * sample["scale"], rel=0.03)
    result = bundled.complete(encoded, defect_type="frontal")
    assert dice(result.implant, sample["implant"]) > 0.85
    assert result.trust is encoded.trust


@pytest.mark.parametrize("kind", NON_SKULL_KINDS)
def test_non_skull_inputs_are_refused(bundled: SkullCompleter, kind: str):
    mask, matrix = non_skull_mask(kind)
    with pytest.raises(InputError) as raised:
        bundled.encode(mask, matrix, name=kind)
    message = str(raised.value)
    assert message.startswith(f"{kind}:")
    assert "skull" in message and ("Expected" in message or "expected" in message or "a skull is" in message
                                   or "cannot read" in message)


def test_untrusted_input_keeps_its_figure_when_not_refused(bundled: SkullCompleter):
    mask, matrix = non_skull_mask("pelvis")
    with pytest.raises(UntrustedInputError):
        bundled.encode(mask, matrix)
    encoded = bundled.encode(mask, matrix, refuse_untrusted=False)
    assert encoded.trust.status == "refuse" and encoded.trust.figure < encoded.trust.policy.refuse_below


def test_the_sample_skull_is_trusted(sample: dict):
    assert sample["trust"] > 0.85


def test_trust_figure_and_verdict():
    policy = TrustPolicy(refuse_below=0.5, warn_below=0.7, tolerance_voxels=1)
    bone = np.zeros((20, 20, 20), np.float32)
    bone[5:15, 5:15, 10] = 1.0
    decoded = np.zeros_like(bone)
    decoded[5:15, 5:15, 11] = 1.0  # one voxel off: within the tolerance
    assert reconstruction_trust(bone, decoded, policy).figure == 1.0
    decoded[:] = 0.0
    decoded[5:10, 5:15, 10] = 1.0
    trust = reconstruction_trust(bone, decoded, policy)
    assert trust.figure == pytest.approx(0.6, abs=0.01) and trust.status == "warn" and "low trust" in trust.message()
    assert Trust(0.3, policy).status == "refuse" and "cannot read" in Trust(0.3, policy).message()
    assert Trust(0.9, policy).message() == "" and Trust(0.9, policy).to_dict()["threshold"] == 0.5


@pytest.mark.parametrize("kind", ["pelvis", "brain"])
def test_cli_refuses_and_writes_nothing(tmp_path, kind: str):
    """The command line refuses an input it cannot complete: exit code ≠ 0, the output folder left empty."""
    from SkullVAECompletionLib import cli
    from SkullVAECompletionLib.imageio.volumes import write_mask

    mask, matrix = non_skull_mask(kind)
    source = write_mask(tmp_path / f"{kind}.nrrd", mask, matrix)
    out = tmp_path / "out"
    out.mkdir()
    assert cli.main([str(source), "--output-dir", str(out), "--device", "cpu"]) != 0
    assert list(out.iterdir()) == []


def test_logic_refuses_without_changing_the_scene(tmp_path):
    """The module's Logic refuses an input the model cannot read and leaves the scene exactly as it was."""
    slicer = pytest.importorskip("slicer")
    import SkullVAECompletion as module
    from slicer_fixtures import addLabelmap

    scene = slicer.vtkMRMLScene()
    previous, slicer.mrmlScene = getattr(slicer, "mrmlScene", None), scene
    try:
        mask, matrix = non_skull_mask("skin_shell")
        node = addLabelmap(scene, mask, matrix, name="SkinMask")
        before = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
        logic = module.SkullVAECompletionLogic()
        with pytest.raises(UntrustedInputError, match="SkinMask"):
            logic.process(node)
        assert [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())] == before
    finally:
        scene.Clear(1)
        slicer.mrmlScene = previous


def test_summary_has_trust_and_warnings(bundled: SkullCompleter, sample: dict):
    from SkullVAECompletionLib.design.shaping import DesignOptions
    from SkullVAECompletionLib.pipeline import summary_record

    encoded = bundled.encode(sample["mask"], scaled(sample["matrix"], 0.7))  # outside the validated sizes
    record = summary_record(bundled.complete(encoded), "m", "1", DesignOptions(), None)
    assert record["trust"]["figure"] > record["trust"]["threshold"] and record["trust"]["status"] in ("ok", "warn")
    assert any("reference size" in warning for warning in record["warnings"])



def test_status_line_shows_trust_and_warnings():
    from types import SimpleNamespace

    from SkullVAECompletionLib import mrml

    trust = Trust(0.7, TrustPolicy(refuse_below=0.55, warn_below=0.78))
    result = SimpleNamespace(message="", trust=trust, warnings=[trust.message()])
    summary = mrml.CompletionSummary(segmentationNode=None, uncertaintyNode=None, defectType="vertex",
                                     detectedType="vertex", confidence=0.9, gamma=2.0, modelId="m", modelVersion="1",
                                     device="cpu", seconds=1.0, implantVolumeMl=20.0, result=result)
    text = summary.statusText()
    assert "trust 0.70" in text and "Warning: input: low trust" in text
