"""The summary does not contradict itself: no defect found means the class "complete" and no implant."""

from __future__ import annotations

import pytest

from SkullVAECompletionLib.inference.completion import SkullCompleter
from SkullVAECompletionLib.inference.detection import BY_DEFECT_POSITION
from SkullVAECompletionLib.inference.regions import COMPLETE
from SkullVAECompletionLib.options import DesignOptions
from SkullVAECompletionLib.pipeline import design_completion
from SkullVAECompletionLib.synthetic import defective_pair


@pytest.fixture(scope="module")
def region_completer(region_bundle):
    return SkullCompleter(region_bundle, device="cpu")


def test_no_defect_found_is_a_complete_skull_in_the_summary(region_completer):
    complete, _, matrix = defective_pair("complete")
    encoded = region_completer.encode(complete, matrix)
    result = region_completer.complete(encoded, gamma=0.0, extraction="rim")  # the class head: not complete
    assert not result.holes and not result.implant.any(), "a complete skull: nothing to fill"
    summary = design_completion(result, matrix, DesignOptions()).summary("m", "1")
    assert summary["detected_class"] == COMPLETE and summary["detected_by"] == BY_DEFECT_POSITION
    assert summary["message"].startswith("no defect found") and summary["fit"] is None
