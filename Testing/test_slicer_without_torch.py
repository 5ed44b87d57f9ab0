"""The module before PyTorch is installed (a fresh Slicer): import, skull from CT and the self-test without torch.

Runs in a subprocess whose ``sys.modules["torch"] = None`` makes every ``import torch`` fail, as on a Slicer without
the PyTorch extension's install.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import sys
    import unittest

    sys.modules["torch"] = None  # import torch -> ModuleNotFoundError; importlib.util.find_spec("torch") -> None

    import numpy as np
    import slicer

    slicer.mrmlScene = slicer.vtkMRMLScene()
    import SkullVAECompletion as module
    from ct_cases import synthetic_head_ct

    # Skull from CT: Logic.skullFromCT -> mrml.ctArrayFromNode -> skull_from_ct / validation -> geometry.
    ct, skull, matrix = synthetic_head_ct()
    ctNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(ctNode, np.ascontiguousarray(ct.transpose(2, 1, 0)))
    ctNode.SetIJKToRASMatrix(module.mrml.arrayToMatrix(matrix))
    segmentation = module.SkullVAECompletionLogic().skullFromCT(ctNode, 300.0)
    inputMask = module.mrml.inputMaskFromNode(segmentation)  # the extracted skull passes the input checks
    assert inputMask.mask.sum() > 0.9 * skull.sum(), (inputMask.mask.sum(), skull.sum())
    module.SkullVAECompletionLogic().getParameterNode().inputNode = segmentation
    print("SKULL", int(inputMask.mask.sum()))

    # The self-test: skipped through the unittest runner, a clear message when called directly.
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(
        unittest.defaultTestLoader.loadTestsFromTestCase(module.SkullVAECompletionTest))
    assert not result.errors and not result.failures, result.errors + result.failures
    assert result.testsRun >= 2 and len(result.skipped) == result.testsRun, result.skipped
    print("SKIPPED", len(result.skipped), result.skipped[0][1])
    module.SkullVAECompletionTest().runTest()
    assert sys.modules["torch"] is None
    print("DONE")
''')


def test_module_skull_from_ct_and_self_test_work_without_torch():
    env = {"PYTHONPATH": f"{ROOT / 'SkullVAECompletion'}:{ROOT}:{ROOT / 'Testing'}", "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0 and "DONE" in out.stdout, out.stdout + out.stderr
    assert "SkullVAECompletion self-test skipped" in out.stdout + out.stderr
    assert "torch" in out.stdout.split("SKIPPED", 1)[1]  # the message names what is missing
