"""Input nodes and images: a segment of a segmentation node, or a labelmap volume node, to the engine's input (a mask
indexed (i, j, k) and its IJK→RAS matrix) without modifying the node; VTK matrices and oriented images to arrays
and back. ``slicer`` and ``vtk`` are imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

BINARY_LABELMAP = "Binary labelmap"


NO_REFERENCE_MARGIN_MM = 30.0  # padding around a segment when its segmentation has no reference geometry


def _slicer() -> Any:
    import slicer  # noqa: PLC0415  (lazy: slicer is heavy and absent in pure-engine installs)

    return slicer


def _vtk() -> Any:
    import vtk  # noqa: PLC0415

    return vtk


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


def filledOrientedImage(shape: tuple[int, ...], ijkToRas: np.ndarray, fill: Callable[[np.ndarray], Any]) -> Any:
    """A uint8 vtkOrientedImageData of ``shape`` (i, j, k) whose voxels ``fill(out)`` writes straight into the image's
    own memory (``out``: an (i, j, k) view of it), so no full-size array is made and copied first."""
    from vtk.util import numpy_support  # noqa: PLC0415

    vtkArray = _vtk().vtkUnsignedCharArray()
    vtkArray.SetName("ImageScalars")
    vtkArray.SetNumberOfTuples(int(np.prod(shape)))
    fill(numpy_support.vtk_to_numpy(vtkArray).reshape(shape[::-1]).T)  # x fastest: VTK's layout is (i, j, k) F-order
    image = _slicer().vtkOrientedImageData()
    image.SetDimensions(*shape)
    image.GetPointData().SetScalars(vtkArray)
    image.SetImageToWorldMatrix(arrayToMatrix(ijkToRas))
    return image


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
    from ..preprocessing.validation import check_volume_size  # noqa: PLC0415

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
