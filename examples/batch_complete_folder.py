"""Complete every skull mask of a folder through the Slicer module's Logic and save ``<name>.completed.seg.nrrd``.

In 3D Slicer (no window):
    Slicer --no-main-window --python-script examples/batch_complete_folder.py -- INPUT_DIR OUTPUT_DIR [--gamma 1.0]
With plain Python and slicer-core (``pip install slicer-core`` + the engine's requirements):
    PYTHONPATH=SkullVAECompletion python examples/batch_complete_folder.py INPUT_DIR OUTPUT_DIR

Each input is a binary skull mask (NRRD, NIfTI, ...). One failing file is reported and the rest go on; the exit
status is the number of failures (0 = all done).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

MASK_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def parseArguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="folder of skull masks")
    parser.add_argument("output", type=Path, help="folder for the .seg.nrrd results (and STL files)")
    parser.add_argument("--model", type=Path, default=None, help="model bundle folder (default: bundled model)")
    parser.add_argument("--gamma", type=float, default=None, help="latent shift factor (default: the model's)")
    parser.add_argument("--defect-type", default="auto",
                        help="auto (detected) or one of the model's defect classes, e.g. vertex, frontoorbital, facial")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--stl", action="store_true", help="also write each implant as STL")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parseArguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import slicer

    from SkullVAECompletion import SkullVAECompletionLogic, errorMessage
    from SkullVAECompletionLib import mrml

    if getattr(slicer, "mrmlScene", None) is None:  # slicer-core: make a scene
        slicer.mrmlScene = slicer.vtkMRMLScene()
    scene = slicer.mrmlScene
    logic = SkullVAECompletionLogic(modelPath=args.model)
    args.output.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in args.input.iterdir() if p.name.lower().endswith(MASK_SUFFIXES))
    failures = 0
    for index, path in enumerate(files, 1):
        start = time.perf_counter()
        name = path.name.split(".")[0]
        inputNode = None
        try:
            inputNode = mrml.loadLabelmapFile(scene, path)
            result = logic.process(inputNode, gamma=args.gamma, defectType=args.defect_type, device=args.device,
                                   stlFolder=args.output if args.stl else None, outputName=f"{name} completed")
            mrml.saveSegmentation(result, args.output / f"{name}.completed.seg.nrrd")
            logging.info("[%d/%d] %s: %s (%.1f s)", index, len(files), path.name, logic.lastResult.statusText(),
                         time.perf_counter() - start)
            logic.releaseResult(result)  # keep the loaded model, drop this case's encoding
            for node in (result, logic.lastResult.uncertaintyNode):
                if node is not None:
                    scene.RemoveNode(node)
        except Exception as error:  # report and go on with the next file
            failures += 1
            logging.error("[%d/%d] %s failed: %s", index, len(files), path.name, errorMessage(error))
        finally:
            if inputNode is not None and inputNode.GetScene() is scene:
                scene.RemoveNode(inputNode)
    logging.info("%d of %d files completed", len(files) - failures, len(files))
    return failures


if __name__ == "__main__":
    code = main(sys.argv[1:])
    try:
        import slicer

        if hasattr(slicer, "app"):
            slicer.util.exit(code)  # leave Slicer when run with --python-script
    except ImportError:
        pass
    sys.exit(code)
