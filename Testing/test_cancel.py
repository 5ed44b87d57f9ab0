# ruff: noqa: F811  (pytest fixtures imported from slicer_fixtures are parameters of the tests)
"""Cancel and failure anywhere in the Logic: the scene keeps exactly the nodes it had, nothing stays cached.

Every call of the progress callback is a cancel point, the last one (1.0, the status line) included. The tests count
the calls of one uncancelled run, then cancel at each of them in turn -- by raising CancelledError from the callback
and by ``requestCancel`` -- on a real MRML scene with the tiny trained model.
"""

from __future__ import annotations

import pytest

import SkullVAECompletion as module
from SkullVAECompletionLib import mrml
from SkullVAECompletionLib.design.shaping import DesignOptions
from SkullVAECompletionLib.errors import CancelledError
from slicer_fixtures import (  # noqa: F401  (fixtures are used by name)
    GEOMETRIES,
    addLabelmap,
    fake_logic,
    real_completer,
    real_logic,
    scene,
    segmentArray,
)

slicer = pytest.importorskip("slicer")


class CancelAt:
    """A progress callback that cancels at its ``at``-th call (1-based; 0: never), counting every call."""

    def __init__(self, at: int = 0, logic: object = None) -> None:
        self.at, self.logic, self.calls = at, logic, []

    def __call__(self, fraction: float, message: str) -> None:
        self.calls.append((fraction, message))
        if len(self.calls) == self.at:
            if self.logic is None:
                raise CancelledError(mrml.CANCELLED_MESSAGE)
            self.logic.requestCancel()  # the GUI's Cancel button: takes effect when the callback returns


def sceneState(scene) -> tuple[int, list[str], list[str]]:
    ids = mrml.nodeIds(scene)
    return len(ids), ids, sorted(scene.GetNodeByID(i).GetClassName() for i in ids)


@pytest.fixture
def skullNode(scene):
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    defective, _ = module.makeSyntheticSkull(shape, ijkToRas)
    return addLabelmap(scene, defective, ijkToRas)


def test_cancel_at_every_progress_call_of_a_full_run_leaves_the_scene_as_it_was(scene, real_logic, skullNode,
                                                                               tmp_path):
    options = dict(uncertaintySamples=2, distanceMap=True, stlFolder=tmp_path / "stl")
    counting = CancelAt()
    real_logic.process(skullNode, progress=counting, **options)
    total = len(counting.calls)
    assert total >= 8 and counting.calls[-1][0] == 1.0, counting.calls
    # The uncancelled run published the segmentation, the uncertainty volume and the STL: a cancel must take every
    # one of them back. (The distance map comes with the quality report, measured after the run.)
    published = {scene.GetNodeByID(i).GetClassName() for i in mrml.nodeIds(scene)}
    assert {"vtkMRMLSegmentationNode", "vtkMRMLScalarVolumeNode"} <= published
    assert list((tmp_path / "stl").glob("*.stl"))
    scene.Clear(0)
    real_logic.clearCache()
    real_logic.lastResult = None
    shape, ijkToRas = GEOMETRIES["ras_3mm"]
    node = addLabelmap(scene, module.makeSyntheticSkull(shape, ijkToRas)[0], ijkToRas)
    before = sceneState(scene)
    for how in ("raise", "requestCancel"):
        for at in range(1, total + 1):
            cancel = CancelAt(at, real_logic if how == "requestCancel" else None)
            folder = tmp_path / f"{how}-{at}"
            with pytest.raises(CancelledError):
                real_logic.process(node, progress=cancel, **{**options, "stlFolder": folder})
            assert len(cancel.calls) == at, (how, at)
            assert sceneState(scene) == before, (how, at, cancel.calls[-1])
            assert real_logic._cache == {} and real_logic.lastResult is None, (how, at)
            assert not real_logic.isRunning
            assert not list(folder.glob("*.stl")), (how, at, "the STL of a cancelled run is deleted")
    # After all that, a run completes normally.
    assert real_logic.process(node, **options).GetScene() is scene


def test_cancel_keeps_what_an_earlier_run_published(scene, fake_logic, skullNode):
    """The colour table and result of an earlier run were there before: a cancelled run leaves them alone."""
    first = fake_logic.process(skullNode)
    before = sceneState(scene)
    with pytest.raises(CancelledError):
        fake_logic.process(skullNode, progress=CancelAt(1))
    assert sceneState(scene) == before
    assert first.GetID() in fake_logic._cache and fake_logic.lastResult.segmentationNode is first
    counting = CancelAt()
    fake_logic.process(skullNode, progress=counting)
    last = len(counting.calls)
    before = sceneState(scene)
    with pytest.raises(CancelledError):
        fake_logic.process(skullNode, progress=CancelAt(last))
    assert sceneState(scene) == before and len(fake_logic._cache) == 2


@pytest.mark.parametrize("update", ["gamma", "design"])
def test_cancel_at_every_progress_call_of_an_update_changes_nothing(scene, real_logic, skullNode, update):
    result = real_logic.process(skullNode, gamma=1.0, uncertaintySamples=2)
    shape, ijkToRas = GEOMETRIES["ras_3mm"]

    def run(progress):
        if update == "gamma":
            return real_logic.updateGamma(result, 0.2, progress=progress)
        return real_logic.updateDesign(result, DesignOptions(thickness_mm=2.0, flange_mm=4.0), distanceMap=False,
                                       progress=progress)

    def state():
        return (sceneState(scene), segmentArray(result, mrml.IMPLANT_SEGMENT_ID, shape, ijkToRas).tobytes(),
                result.GetAttribute("SkullVAECompletion.Summary"))

    counting = CancelAt()
    session = real_logic._cache[result.GetID()]
    savedSession = dict(vars(session))
    before, lastResult = state(), real_logic.lastResult
    run(counting)
    assert counting.calls and state() != before, "the uncancelled update changes the result"
    # Back to the starting point, then cancel at each call in turn.
    real_logic.updateGamma(result, 1.0) if update == "gamma" else real_logic.updateDesign(result, DesignOptions())
    before, lastResult, savedSession = state(), real_logic.lastResult, dict(vars(session))
    for how in ("raise", "requestCancel"):
        for at in range(1, len(counting.calls) + 1):
            with pytest.raises(CancelledError):
                run(CancelAt(at, real_logic if how == "requestCancel" else None))
            assert state() == before, (update, how, at)
            assert real_logic.lastResult is lastResult and vars(session) == savedSession, (update, how, at)
    run(None)  # the session is still usable
