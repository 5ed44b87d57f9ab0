"""MRML side of the SkullVAE Completion module: nodes in, nodes out.

Everything here works with ``slicer-core`` alone (no Qt, no ``slicer.app``, no ``slicer.modules``), so the
Logic can be tested and scripted outside the Slicer application. One concern per file:

* :mod:`.nodes`: input segments and labelmaps to the engine's input (a mask indexed (i, j, k) and its IJK→RAS
  matrix) without modifying the node; matrices and oriented images;
* :mod:`.results`: the result segmentation ("Completed skull", "Implant" on the input's grid), the summary, the
  uncertainty volume, the distance model and the attributes saved with the scene;
* :mod:`.scene`: adding the result nodes at once (removed again if anything fails), the subject hierarchy and
  the input's parent transform;
* :mod:`.result_cache`: what the Logic keeps per result node to update it in place (γ, design); the result's
  summary, saved record, distance model and implant STL;
* :mod:`.files`: loading labelmaps, saving segmentations;
* :mod:`.threads`: running the engine with progress and cancellation, optionally in a worker thread while the
  calling (GUI) thread keeps processing events;
* :mod:`.console_options`: the Logic's keyword options (camelCase) as the engine's CompletionOptions;
* :mod:`.synthetic_input`: the self-test's synthetic defective skull, and segments read back onto its grid;
* :mod:`.parameter_node`: the module's parameters and their widgets;
* :mod:`.scripted_module`: Slicer's scripted-module base classes, for running the module outside the application.

The names of the first six are importable from the package (``from SkullVAECompletionLib import mrml``); the module
imports the last four itself.
``slicer`` and ``vtk`` are imported lazily so that importing these files costs nothing.
"""

from .files import (  # noqa: F401
    loadLabelmapFile,
    loadSegmentation,
    prepareFolder,
    saveSegmentation,
)
from .nodes import (  # noqa: F401
    BINARY_LABELMAP,
    NO_REFERENCE_MARGIN_MM,
    InputMask,
    arrayToMatrix,
    arrayToOrientedImage,
    ctArrayFromNode,
    describeNode,
    ensureSegmentationConverters,
    inputMaskFromNode,
    matrixToArray,
    orientedImageToArray,
)
from .result_cache import (  # noqa: F401
    CachedCompletion,
    exportImplantStl,
    hideStaleDistanceModel,
    resultRecord,
    resultSummary,
    updateDistanceModel,
)
from .results import (  # noqa: F401
    ATTRIBUTE_PREFIX,
    DISTANCE_COLOR_NODE_NAME,
    IMPLANT_COLOR,
    IMPLANT_SEGMENT_ID,
    IMPLANT_SEGMENT_NAME,
    IMPLANT_TERMINOLOGY,
    SKULL_COLOR,
    SKULL_FROM_CT_SEGMENT_NAME,
    SKULL_SEGMENT_ID,
    SKULL_SEGMENT_NAME,
    SKULL_TERMINOLOGY,
    CompletionSummary,
    boxImage,
    buildDistanceModel,
    buildResultSegmentation,
    buildSkullSegmentation,
    buildUncertaintyVolume,
    croppedImage,
    distanceColorNode,
    newSegment,
    setDesignAttributes,
    setResultAttributes,
    showDistanceModel,
    updateResultSegments,
    updateUncertaintyVolume,
)
from .scene import (  # noqa: F401
    SceneRollback,
    addNodeNextTo,
    addResultToScene,
    nodeIds,
    placeInSubjectHierarchy,
    removeNodes,
)
from .threads import (  # noqa: F401
    CANCELLED_MESSAGE,
    ProgressCallback,
    StageProgress,
    elapsed,
    runBlocking,
)
