"""MRML side of the SkullVAE Completion module: nodes in, nodes out.

Everything here works with ``slicer-core`` alone (no Qt, no ``slicer.app``, no ``slicer.modules``), so the
Logic can be tested and scripted outside the Slicer application:

* :func:`inputMaskFromNode` turns a segment of a segmentation node, or a labelmap volume node, into the
  engine's input (a mask indexed (i, j, k) and its IJK→RAS matrix) without modifying the node;
* :func:`buildResultSegmentation` makes a new segmentation node (not yet in a scene) with the segments
  "Completed skull" and "Implant" on the input's voxel grid, so they overlay the input exactly;
* :func:`addResultToScene` adds the result nodes at once (and removes them again if anything fails), places
  them under the input's study in the subject hierarchy and under the input's parent transform;
* :func:`loadLabelmapFile`, :func:`saveSegmentation` for files;
* :func:`runBlocking` runs the engine with progress and cancellation, optionally in a worker thread while
  the calling (GUI) thread keeps processing events.

``slicer`` and ``vtk`` are imported lazily so that importing this file costs nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .detection import BY_CLASS_HEAD, BY_DEFECT_POSITION
from .errors import CancelledError, InputError
from .options import DISTANCE_ARRAY, DISTANCE_RANGE_MM
from .regions import COMPLETE

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]

# --- what the result looks like ------------------------------------------------------------------------
SKULL_SEGMENT_ID = "completed_skull"
IMPLANT_SEGMENT_ID = "implant"
SKULL_SEGMENT_NAME = "Completed skull"
IMPLANT_SEGMENT_NAME = "Implant"
SKULL_COLOR = (241 / 255.0, 213 / 255.0, 144 / 255.0)  # Slicer's recommended colour for "Skull"
IMPLANT_COLOR = (0.20, 0.55, 0.95)  # blue: stands out against bone in slice and 3D views

# Serialized terminology entries (format of vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry):
# context~category~type~type modifier~anatomic context~region~region modifier, codes as scheme^value^meaning.
# The skull code (SCT 89546000, "Bone structure of cranium") is listed as "Skull" in Slicer's General Anatomy
# list; the implant (SCT 40388003) lives in the DICOM master list under "Physical object" (SCT 260787004).
SKULL_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^123037004^Anatomical Structure~SCT^89546000^Skull~^^"
    "~Anatomic codes - DICOM master list~^^~^^"
)
IMPLANT_TERMINOLOGY = (
    "Segmentation category and type - DICOM master list"
    "~SCT^260787004^Physical object~SCT^40388003^Implant~^^"
    "~Anatomic codes - DICOM master list~^^~^^"
)

ATTRIBUTE_PREFIX = "SkullVAECompletion."
CANCELLED_MESSAGE = "Cancelled by the user; the scene was not changed."
BINARY_LABELMAP = "Binary labelmap"
NO_REFERENCE_MARGIN_MM = 30.0  # padding around a segment when its segmentation has no reference geometry


def _slicer() -> Any:
    import slicer  # noqa: PLC0415  (lazy: slicer is heavy and absent in pure-engine installs)

    return slicer


def _vtk() -> Any:
    import vtk  # noqa: PLC0415

    return vtk


# --- matrices and images ------------------------------------------------------------------------------
def matrixToArray(matrix: Any) -> np.ndarray:
    """vtkMatrix4x4 → 4×4 float64 array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def arrayToMatrix(array: np.ndarray) -> Any:
    """4×4 array → vtkMatrix4x4."""
    matrix = _vtk().vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def orientedImageToArray(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """vtkOrientedImageData → (array indexed (i, j, k), IJK→RAS of index (0, 0, 0) of that array)."""
    from vtk.util import numpy_support  # noqa: PLC0415

    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars is None or min(dims) < 1:
        return np.zeros((0, 0, 0), np.uint8), np.eye(4)
    # VTK stores x fastest: reshape to (k, j, i), then a transposed view gives (i, j, k) without a copy.
    array = numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0]).transpose(2, 1, 0)
    matrix = _vtk().vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ijkToRas = matrixToArray(matrix)
    extent = image.GetExtent()
    # The image's extent may not start at 0: fold the start index into the matrix.
    ijkToRas[:3, 3] = ijkToRas[:3, :3] @ np.array(extent[0::2], dtype=float) + ijkToRas[:3, 3]
    return array, ijkToRas


def arrayToOrientedImage(array: np.ndarray, ijkToRas: np.ndarray, dtype: Any = np.uint8) -> Any:
    """Array indexed (i, j, k) → vtkOrientedImageData with extent starting at 0 and the given geometry."""
    from vtk.util import numpy_support  # noqa: PLC0415

    slicer = _slicer()
    array = np.asarray(array, dtype=dtype)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*array.shape)
    flat = np.ravel(array, order="F")  # (i, j, k) in Fortran order = x fastest, VTK's layout
    vtkArray = numpy_support.numpy_to_vtk(flat, deep=True)
    vtkArray.SetName("ImageScalars")
    image.GetPointData().SetScalars(vtkArray)
    image.SetImageToWorldMatrix(arrayToMatrix(ijkToRas))
    return image


# --- input -------------------------------------------------------------------------------------------
@dataclass
class InputMask:
    """The engine's view of the input node."""

    mask: np.ndarray  # (i, j, k), the node's own voxels (a view for labelmaps: never write to it)
    ijkToRas: np.ndarray  # local IJK→RAS: what the result segments use, so they overlay the input
    worldIjkToRas: np.ndarray  # IJK→world through the parent (linear) transform: what the engine sees
    referenceGeometry: str  # serialized reference image geometry for the result segmentation
    name: str  # used in messages and result names
    nodeId: str | None
    segmentId: str | None
    transformNodeId: str | None


def describeNode(node: Any) -> str:
    return f"'{node.GetName()}'" if node is not None and node.GetName() else "the selected node"


def inputMaskFromNode(node: Any, segmentId: str | None = None) -> InputMask:
    """Read the skull from a segmentation (one segment) or a labelmap volume; raise InputError if unusable."""
    if node is None:
        raise InputError(
            "No input selected: choose the skull segmentation (and its skull segment) or a skull labelmap volume."
        )
    if node.IsA("vtkMRMLSegmentationNode"):
        data = _maskFromSegmentation(node, segmentId)
    elif node.IsA("vtkMRMLLabelMapVolumeNode"):
        data = _maskFromLabelmap(node)
    elif node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(
            f"{describeNode(node)} is a scalar (intensity) volume such as a CT, not a skull mask. "
            "Extract the skull first with the Skull from CT step (or Segment Editor: Threshold above about "
            "300 HU) and select that segmentation, or convert the mask to a labelmap volume."
        )
    else:
        raise InputError(
            f"{describeNode(node)} is a {node.GetClassName()}; select a segmentation (with the skull segment) "
            "or a labelmap volume."
        )
    mask = data.mask
    if mask.ndim != 3 or min(mask.shape) < 2:
        raise InputError(
            f"{data.name} is a 2D image (size {' x '.join(str(s) for s in mask.shape)}); a 3D volume of the "
            "whole skull is needed: load the whole CT series and segment the skull in 3D."
        )
    if not np.any(mask):
        what = f"segment '{data.segmentId}' of {describeNode(node)}" if data.segmentId else describeNode(node)
        raise InputError(f"The skull mask ({what}) is empty: paint or threshold the skull before completing it.")
    return data


def _checkVolumeImage(node: Any, whenEmpty: str, whenMultiComponent: str) -> None:
    """InputError unless the volume node has voxels of a single component and a size the engine accepts."""
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{describeNode(node)} has no voxels; {whenEmpty}.")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{describeNode(node)} has {image.GetNumberOfScalarComponents()} components per voxel; "
                         f"{whenMultiComponent}.")
    _checkSize(image.GetDimensions(), describeNode(node))


def _checkSize(dimensions: tuple[int, ...], name: str) -> None:
    from .validation import check_volume_size  # noqa: PLC0415

    check_volume_size(tuple(dimensions), name)


def _transformInfo(node: Any) -> tuple[str | None, np.ndarray]:
    """Parent transform ID and the local→world matrix (identity if none); non-linear transforms are refused."""
    transformNode = node.GetParentTransformNode()
    if transformNode is None:
        return None, np.eye(4)
    if not transformNode.IsTransformToWorldLinear():
        raise InputError(
            f"{describeNode(node)} is under a non-linear transform; harden the transform "
            "(Data module: right-click > Harden transform) before completing the skull."
        )
    matrix = _vtk().vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(matrix)
    return transformNode.GetID(), matrixToArray(matrix)


def _maskFromLabelmap(node: Any) -> InputMask:
    slicer = _slicer()
    _checkVolumeImage(node, "load or create the skull labelmap first", "a single-component labelmap is needed")
    mask = slicer.util.arrayFromVolume(node).transpose(2, 1, 0)  # (k, j, i) view → (i, j, k) view
    matrix = _vtk().vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijkToRas = matrixToArray(matrix)
    transformId, toWorld = _transformInfo(node)
    extent = [0, mask.shape[0] - 1, 0, mask.shape[1] - 1, 0, mask.shape[2] - 1]
    geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(matrix, extent)
    return InputMask(mask, ijkToRas, toWorld @ ijkToRas, geometry, describeNode(node), node.GetID(), None, transformId)


def _maskFromSegmentation(node: Any, segmentId: str | None) -> InputMask:
    slicer = _slicer()
    segmentation = node.GetSegmentation()
    ids = list(segmentation.GetSegmentIDs())
    if not ids:
        raise InputError(f"{describeNode(node)} has no segments; segment the skull first.")
    names = ", ".join(f"'{segmentation.GetSegment(i).GetName()}' (ID {i})" for i in ids)
    if not segmentId:
        if len(ids) > 1:
            raise InputError(f"{describeNode(node)} has {len(ids)} segments: choose the skull segment ({names}).")
        segmentId = ids[0]
    if segmentation.GetSegment(segmentId) is None:
        # Accept a segment name too: scripts often know names, not IDs.
        byName = segmentation.GetSegmentIdBySegmentName(segmentId)
        if not byName:
            raise InputError(f"{describeNode(node)} has no segment '{segmentId}'; its segments are {names}.")
        segmentId = byName
    if not segmentation.ContainsRepresentation(BINARY_LABELMAP):
        ensureSegmentationConverters()  # e.g. a segmentation made of closed surfaces (imported STL)
        copy = slicer.vtkSegmentation()  # convert a copy: the input node is never changed
        copy.DeepCopy(segmentation)
        if not copy.CreateRepresentation(BINARY_LABELMAP):
            raise InputError(f"{describeNode(node)}: cannot convert segment '{segmentId}' to a binary labelmap.")
        image = copy.GetSegment(segmentId).GetRepresentation(BINARY_LABELMAP)
        binary = slicer.vtkOrientedImageData()
        binary.DeepCopy(image)
    else:
        binary = slicer.vtkOrientedImageData()
        if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            node, segmentId, binary, False
        ):
            raise InputError(f"{describeNode(node)}: cannot read segment '{segmentId}'.")
    reference = _referenceGeometry(segmentation, binary)
    _checkSize(reference.GetDimensions(), describeNode(node))  # before resampling allocates the full grid
    resampled = slicer.vtkOrientedImageData()
    # Put the segment on the full reference grid (usually the CT's): the model needs the whole field of view,
    # and the implant may reach beyond the defective skull's bounding box.
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        binary, reference, resampled
    ):
        raise InputError(f"{describeNode(node)}: cannot resample segment '{segmentId}' to its reference geometry.")
    mask, ijkToRas = orientedImageToArray(resampled)
    # Segments may share one labelmap layer (Slicer's default): the segment is the voxels with its label value.
    mask = (mask == segmentation.GetSegment(segmentId).GetLabelValue()).astype(np.uint8)
    transformId, toWorld = _transformInfo(node)
    geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(resampled)
    name = f"{describeNode(node)} segment '{segmentation.GetSegment(segmentId).GetName()}'"
    return InputMask(mask, ijkToRas, toWorld @ ijkToRas, geometry, name, node.GetID(), segmentId, transformId)


def _referenceGeometry(segmentation: Any, binary: Any) -> Any:
    """The segmentation's reference image geometry, or the segment's extent padded by a margin."""
    slicer = _slicer()
    converter = slicer.vtkSegmentationConverter
    reference = slicer.vtkOrientedImageData()
    parameterName = converter.GetReferenceImageGeometryParameterName()
    serialized = ""
    # GetConversionParameter logs an error for an unknown name: look in the serialized parameters first.
    if parameterName in segmentation.SerializeAllConversionParameters():
        serialized = segmentation.GetConversionParameter(parameterName)
    if serialized and converter.DeserializeImageGeometry(serialized, reference, False):
        extent = reference.GetExtent()
        if extent[1] >= extent[0] and extent[3] >= extent[2] and extent[5] >= extent[4]:
            return reference
    # No reference geometry: the segment's own grid, padded so that a missing part can be added.
    reference = slicer.vtkOrientedImageData()
    reference.ShallowCopy(binary)
    matrix = _vtk().vtkMatrix4x4()
    binary.GetImageToWorldMatrix(matrix)
    spacing = np.linalg.norm(matrixToArray(matrix)[:3, :3], axis=0)
    margin = np.ceil(NO_REFERENCE_MARGIN_MM / np.maximum(spacing, 1e-6)).astype(int)
    extent = list(binary.GetExtent())
    for axis in range(3):
        extent[2 * axis] -= int(margin[axis])
        extent[2 * axis + 1] += int(margin[axis])
    geometryOnly = slicer.vtkOrientedImageData()
    geometryOnly.SetExtent(extent)
    geometryOnly.SetImageToWorldMatrix(matrix)
    return geometryOnly


# --- result --------------------------------------------------------------------------------------------
@dataclass
class CompletionSummary:
    """What the last completion did; ``SkullVAECompletionLogic.lastResult``."""

    segmentationNode: Any
    uncertaintyNode: Any
    defectType: str
    detectedType: str
    confidence: float  # the model's probability for the detected class
    gamma: float
    modelId: str
    modelVersion: str
    device: str
    seconds: float
    implantVolumeMl: float
    timings: dict[str, float] = field(default_factory=dict)
    stlFiles: list[str] = field(default_factory=list)
    result: Any = None  # the engine's CompletionResult (designed)
    design: Any = None  # the DesignOptions applied
    detectedBy: str = BY_CLASS_HEAD  # what decided detectedType: the class head or the defect's position
    distanceNode: Any = None  # the distance map as it stands (hidden while it shows a previous implant)
    # Measures the quality report and shows the distance map (the Logic's measureQuality) on first use of ``fit``
    # or ``distanceModelNode``; None once measured, or for a result that is not to be measured (a γ preview).
    measureQuality: Callable[[], Any] | None = field(default=None, repr=False, compare=False)
    measuredFit: Any = None  # the quality report once measured (None: not yet, or an empty implant)

    @property
    def fit(self) -> Any:
        """The implant's quality report (quality.QualityReport; None for an empty implant or a γ preview),
        measured on first use."""
        self._measure()
        return self.measuredFit

    @property
    def distanceModelNode(self) -> Any:
        """The implant surface coloured by its distance to the skull (a model node), measured on first use."""
        self._measure()
        return self.distanceNode

    @property
    def qualityPending(self) -> bool:
        return self.measureQuality is not None

    def _measure(self) -> None:
        measure = self.measureQuality
        if measure is not None:
            measure()  # calls setQuality
            self.measureQuality = None

    def setQuality(self, report: Any, distanceModelNode: Any) -> None:
        self.measuredFit, self.distanceNode, self.measureQuality = report, distanceModelNode, None

    def statusText(self) -> str:
        """One line for the GUI's status label and the log (it never measures: a report not yet measured shows
        as such)."""
        detected = "no defect detected" if self.detectedType == COMPLETE else f"{self.detectedType} defect"
        thickness, fit = "", self.measuredFit
        if fit is not None and fit.thickness_mm is not None:
            thickness = f", thickness {fit.thickness_mm['median']:.1f} mm"
        elif self.qualityPending:
            thickness = " (measuring the fit)"
        elif fit is None and self.implantVolumeMl > 0:
            thickness = " (fit not measured)"
        message = getattr(self.result, "message", "")
        if self.detectedBy == BY_DEFECT_POSITION and self.detectedType == COMPLETE:
            how = f"no hole found in the bone; class head {100 * self.confidence:.0f}%"
        elif self.detectedBy == BY_DEFECT_POSITION:
            how = f"from where the defect lies; class head {100 * self.confidence:.0f}%"
        else:
            how = f"{100 * self.confidence:.0f}% confidence"
        trust = getattr(self.result, "trust", None)
        trusted = "" if trust is None else f"; trust {trust.figure:.2f}"
        warnings = "".join(f" Warning: {warning}." for warning in getattr(self.result, "warnings", []))
        return (
            f"Detected: {detected} ({how}); completed as "
            f"{self.defectType} with γ = {self.gamma:.2f}; implant {self.implantVolumeMl:.1f} ml{thickness}"
            f"{trusted}; {self.seconds:.1f} s on {self.device}."
            + (f" {message[0].upper()}{message[1:]}." if message else "") + warnings
        )


def newSegment(name: str, color: tuple[float, float, float], terminology: str, image: Any) -> Any:
    """A segment with a fixed name, colour and terminology, holding ``image`` as its binary labelmap."""
    segment = _slicer().vtkSegment()
    segment.SetName(name)
    segment.SetColor(*color)
    segment.SetNameAutoGenerated(False)
    segment.SetColorAutoGenerated(False)
    segment.SetTag(segment.GetTerminologyEntryTagName(), terminology)
    segment.AddRepresentation(BINARY_LABELMAP, image)
    return segment


def buildResultSegmentation(result: Any, inputMask: InputMask, name: str) -> Any:
    """A new segmentation node (not in a scene) with the completed skull and the implant on the input grid."""
    slicer = _slicer()
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(name)
    segmentation = node.GetSegmentation()
    segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
    segmentation.SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), inputMask.referenceGeometry
    )
    for segmentId, segmentName, color, terminology, array in (
        (SKULL_SEGMENT_ID, SKULL_SEGMENT_NAME, SKULL_COLOR, SKULL_TERMINOLOGY, result.completed),
        (IMPLANT_SEGMENT_ID, IMPLANT_SEGMENT_NAME, IMPLANT_COLOR, IMPLANT_TERMINOLOGY, result.implant),
    ):
        # The implant is stored as its bounding box only: a γ update then rewrites a small block, not the volume.
        image = croppedImage(array, inputMask.ijkToRas) if segmentId == IMPLANT_SEGMENT_ID else \
            arrayToOrientedImage(array, inputMask.ijkToRas)
        segment = newSegment(segmentName, color, terminology, image)
        segmentation.AddSegment(segment, segmentId)
    return node


def croppedImage(array: np.ndarray, ijkToRas: np.ndarray) -> Any:
    """The mask's bounding box as a vtkOrientedImageData whose extent is that box's index range on the full grid."""
    from .geometry import nonzero_bounds  # noqa: PLC0415  (the engine is loaded by then)

    return boxImage(array, ijkToRas, nonzero_bounds(array))


def boxImage(array: np.ndarray, ijkToRas: np.ndarray, bounds: tuple[np.ndarray, np.ndarray] | None) -> Any:
    """:func:`croppedImage` with the mask's nonzero bounds (lo, hi) already known (None: empty)."""
    lo, hi = bounds if bounds is not None else (np.zeros(3, int), np.ones(3, int))  # empty: one zero voxel
    image = arrayToOrientedImage(array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], ijkToRas)
    image.SetExtent(int(lo[0]), int(hi[0]) - 1, int(lo[1]), int(hi[1]) - 1, int(lo[2]), int(hi[2]) - 1)
    return image


def _extentBox(image: Any) -> tuple[np.ndarray, np.ndarray] | None:
    extent = image.GetExtent() if image is not None else (0, -1, 0, -1, 0, -1)
    lo, hi = np.array(extent[0::2]), np.array(extent[1::2]) + 1
    return (lo, hi) if np.all(hi > lo) else None


def _replaceInBox(node: Any, segmentId: str, shape: tuple[int, ...], box: tuple[np.ndarray, np.ndarray],
                  valuesIn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> bool:
    """Overwrite a segment's own full-grid labelmap (of the input's ``shape``) inside ``box`` with
    ``valuesIn(lo, hi)``, in place; False if its layout does not allow it.

    Writing into the existing labelmap and marking it modified avoids two full-volume copies per γ update.
    """
    from vtk.util import numpy_support  # noqa: PLC0415

    segmentation = node.GetSegmentation()
    segment = segmentation.GetSegment(segmentId)
    image = segment.GetRepresentation(BINARY_LABELMAP) if segment is not None else None
    shared = segmentation.GetNumberOfLayers() != segmentation.GetNumberOfSegments()
    if image is None or shared or segment.GetLabelValue() != 1 or image.GetScalarType() != _vtk().VTK_UNSIGNED_CHAR:
        return False
    if image.GetExtent() != (0, shape[0] - 1, 0, shape[1] - 1, 0, shape[2] - 1):
        return False
    dims = image.GetDimensions()
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    (lo, hi) = box
    view = voxels.transpose(2, 1, 0)[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    view[...] = valuesIn(lo, hi)
    image.Modified()  # the segmentation observes its source representation: views and derived surfaces update
    return True


def updateResultSegments(node: Any, result: Any, ijkToRas: np.ndarray) -> None:
    """Replace both segments' voxels in place (same node, same segment IDs, display settings kept)."""
    from .geometry import nonzero_bounds  # noqa: PLC0415

    slicer = _slicer()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    segmentation = node.GetSegmentation()
    for segmentId in (SKULL_SEGMENT_ID, IMPLANT_SEGMENT_ID):
        if segmentation.GetSegment(segmentId) is None:
            raise InputError(f"{describeNode(node)} has no segment '{segmentId}'; run the completion again.")
    # Only voxels of the old or the new implant can change in the completed skull (= input ∪ implant).
    implantBox = nonzero_bounds(result.implant)
    boxes = [b for b in (_extentBox(segmentation.GetSegment(IMPLANT_SEGMENT_ID).GetRepresentation(BINARY_LABELMAP)),
                         implantBox) if b is not None]
    changed = (np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)) if boxes else None
    # The completed skull is only made inside that box (CompletionResult.completed_in), unless the layout needs all.
    updates = []
    if changed is not None and not _replaceInBox(node, SKULL_SEGMENT_ID, result.implant.shape, changed,
                                                 result.completed_in):
        updates.append((SKULL_SEGMENT_ID, arrayToOrientedImage(result.completed, ijkToRas)))
    updates.append((IMPLANT_SEGMENT_ID, boxImage(result.implant, ijkToRas, implantBox)))
    for segmentId, image in updates:
        if not logic.SetBinaryLabelmapToSegment(image, node, segmentId, logic.MODE_REPLACE):
            raise RuntimeError(f"Could not update segment '{segmentId}' of {describeNode(node)}.")
    # Keep the 3D view in sync: rebuild the surfaces only if they were shown before.
    if node.GetSegmentation().ContainsRepresentation("Closed surface"):
        node.GetSegmentation().CreateRepresentation("Closed surface", True)


def setResultAttributes(node: Any, summary: CompletionSummary, inputMask: InputMask | None = None) -> None:
    """Record model and run parameters on the node (saved with the scene)."""
    values = {
        "ModelId": summary.modelId,
        "ModelVersion": summary.modelVersion,
        "DefectType": summary.defectType,
        "DetectedType": summary.detectedType,
        "Confidence": f"{summary.confidence:.4f}",
        "DetectedBy": summary.detectedBy,
        "Gamma": f"{summary.gamma:.4f}",
        "ImplantVolumeMl": f"{summary.implantVolumeMl:.3f}",
        "Method": getattr(summary.result, "method", ""),
        "Extraction": getattr(summary.result, "extraction", ""),
        "Message": getattr(summary.result, "message", ""),
    }
    if inputMask is not None:
        values["InputNodeID"] = inputMask.nodeId or ""
        values["InputSegmentID"] = inputMask.segmentId or ""
    for key, value in values.items():
        node.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))


def buildUncertaintyVolume(array: np.ndarray, inputMask: InputMask, name: str) -> Any:
    """A scalar volume node (not in a scene) holding the voxelwise uncertainty (0..1) on the input grid."""
    slicer = _slicer()
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    updateUncertaintyVolume(node, array, inputMask.ijkToRas)
    return node


def updateUncertaintyVolume(node: Any, array: np.ndarray, ijkToRas: np.ndarray) -> None:
    image = arrayToOrientedImage(array, np.eye(4), dtype=np.float32)
    plain = _vtk().vtkImageData()
    plain.ShallowCopy(image)
    plain.SetOrigin(0, 0, 0)
    plain.SetSpacing(1, 1, 1)
    node.SetIJKToRASMatrix(arrayToMatrix(ijkToRas))
    node.SetAndObserveImageData(plain)


def addResultToScene(scene: Any, nodes: list[Any], inputNode: Any, transformNodeId: str | None,
                     showSurfaces: bool = False) -> None:
    """Add the new nodes; on any failure remove what was added, so the scene is left as it was."""
    added = []
    try:
        for node in nodes:
            node.SetName(scene.GenerateUniqueName(node.GetName()))
            scene.AddNode(node)
            added.append(node)
            node.CreateDefaultDisplayNodes()
            if transformNodeId:
                node.SetAndObserveTransformNodeID(transformNodeId)
        segmentationNode = nodes[0]
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            # The completed skull contains the implant: show it as outline so the implant stays visible.
            displayNode.SetSegmentVisibility2DFill(SKULL_SEGMENT_ID, False)
            displayNode.SetSegmentOpacity3D(SKULL_SEGMENT_ID, 0.4)
        if showSurfaces:
            segmentationNode.CreateClosedSurfaceRepresentation()
        placeInSubjectHierarchy(scene, nodes, inputNode)
    except BaseException:
        removeNodes(scene, added)
        raise


def removeNodes(scene: Any, nodes: list[Any]) -> None:
    """Remove nodes with their display and storage nodes (slicer-core does not remove those by itself)."""
    for node in reversed([n for n in nodes if n is not None]):
        helpers = []
        for getCount, getNth in (("GetNumberOfDisplayNodes", "GetNthDisplayNode"),
                                 ("GetNumberOfStorageNodes", "GetNthStorageNode")):
            if hasattr(node, getCount):
                helpers += [getattr(node, getNth)(i) for i in range(getattr(node, getCount)())]
        for helper in [node, *helpers]:
            if helper is not None and helper.GetScene() is scene:
                scene.RemoveNode(helper)


def nodeIds(scene: Any) -> list[str]:
    """The IDs of every node in the scene (display, storage and colour nodes included), in scene order."""
    nodes = (scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes()))
    return [node.GetID() for node in nodes if node is not None]


class SceneRollback:
    """One undo mechanism for a run: ``with SceneRollback(scene) as rollback: ...``.

    On entry it records the IDs of the scene's nodes; if the block raises anything (CancelledError included), every
    node added since is removed (newest first: display and storage nodes before their data nodes, colour tables
    too) and the undo actions registered with :meth:`onRollback` run, newest first. So whatever the block
    published -- nodes, cached state, files -- is taken back as one, wherever it stopped.
    """

    def __init__(self, scene: Any) -> None:
        self.scene = scene
        self.before: set[str] = set()
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> SceneRollback:
        self.before = set(nodeIds(self.scene))
        return self

    def onRollback(self, action: Callable[[], None]) -> None:
        self._undo.append(action)

    def __exit__(self, excType: Any, exc: Any, traceback: Any) -> bool:
        if excType is not None:
            self.rollback()
        return False  # the exception goes on

    def rollback(self) -> None:
        for action in reversed(self._undo):
            try:
                action()
            except Exception:  # the original error matters more; an undo that fails is logged, not raised
                logger.exception("Could not undo a step of a cancelled or failed run")
        self._undo.clear()
        added = [self.scene.GetNodeByID(nodeId) for nodeId in nodeIds(self.scene) if nodeId not in self.before]
        for node in reversed(added):
            if node is not None and node.GetScene() is self.scene:
                self.scene.RemoveNode(node)


def placeInSubjectHierarchy(scene: Any, nodes: list[Any], inputNode: Any) -> None:
    """Put the result next to the input (i.e. in the input's study), if the input has a hierarchy item."""
    # Only use an existing hierarchy (GetSubjectHierarchyNode would create one: no new nodes on the side).
    shNode = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")
    if shNode is None or inputNode is None:
        return
    inputItem = shNode.GetItemByDataNode(inputNode)
    if not inputItem:
        return  # slicer-core without the application creates no items automatically
    parentItem = shNode.GetItemParent(inputItem)
    for node in nodes:
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, parentItem)
        else:
            shNode.CreateItem(parentItem, node)


def ensureSegmentationConverters() -> None:
    """Register the closed-surface converter rules the Slicer application registers at start-up."""
    slicer = _slicer()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    existing = {rule.GetName() for rule in factory.GetConverterRules()}
    for cls in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
        slicer.vtkClosedSurfaceToFractionalLabelmapConversionRule,
        slicer.vtkFractionalLabelmapToClosedSurfaceConversionRule,
    ):
        rule = cls()
        if rule.GetName() not in existing:
            factory.RegisterConverterRule(rule)


def prepareFolder(folder: str | os.PathLike) -> Path:
    """Create the STL export folder (done before the completion runs, so a bad folder fails fast)."""
    from .io import ensure_writable_folder  # noqa: PLC0415  (keeps VTK/nibabel imports out of module import)

    return ensure_writable_folder(folder, "STL export folder", "choose another folder")


def saveSegmentation(node: Any, path: str | os.PathLike) -> None:
    """Write a segmentation node to ``.seg.nrrd`` (works without the application's IO manager)."""
    storage = node.GetStorageNode() or node.CreateDefaultStorageNode()
    if node.GetScene() is not None and storage.GetScene() is None:
        node.GetScene().AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    if not storage.WriteData(node):
        raise RuntimeError(f"Could not write {path}.")


def loadSegmentation(scene: Any, path: str | os.PathLike) -> Any:
    """Read a ``.seg.nrrd`` into a new segmentation node of ``scene``."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", Path(path).name.split(".")[0])
    storage = node.CreateDefaultStorageNode()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise RuntimeError(f"Could not read segmentation {path}.")
    return node


def loadLabelmapFile(scene: Any, path: str | os.PathLike) -> Any:
    """Load a mask file (NRRD, NIfTI, ...) as a labelmap volume node: through the application when there is
    one (``slicer.util.loadLabelVolume``), else through a volume storage node (slicer-core)."""
    slicer = _slicer()
    if hasattr(slicer, "app") and scene is slicer.mrmlScene:
        return slicer.util.loadLabelVolume(str(path))
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", Path(path).name.split(".")[0])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        scene.RemoveNode(storage)
        scene.RemoveNode(node)
        raise InputError(f"Could not read {path} as a volume.")
    return node


# --- skull from CT, implant design, distance map ------------------------------------------------------------
SKULL_FROM_CT_SEGMENT_NAME = "Skull"
DISTANCE_COLOR_NODE_NAME = "SkullVAE distance to skull"


def ctArrayFromNode(node: Any) -> tuple[np.ndarray, np.ndarray]:
    """A scalar volume's voxels (an (i, j, k) view, never written to) and its IJK→RAS; InputError if unusable."""
    slicer = _slicer()
    if node is None:
        raise InputError("No CT selected: choose the head CT (a scalar volume in Hounsfield units).")
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{describeNode(node)} is a {node.GetClassName()}, not a CT: choose a scalar volume "
                         "(a labelmap or segmentation is a mask already; complete it directly).")
    _checkVolumeImage(node, "load the CT first", "(a colour image?) a CT has one")
    matrix = _vtk().vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVolume(node).transpose(2, 1, 0), matrixToArray(matrix)


def buildSkullSegmentation(mask: np.ndarray, volumeNode: Any, name: str) -> Any:
    """A new segmentation node (not in a scene) with one "Skull" segment on the CT's grid."""
    slicer = _slicer()
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(name)
    matrix = _vtk().vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    segmentation = node.GetSegmentation()
    segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
    extent = [0, mask.shape[0] - 1, 0, mask.shape[1] - 1, 0, mask.shape[2] - 1]
    segmentation.SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
        slicer.vtkSegmentationConverter.SerializeImageGeometry(matrix, extent),
    )
    segment = newSegment(SKULL_FROM_CT_SEGMENT_NAME, SKULL_COLOR, SKULL_TERMINOLOGY,
                         croppedImage(mask, matrixToArray(matrix)))
    segmentation.AddSegment(segment, "skull")
    return node


def addNodeNextTo(scene: Any, node: Any, inputNode: Any) -> Any:
    """Add a new node to the scene beside ``inputNode``: same parent transform, same study."""
    node.SetName(scene.GenerateUniqueName(node.GetName()))
    scene.AddNode(node)
    try:
        node.CreateDefaultDisplayNodes()
        transformId, _ = _transformInfo(inputNode)
        if transformId:
            node.SetAndObserveTransformNodeID(transformId)
        placeInSubjectHierarchy(scene, [node], inputNode)
    except BaseException:
        removeNodes(scene, [node])
        raise
    return node


def distanceColorNode(scene: Any) -> Any:
    """The colour table of distance maps (blue → red over 0–4 mm); created in the scene once."""
    slicer = _slicer()
    existing = scene.GetFirstNodeByName(DISTANCE_COLOR_NODE_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(DISTANCE_COLOR_NODE_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    table = _vtk().vtkLookupTable()
    table.SetHueRange(0.667, 0.0)
    table.SetNumberOfTableValues(256)
    table.Build()
    for index in range(256):
        red, green, blue, _ = table.GetTableValue(index)
        node.SetColor(index, f"{DISTANCE_RANGE_MM[1] * index / 255:.2f} mm", red, green, blue, 1.0)
    node.SetHideFromEditors(False)
    scene.AddNode(node)
    return node


def buildDistanceModel(surface: Any, name: str) -> Any:
    """A model node (not in a scene) with the implant surface and its ``DistanceToSkull_mm`` point array."""
    slicer = _slicer()
    node = slicer.vtkMRMLModelNode()
    node.SetName(name)
    node.SetAndObservePolyData(surface)
    return node


def showDistanceModel(node: Any, colorNode: Any) -> None:
    """Colour the model by its distance array through ``colorNode`` (called once the node is in the scene)."""
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetActiveScalarName(DISTANCE_ARRAY)
    display.SetAndObserveColorNodeID(colorNode.GetID())
    display.SetScalarRangeFlag(display.UseManualScalarRange)
    display.SetScalarRange(*DISTANCE_RANGE_MM)
    display.SetScalarVisibility(True)
    display.SetVisibility2D(True)


def setDesignAttributes(node: Any, summary: dict) -> None:
    """Record the design options, the fit and the whole run summary (JSON) on the node, so it can be redone."""
    import json  # noqa: PLC0415

    for key in ("thickness_mm", "flange_mm", "flange_thickness_mm", "clearance_mm", "edge_radius_mm",
                "max_triangles"):
        if key in summary:
            node.SetAttribute(f"{ATTRIBUTE_PREFIX}Design.{key}", json.dumps(summary[key]))
    node.SetAttribute(ATTRIBUTE_PREFIX + "Fit", json.dumps(summary.get("fit")))
    node.SetAttribute(ATTRIBUTE_PREFIX + "Summary", json.dumps(summary))


# --- running the engine ---------------------------------------------------------------------------------
def runBlocking(
    work: Callable[[ProgressCallback], Any],
    progress: ProgressCallback | None = None,
    isCancelled: Callable[[], bool] = lambda: False,
    processEvents: Callable[[], None] | None = None,
    useThread: bool = False,
    pollSeconds: float = 0.05,
) -> Any:
    """Run ``work(engineProgress)`` and return its value; blocking either way.

    Without a thread, ``engineProgress`` forwards to ``progress`` (which may raise CancelledError) and calls
    ``processEvents``. With ``useThread`` (the GUI case), ``work`` runs in a worker thread -- it must not touch
    MRML or Qt -- while this thread forwards progress messages and calls ``processEvents`` every
    ``pollSeconds``, so the GUI stays responsive even during one long network call. Cancellation is checked
    by the engine's progress calls, so it takes effect at the next step.
    """
    cancelled = threading.Event()

    def checkCancel() -> None:
        if cancelled.is_set() or isCancelled():
            cancelled.set()
            raise CancelledError(CANCELLED_MESSAGE)

    if not useThread:
        def direct(fraction: float, message: str) -> None:
            checkCancel()
            if progress is not None:
                progress(fraction, message)
            if processEvents is not None:
                processEvents()
            checkCancel()

        return work(direct)

    messages: list[tuple[float, str]] = []
    lock = threading.Lock()
    outcome: dict[str, Any] = {}

    def queued(fraction: float, message: str) -> None:
        checkCancel()
        with lock:
            messages.append((fraction, message))

    def target() -> None:
        try:
            outcome["value"] = work(queued)
        except BaseException as error:  # re-raised in the calling thread
            outcome["error"] = error

    worker = threading.Thread(target=target, name="SkullVAECompletion", daemon=True)
    worker.start()
    while True:
        worker.join(pollSeconds)
        with lock:
            pending, messages[:] = list(messages), []
        for fraction, message in pending:
            try:
                if progress is not None:
                    progress(fraction, message)
            except CancelledError:
                cancelled.set()
        if isCancelled():
            cancelled.set()
        if processEvents is not None:
            processEvents()
        if not worker.is_alive():
            break
    if "error" in outcome:
        raise outcome["error"]
    if cancelled.is_set():
        raise CancelledError(CANCELLED_MESSAGE)
    return outcome.get("value")


class StageProgress:
    """Maps an engine step's 0..1 progress onto a slice of the overall 0..1 progress."""

    def __init__(self, callback: ProgressCallback, start: float, end: float) -> None:
        self.callback, self.start, self.end = callback, start, end

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        self.callback(self.start + (self.end - self.start) * fraction, message)


def elapsed(start: float) -> float:
    return time.perf_counter() - start
