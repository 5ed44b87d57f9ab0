"""The result nodes: the segmentation with the segments "Completed skull" and "Implant" on the input's voxel grid (so
they overlay the input exactly), the summary and status line, the uncertainty volume, the skull-from-CT
segmentation, the distance model and the attributes saved with the scene.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..inference.detection import BY_CLASS_HEAD, BY_DEFECT_POSITION
from ..inference.regions import COMPLETE
from ..options import DISTANCE_ARRAY, DISTANCE_RANGE_MM
from .nodes import (
    BINARY_LABELMAP,
    InputMask,
    _slicer,
    _vtk,
    arrayToMatrix,
    arrayToOrientedImage,
    describeNode,
    filledOrientedImage,
    matrixToArray,
)

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
    # The completed skull is written straight into its image; the implant is stored as its bounding box only (a γ
    # update then rewrites a small block, not the volume).
    for segmentId, segmentName, color, terminology, image in (
        (SKULL_SEGMENT_ID, SKULL_SEGMENT_NAME, SKULL_COLOR, SKULL_TERMINOLOGY,
         completedImage(result, inputMask.ijkToRas)),
        (IMPLANT_SEGMENT_ID, IMPLANT_SEGMENT_NAME, IMPLANT_COLOR, IMPLANT_TERMINOLOGY,
         croppedImage(result.implant, inputMask.ijkToRas)),
    ):
        segmentation.AddSegment(newSegment(segmentName, color, terminology, image), segmentId)
    return node


def completedImage(result: Any, ijkToRas: np.ndarray) -> Any:
    """The completed skull (input ∪ implant) of ``result`` as a vtkOrientedImageData on the input grid."""
    return filledOrientedImage(result.implant.shape, ijkToRas, result.completed_into)


def croppedImage(array: np.ndarray, ijkToRas: np.ndarray) -> Any:
    """The mask's bounding box as a vtkOrientedImageData whose extent is that box's index range on the full grid."""
    from ..preprocessing.geometry import nonzero_bounds  # noqa: PLC0415  (the engine is loaded by then)

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
    from ..preprocessing.geometry import nonzero_bounds  # noqa: PLC0415

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
        updates.append((SKULL_SEGMENT_ID, completedImage(result, ijkToRas)))
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


SKULL_FROM_CT_SEGMENT_NAME = "Skull"


DISTANCE_COLOR_NODE_NAME = "SkullVAE distance to skull"


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
