"""Files: read a skull mask (NRRD or NIfTI) with its geometry, write results on the same grid, STL, PNG.

Arrays are (i, j, k) with an IJK→RAS matrix. NRRD files in LPS space are converted to RAS on read and
back on write. Every writer writes to a temporary file first and renames it, so a failure never
leaves a half-written file, and no existing file is replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .masks import nonzero_bounds, skull_centre_voxel
from .options import DISTANCE_RANGE_MM
from .validation import check_volume_size

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NRRD_SUFFIXES = (".seg.nrrd", ".nrrd", ".nhdr")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
SUPPORTED_SUFFIXES = NRRD_SUFFIXES + NIFTI_SUFFIXES
NRRD_GZIP_LEVEL = 3  # 10× faster than pynrrd's default 9 on a 512×512×230 mask; ~1 MB instead of ~0.4 MB


@dataclass
class VolumeMeta:
    """Where a volume came from and what is needed to write another one exactly like it."""

    path: Path
    format: str  # "nrrd" or "nifti"
    ijk_to_ras: np.ndarray
    header: Any = field(repr=False, default=None)

    @property
    def suffix(self) -> str:
        return split_suffix(self.path)[1]

    @property
    def stem(self) -> str:
        return split_suffix(self.path)[0]


def split_suffix(path: str | os.PathLike) -> tuple[str, str]:
    """('case_001', '.nii.gz') for 'dir/case_001.nii.gz'; raises InputError for unsupported files."""
    name = Path(path).name
    for suffix in SUPPORTED_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    raise InputError(f"{path}: unsupported file type; use NRRD (.nrrd, .seg.nrrd) or NIfTI (.nii, .nii.gz)")


def is_volume_file(path: str | os.PathLike) -> bool:
    return Path(path).name.lower().endswith(SUPPORTED_SUFFIXES)


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, VolumeMeta]:
    """Read a volume as an (i, j, k) array, its IJK→RAS matrix and the metadata needed to write alike."""
    path = Path(path)
    _, suffix = split_suffix(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if suffix in NRRD_SUFFIXES:
            array, matrix, header = _read_nrrd(path)
            return array, matrix, VolumeMeta(path, "nrrd", matrix, header)
        array, matrix, header = _read_nifti(path)
        return array, matrix, VolumeMeta(path, "nifti", matrix, header)
    except InputError:
        raise
    except Exception as error:  # the readers raise many types for truncated or garbled files
        raise InputError(
            f"{path}: cannot read the file ({type(error).__name__}: {error}); is it a valid volume?"
        ) from error


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    import nrrd

    # Look at the size before reading the voxels: a too-large volume is refused without allocating it.
    sizes = nrrd.read_header(str(path)).get("sizes")
    if sizes is not None:
        check_volume_size(tuple(int(s) for s in sizes), str(path))
    array, header = nrrd.read(str(path), index_order="F")
    if array.ndim == 4:
        # A Slicer .seg.nrrd with several layers: the segment layers are along the first axis.
        if array.shape[0] != 1:
            raise InputError(
                f"{path}: a segmentation with {array.shape[0]} overlapping layers; export the skull segment "
                "to a labelmap first"
            )
        array = array[0]
        header = _drop_first_axis(header)
    matrix = nrrd_ijk_to_ras(header, array.ndim)
    return array, matrix, header


def _drop_first_axis(header: dict) -> dict:
    header = copy.deepcopy(header)
    directions = np.asarray(header["space directions"], dtype=object)
    header["space directions"] = np.asarray([d for d in directions if d is not None and not _is_nan_row(d)])
    if "kinds" in header:
        header["kinds"] = header["kinds"][1:]
    header["dimension"] = 3
    header.pop("sizes", None)
    return header


def _is_nan_row(row: Any) -> bool:
    return isinstance(row, np.ndarray) and np.all(np.isnan(row.astype(float)))


def nrrd_ijk_to_ras(header: dict, ndim: int = 3) -> np.ndarray:
    if ndim != 3:
        raise InputError(f"a 3D volume is needed; this NRRD has {ndim} dimensions")
    directions = header.get("space directions")
    if directions is None:
        spacing = header.get("spacings", [1.0, 1.0, 1.0])
        directions = np.diag(np.asarray(spacing, dtype=float))
    directions = np.asarray(directions, dtype=float)
    origin = np.asarray(header.get("space origin", [0.0, 0.0, 0.0]), dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = directions.T  # NRRD lists one direction vector per axis
    matrix[:3, 3] = origin
    space = str(header.get("space", "left-posterior-superior")).lower()
    if space in ("left-posterior-superior", "lps"):
        matrix = LPS_TO_RAS @ matrix
    elif space not in ("right-anterior-superior", "ras"):
        raise InputError(f"unsupported NRRD space {space!r}; resave the volume in LPS or RAS")
    return matrix


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    import nibabel

    image = nibabel.load(str(path))  # lazy: the voxels are read below, after the size check
    check_volume_size(image.shape, str(path))
    array = np.asanyarray(image.dataobj)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(f"{path}: a 3D volume is needed; this NIfTI has shape {array.shape}")
    return array, np.asarray(image.affine, dtype=float), image.header


def _exists_message(path: Path) -> str:
    return f"{path} already exists; choose another output folder or allow overwriting"


@contextmanager
def _atomic_target(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Without ``overwrite`` the final name is created exclusively (:func:`claim_exclusive`): of two writers racing for
    one name, one wins and the other gets FileExistsError -- never a file replaced between a check and a rename.
    """
    if path.exists() and not overwrite:
        raise FileExistsError(_exists_message(path))  # fail before the work; the claim below is what guarantees it
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix="".join(path.suffixes), dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp creates 0600 files
        if overwrite:
            os.replace(temporary, path)
        else:
            claim_exclusive(Path(temporary), path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def claim_exclusive(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` only if ``target`` does not exist, atomically (FileExistsError otherwise).

    A hard link is created exclusively by the file system; where links are not supported, an exclusively created
    empty file reserves the name before the rename replaces it.
    """
    try:
        os.link(source, target)
    except FileExistsError:
        raise FileExistsError(_exists_message(target)) from None
    except OSError:  # no hard links here (some network and FAT file systems)
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            raise FileExistsError(_exists_message(target)) from None
        os.replace(source, target)
        return
    source.unlink()


def ensure_writable_folder(folder: str | os.PathLike, role: str, hint: str) -> Path:
    """Create ``folder`` if needed and check it is writable, before any work starts (fail fast, write nothing).

    ``role`` names the folder in the message ("output folder"), ``hint`` says what to do instead.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the {role} {folder}: {error.strerror}; {hint}") from error
    if not os.access(folder, os.W_OK):
        raise InputError(f"the {role} {folder} is not writable; {hint}")
    return folder


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_mask(
    path: str | os.PathLike,
    mask: np.ndarray,
    ijk_to_ras: np.ndarray,
    overwrite: bool = False,
    nifti_header: Any = None,
    compression_level: int | None = None,
) -> Path:
    """Write a 0/1 mask (i, j, k) on the grid ``ijk_to_ras``, as NRRD (LPS, as Slicer writes it) or NIfTI by suffix.

    NRRD bytes depend only on the data (pynrrd's dated comment is dropped), so regenerated files are identical.
    """
    path = Path(path)
    _, suffix = split_suffix(path)
    data = np.asarray(mask, dtype=np.uint8)
    matrix = np.asarray(ijk_to_ras, dtype=float)
    with _atomic_target(path, overwrite) as temporary:
        if suffix in NRRD_SUFFIXES:
            import nrrd

            lps = LPS_TO_RAS @ matrix
            header = {
                "type": "uint8",
                "dimension": 3,
                "space": "left-posterior-superior",
                "space directions": lps[:3, :3].T,
                "space origin": lps[:3, 3],
                "kinds": ["domain", "domain", "domain"],
                "encoding": "gzip",
            }
            nrrd.write(str(temporary), data, header, index_order="F",
                       compression_level=compression_level or NRRD_GZIP_LEVEL)
            _strip_nrrd_comments(temporary)
        else:
            import nibabel

            header = nifti_header.copy() if nifti_header is not None else None
            image = nibabel.Nifti1Image(data, matrix, header=header)
            image.set_data_dtype(np.uint8)
            image.header.set_slope_inter(1, 0)
            nibabel.save(image, str(temporary))
    return path


def _strip_nrrd_comments(path: Path) -> None:
    raw = path.read_bytes()
    end = raw.find(b"\n\n")  # the header ends at the first blank line
    if end > 0:
        header = [line for line in raw[:end].split(b"\n") if not line.startswith(b"#")]
        path.write_bytes(b"\n".join(header) + raw[end:])


def write_like(path: str | os.PathLike, array: np.ndarray, meta: VolumeMeta, overwrite: bool = False) -> Path:
    """Write ``array`` (i, j, k) on the grid of the volume ``meta`` describes, in the same format."""
    return write_mask(path, array, meta.ijk_to_ras, overwrite, meta.header if meta.format == "nifti" else None)


def mask_to_surface(mask: np.ndarray, ijk_to_ras: np.ndarray, smoothing_iterations: int = 20,
                    field: list[tuple[np.ndarray, np.ndarray]] | None = None):
    """Closed triangle surface (vtkPolyData, RAS mm) of a binary mask, smoothed without shrinking.

    ``field``: [(block, lo corner)] of signed fields that are > 0 exactly on the mask's voxels inside each block (the
    rim-conforming stage's, :class:`~.rim.RimFit`): the surface is then their zero level set, sub-voxel and
    unsmoothed, so the STL follows the same surfaces the voxels were cut from.
    """
    from vtkmodules.vtkFiltersCore import vtkAppendPolyData, vtkPolyDataNormals

    if nonzero_bounds(mask) is None:
        raise InputError("the implant is empty; there is no surface to export")
    if field:
        # Pad with "outside" so each surface closes at its block's border.
        parts = [_block_surface(np.pad(np.asarray(block, np.float32), 1, constant_values=-1.0), lo, ijk_to_ras, None)
                 for block, lo in field]
    else:
        bounds = nonzero_bounds(mask)
        lo = np.maximum(bounds[0] - 2, 0)
        hi = np.minimum(bounds[1] + 2, mask.shape)
        # Pad by one voxel so the surface closes at the crop border.
        block = np.pad(np.asarray(mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.uint8), 1)
        parts = [_block_surface(block, lo, ijk_to_ras, smoothing_iterations)]
    append = vtkAppendPolyData()
    for part in parts:
        append.AddInputData(part)
    normals = vtkPolyDataNormals()  # consistent outward normals even when the matrix flips axes
    normals.SetInputConnection(append.GetOutputPort())
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOn()
    normals.SplittingOff()
    normals.Update()
    return normals.GetOutput()


def _block_surface(block: np.ndarray, lo: np.ndarray, ijk_to_ras: np.ndarray, smoothing_iterations: int | None):
    """Surface of a padded block in RAS: a 0/1 mask smoothed (``smoothing_iterations``), or a float field's 0 level."""
    # The VTK modules this needs, not the `vtk` umbrella package: that import alone costs ~0.5 s per CLI call.
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkCommonMath import vtkMatrix4x4
    from vtkmodules.vtkCommonTransforms import vtkTransform
    from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D, vtkWindowedSincPolyDataFilter
    from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D, vtkTransformPolyDataFilter

    image = vtkImageData()
    image.SetDimensions(*block.shape)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(block.ravel(order="F"), deep=True))
    if smoothing_iterations is None:
        surface = vtkFlyingEdges3D()
        surface.SetValue(0, 0.0)
        last = surface
    else:
        surface = vtkDiscreteFlyingEdges3D()
        surface.SetValue(0, 1)
        last = vtkWindowedSincPolyDataFilter()
        last.SetInputConnection(surface.GetOutputPort())
        last.SetNumberOfIterations(smoothing_iterations)
        last.SetPassBand(0.1)
        last.NormalizeCoordinatesOn()
        last.BoundarySmoothingOff()
    surface.SetInputData(image)
    # Block index → input index (undo crop and pad) → RAS.
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(lo) - 1
    matrix = vtkMatrix4x4()
    for row, values in enumerate(np.asarray(ijk_to_ras, dtype=float) @ shift):
        for column, value in enumerate(values):
            matrix.SetElement(row, column, value)
    transform = vtkTransform()
    transform.SetMatrix(matrix)
    to_ras = vtkTransformPolyDataFilter()
    to_ras.SetInputConnection(last.GetOutputPort())
    to_ras.SetTransform(transform)
    to_ras.Update()
    return to_ras.GetOutput()


DECIMATION_TOLERANCE_MM = 0.2  # a decimated surface stays this close (two-way Hausdorff) to the full one


@dataclass
class Decimation:
    """A decimated surface and how far it is from the full one."""

    surface: Any  # vtkPolyData
    triangles_before: int
    triangles: int
    hausdorff_mm: float


def surface_topology(surface: Any) -> dict[str, int]:
    """Triangles, boundary edges and non-manifold edges (both 0: a closed, manifold, watertight surface)."""
    from vtkmodules.vtkFiltersCore import vtkFeatureEdges

    counts = {"triangles": int(surface.GetNumberOfPolys())}
    for key, boundary in (("boundary_edges", True), ("non_manifold_edges", False)):
        edges = vtkFeatureEdges()
        edges.SetInputData(surface)
        edges.FeatureEdgesOff()
        edges.ManifoldEdgesOff()
        edges.SetBoundaryEdges(boundary)
        edges.SetNonManifoldEdges(not boundary)
        edges.Update()
        counts[key] = int(edges.GetOutput().GetNumberOfCells())
    return counts


def self_intersections(surface: Any, limit: int = 10) -> int:
    """Number of mesh edges that pierce a triangle they do not belong to (stops counting at ``limit``)."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkIdList, vtkPoints
    from vtkmodules.vtkFiltersCore import vtkExtractEdges
    from vtkmodules.vtkFiltersGeneral import vtkOBBTree

    points = numpy_support.vtk_to_numpy(surface.GetPoints().GetData()).astype(float)
    triangles = numpy_support.vtk_to_numpy(surface.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    extractor = vtkExtractEdges()
    extractor.SetInputData(surface)
    extractor.UseAllPointsOn()  # keep the point ids of the surface
    extractor.Update()
    edges = numpy_support.vtk_to_numpy(extractor.GetOutput().GetLines().GetConnectivityArray()).reshape(-1, 2)
    tree = vtkOBBTree()
    tree.SetDataSet(surface)
    tree.SetTolerance(1e-9)
    tree.BuildLocator()
    hits, cells, found = vtkPoints(), vtkIdList(), 0
    for a, b in edges:
        # Shorten the edge a little: touching its own neighbours at its end points is not an intersection.
        p, q = points[a], points[b]
        inset = 1e-4 * (q - p)
        if tree.IntersectWithLine(p + inset, q - inset, hits, cells) == 0:
            continue
        for index in range(cells.GetNumberOfIds()):
            if a not in triangles[cells.GetId(index)] and b not in triangles[cells.GetId(index)]:
                found += 1
                break
        if found >= limit:
            break
    return found


def hausdorff_mm(a: Any, b: Any) -> float:
    """Two-way Hausdorff distance between two surfaces: every vertex of each to the nearest triangle of the other."""
    from vtkmodules.vtkFiltersModeling import vtkHausdorffDistancePointSetFilter

    measure = vtkHausdorffDistancePointSetFilter()
    measure.SetInputData(0, a)
    measure.SetInputData(1, b)
    measure.SetTargetDistanceMethodToPointToCell()
    measure.Update()
    return float(measure.GetOutput(0).GetFieldData().GetArray("HausdorffDistance").GetValue(0))


def decimate_surface(
    surface: Any, max_triangles: int, tolerance_mm: float = DECIMATION_TOLERANCE_MM, attempts: int = 6
) -> Decimation:
    """At most ``max_triangles`` triangles (vtkQuadricDecimation) where that keeps the surface within tolerance.

    A decimation that leaves the tolerance, or opens or pinches the surface, is redone with more triangles;
    if none works the full surface is kept (its triangle count then exceeds ``max_triangles``: say so).
    """
    from vtkmodules.vtkFiltersCore import vtkPolyDataNormals, vtkQuadricDecimation

    before = int(surface.GetNumberOfPolys())
    target = int(max_triangles)
    if target < 4:
        raise ValueError(f"max_triangles must be at least 4, got {max_triangles}")
    for _ in range(attempts):
        if before <= target:
            break
        decimate = vtkQuadricDecimation()
        decimate.SetInputData(surface)
        decimate.SetTargetReduction(1.0 - target / before)
        decimate.VolumePreservationOn()
        normals = vtkPolyDataNormals()  # fresh normals for the coarser triangles (STL facets, rendering)
        normals.SetInputConnection(decimate.GetOutputPort())
        normals.ConsistencyOn()
        normals.AutoOrientNormalsOn()
        normals.SplittingOff()
        normals.Update()
        result = normals.GetOutput()
        topology = surface_topology(result)
        if topology["boundary_edges"] == 0 and topology["non_manifold_edges"] == 0:
            distance = hausdorff_mm(surface, result)
            if distance <= tolerance_mm:
                return Decimation(result, before, topology["triangles"], distance)
        target = int(target * 1.5)  # too coarse for the tolerance: keep more triangles
    return Decimation(surface, before, before, 0.0)


def write_stl(
    path: str | os.PathLike,
    mask: np.ndarray,
    ijk_to_ras: np.ndarray,
    coordinate_system: str = "LPS",
    overwrite: bool = False,
    max_triangles: int | None = None,
    field: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """Binary STL of the mask's surface in mm; LPS by default, as Slicer writes STL files.

    The surface is closed and manifold; ``max_triangles`` decimates it while it stays within
    :data:`DECIMATION_TOLERANCE_MM` of the full surface (see :func:`decimate_surface`). ``field``: the implant's
    signed fields, see :func:`mask_to_surface`.
    """
    from vtkmodules.vtkIOGeometry import vtkSTLWriter

    if coordinate_system not in ("LPS", "RAS"):
        raise ValueError("coordinate_system must be 'LPS' or 'RAS'")
    matrix = np.asarray(ijk_to_ras, dtype=float)
    if coordinate_system == "LPS":
        matrix = LPS_TO_RAS @ matrix
    surface = mask_to_surface(mask, matrix, field=field)
    if max_triangles:
        surface = decimate_surface(surface, max_triangles).surface
    path = Path(path)
    with _atomic_target(path, overwrite) as temporary:
        writer = vtkSTLWriter()
        writer.SetFileName(str(temporary))
        writer.SetInputData(surface)
        writer.SetFileTypeToBinary()
        writer.SetHeader(f"SkullVAE implant, {coordinate_system} mm")
        if not writer.Write():
            raise OSError(f"VTK could not write {path}")
    return path


def _canonical_views(volume: np.ndarray, ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip axes to the closest RAS orientation (for pictures only) and return the spacing."""
    import nibabel.orientations as orientations

    ornt = orientations.io_orientation(ijk_to_ras)
    canonical = orientations.apply_orientation(volume, ornt)
    spacing = np.linalg.norm(np.asarray(ijk_to_ras)[:3, :3], axis=0)[ornt[:, 0].astype(int).argsort()]
    return canonical, spacing


PREVIEW_HEIGHT = 360  # pixels of each view; widths follow the physical aspect


def write_preview_png(
    path: str | os.PathLike,
    skull: np.ndarray,
    implant: np.ndarray,
    ijk_to_ras: np.ndarray,
    title: str = "",
    overwrite: bool = False,
) -> Path:
    """Three orthogonal projections (front, side, top) of the skull in grey and the implant in red.

    Drawn with Pillow (imported in ~0.05 s, where matplotlib costs ~0.4 s per CLI call).
    """
    from PIL import Image, ImageDraw

    skull_c, spacing = _canonical_views(np.asarray(skull, dtype=bool), ijk_to_ras)
    implant_c, _ = _canonical_views(np.asarray(implant, dtype=bool), ijk_to_ras)
    views = [("front (coronal)", 1, (0, 2)), ("left side (sagittal)", 0, (1, 2)), ("top (axial)", 2, (0, 1))]
    panels = []
    for name, projection_axis, (horizontal, vertical) in views:
        depth = skull_c.mean(axis=projection_axis, dtype=np.float32)  # shaded projection: thick bone is brighter
        shown_implant = implant_c.any(axis=projection_axis)
        rgb = np.repeat((depth / max(float(depth.max()), 1e-6))[..., None], 3, axis=-1) * 0.85
        rgb[shown_implant] = 0.4 * rgb[shown_implant] + 0.6 * np.array([1.0, 0.15, 0.1], np.float32)
        if projection_axis in (0, 1):  # seen from the left: anterior to the left; from the front: right to the left
            rgb = rgb[::-1]
        # (horizontal, vertical) → image rows top-down: superior (or anterior) at the top.
        picture = Image.fromarray((np.transpose(rgb, (1, 0, 2))[::-1] * 255).astype(np.uint8))
        width_mm = skull_c.shape[horizontal] * spacing[horizontal]
        height_mm = skull_c.shape[vertical] * spacing[vertical]
        size = (max(1, round(PREVIEW_HEIGHT * width_mm / height_mm)), PREVIEW_HEIGHT)
        panels.append((name, picture.resize(size, Image.Resampling.BILINEAR)))
    margin, caption = 12, 22
    top = caption + (caption if title else 0)
    canvas = Image.new(
        "RGB", (sum(p.width for _, p in panels) + margin * (len(panels) + 1), PREVIEW_HEIGHT + top + margin), "white"
    )
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((margin, 4), title, fill="black")
    x = margin
    for name, picture in panels:
        draw.text((x, top - caption + 4), name, fill="black")
        canvas.paste(picture, (x, top))
        x += picture.width + margin
    path = Path(path)
    with _atomic_target(path, overwrite) as temporary:
        canvas.save(temporary, format="PNG")
    return path


def output_stem(path: str | os.PathLike, others: Iterable[str | os.PathLike] = ()) -> str:
    """The name an input's outputs start with: NAME for NAME.nrrd, or NAME_nrrd (NAME_nii_gz, NAME_seg_nrrd...) when
    another volume file shares NAME -- in the input's own folder or among ``others`` (the run's other inputs).

    It depends only on the input's name and its neighbours, not on which runs came first: ``skull.nrrd`` and
    ``skull.nii.gz`` side by side get ``skull_nrrd_*`` and ``skull_nii_gz_*`` whether completed together or apart.
    """
    path = Path(path)
    stem, suffix = split_suffix(path)
    candidates = list(others)
    if path.parent.is_dir():
        candidates += [p for p in path.parent.iterdir() if is_volume_file(p)]
    shared = any(split_suffix(other)[0] == stem and Path(other).name != path.name for other in candidates)
    return f"{stem}_{suffix[1:].replace('.', '_')}" if shared else stem


def output_paths(meta: VolumeMeta, output_dir: Path, stem: str | None = None) -> dict[str, Path]:
    """The files the CLI writes for one input, named after it (``stem``: see :func:`output_stem`; default: NAME)."""
    stem, suffix = stem or meta.stem, (".nrrd" if meta.format == "nrrd" else meta.suffix)
    return {
        "completed": output_dir / f"{stem}_completed{suffix}",
        "implant": output_dir / f"{stem}_implant{suffix}",
        "stl": output_dir / f"{stem}_implant.stl",
        "preview": output_dir / f"{stem}_preview.png",
        "render": output_dir / f"{stem}_render.png",
        "skull": output_dir / f"{stem}_skull{suffix}",  # the skull extracted from a CT (--from-ct)
        "distance": output_dir / f"{stem}_distance.png",
        "summary": output_dir / f"{stem}_summary.json",
    }


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (POSIX ``flock`` on the folder itself: no lock file is left behind) so
    that two processes publishing into it take turns. Without ``fcntl`` (Windows) the exclusive claims of
    :func:`claim_exclusive` still keep one input's files from replacing another's."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    handle = os.open(folder, os.O_RDONLY) if fcntl is not None else None
    try:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        if handle is not None:
            os.close(handle)  # closing releases the lock


def recorded_input(summary_path: Path) -> str | None:
    """The input an existing NAME_summary.json was written for (None: no summary, or not readable)."""
    import json

    try:
        return str(json.loads(summary_path.read_text(encoding="utf-8"))["input"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def same_input(recorded: str, path: Path) -> bool:
    """Whether a summary's ``input`` names ``path``: the same file name, and the same file where both resolve."""
    other = Path(recorded)
    if other.name != path.name:
        return False
    if other.is_absolute() and path.is_absolute():
        return other.resolve() == path.resolve()
    return True  # a relative path recorded from another working folder: the name is what can be compared


def check_targets(targets: dict[str, Path], source: Path, overwrite: bool) -> None:
    """SkullVAEError unless ``source`` may write ``targets``: none exists, or (``overwrite``) those that exist are
    ``source``'s own (its NAME_summary.json names it, or there is none)."""
    from .errors import SkullVAEError

    existing = [target for target in targets.values() if target.exists()]
    if existing and not overwrite:
        raise SkullVAEError(f"outputs exist already: {', '.join(str(p) for p in existing)}; pass --overwrite to "
                            "replace them")
    owner = recorded_input(targets["summary"]) if "summary" in targets else None
    if existing and owner is not None and not same_input(owner, source):
        folder = existing[0].parent
        raise SkullVAEError(f"{', '.join(p.name for p in existing)} in {folder} belong to another input ({owner}); "
                            "--overwrite replaces only this input's own outputs: choose another output folder")


def publish_outputs(staged: dict[str, Path], targets: dict[str, Path], source: Path, overwrite: bool,
                    own: Iterable[Path] = ()) -> dict[str, Path]:
    """Give the files written to a staging folder (``staged[key]``) their final names (``targets[key]``), as one
    step under the output folder's lock; returns the final paths.

    Without ``overwrite`` nothing is published if any target exists, and every name is claimed exclusively; with it,
    only ``source``'s own outputs are replaced (see :func:`check_targets`), and its own earlier outputs that this
    run did not write again (``targets`` and ``own``: every name of this input, e.g. the STL of a now empty implant)
    are removed, so the set on disk is always one run's.
    """
    folder = next(iter(targets.values())).parent
    with folder_lock(folder):
        check_targets(targets, source, overwrite)
        placed: list[Path] = []
        try:
            for key, staged_path in staged.items():
                if overwrite:
                    os.replace(staged_path, targets[key])
                else:
                    claim_exclusive(staged_path, targets[key])
                placed.append(targets[key])
        except BaseException:
            if not overwrite:  # the names this run claimed were free before: free them again
                for path in placed:
                    path.unlink(missing_ok=True)
            raise
        if overwrite:
            published = {targets[key] for key in staged}
            for stale in {*targets.values(), *own} - published:
                stale.unlink(missing_ok=True)  # this input's own earlier output (ownership checked above)
    return {key: targets[key] for key in staged}


@contextmanager
def staging_folder(output_dir: Path) -> Iterator[Path]:
    """A hidden temporary folder inside ``output_dir`` (same file system: the final moves are renames), removed on
    exit with whatever is left in it."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix=".skullvae-staging-", dir=output_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_json(path: str | os.PathLike, data: dict, overwrite: bool = False) -> Path:
    """A JSON file (UTF-8, indented), written atomically like every other output."""
    import json

    path = Path(path)
    with _atomic_target(path, overwrite) as temporary:
        temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_render_png(
    path: str | os.PathLike,
    skull: np.ndarray,
    implant: np.ndarray,
    ijk_to_ras: np.ndarray,
    size: tuple[int, int] = (900, 700),
    overwrite: bool = False,
) -> Path:
    """Offscreen VTK render of the skull (bone) and the implant (red), seen from the front-right, above."""
    actors = []
    for mask, colour, smoothing in ((skull, BONE_COLOUR, 10), (implant, (0.85, 0.15, 0.1), 20)):
        if np.any(mask):
            actors.append(_surface_actor(mask_to_surface(mask, ijk_to_ras, smoothing_iterations=smoothing), colour))
    return _render_png(path, actors, (1.0, 1.6, 0.7), size, overwrite)


BONE_COLOUR = (0.93, 0.88, 0.78)


def write_distance_png(
    path: str | os.PathLike,
    skull: np.ndarray,
    implant_surface: Any,
    ijk_to_ras: np.ndarray,
    title: str = "to skull (mm)",
    size: tuple[int, int] = (900, 700),
    overwrite: bool = False,
) -> Path:
    """Offscreen render of the implant surface coloured by its active point scalars (distance to the skull, mm),
    over the skull in bone colour, seen from outside along the implant's direction from the skull's centre."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkLookupTable
    from vtkmodules.vtkRenderingAnnotation import vtkScalarBarActor

    table = vtkLookupTable()
    table.SetHueRange(0.667, 0.0)  # blue → red
    table.SetTableRange(*DISTANCE_RANGE_MM)
    table.Build()
    implant_actor = _surface_actor(implant_surface, None, table)
    actors = [implant_actor]
    if np.any(skull):
        actors.insert(0, _surface_actor(mask_to_surface(skull, ijk_to_ras, smoothing_iterations=10), BONE_COLOUR))
    bar = vtkScalarBarActor()
    bar.SetLookupTable(table)
    bar.SetTitle(title)
    bar.SetNumberOfLabels(5)
    bar.SetLabelFormat("%.1f")
    bar.SetMaximumWidthInPixels(90)
    bar.UnconstrainedFontSizeOn()
    for text, points in ((bar.GetTitleTextProperty(), 16), (bar.GetLabelTextProperty(), 14)):
        text.SetColor(0.1, 0.1, 0.1)
        text.SetFontSize(points)
        text.ShadowOff()
        text.ItalicOff()
    points = numpy_support.vtk_to_numpy(implant_surface.GetPoints().GetData())
    matrix = np.asarray(ijk_to_ras, dtype=float)
    # the skull's centre (seen from the front when there is no skull)
    skull_centre = (skull_centre_voxel(skull, step=4) @ matrix[:3, :3].T + matrix[:3, 3] if np.any(skull)
                    else points.mean(axis=0) + np.array([0.0, 1.0, 0.0]))
    view = points.mean(axis=0) - skull_centre  # look at the implant from outside the head
    view = view + np.array([0.0, 0.0, 0.3 * np.linalg.norm(view)])  # …a little from above
    return _render_png(path, actors, tuple(view), size, overwrite, focus=implant_actor, overlays=[bar], zoom=0.75)


def _surface_actor(surface: Any, colour: tuple[float, float, float] | None, lookup_table: Any = None) -> Any:
    """An actor for a surface: plain ``colour``, or coloured by its active scalars through ``lookup_table``."""
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (before any mapper: it registers the OpenGL overrides)
    from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper

    mapper = vtkPolyDataMapper()
    mapper.SetInputData(surface)
    if lookup_table is None:
        mapper.ScalarVisibilityOff()
    else:
        mapper.ScalarVisibilityOn()
        mapper.SetLookupTable(lookup_table)
        mapper.UseLookupTableScalarRangeOn()
    actor = vtkActor()
    actor.SetMapper(mapper)
    if colour is not None:
        actor.GetProperty().SetColor(*colour)
    actor.GetProperty().SetSpecular(0.2)
    return actor


def _render_png(
    path: str | os.PathLike,
    actors: list,
    view_from: tuple[float, float, float],
    size: tuple[int, int],
    overwrite: bool,
    focus: Any = None,
    overlays: list | None = None,
    zoom: float = 1.3,
) -> Path:
    """Render actors offscreen (camera on the ``view_from`` side, superior up) into a PNG written atomically."""
    import vtkmodules.vtkInteractionStyle  # noqa: F401  (registers the default render window factories)
    import vtkmodules.vtkRenderingFreeType  # noqa: F401  (text of the scalar bar)
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401
    from vtkmodules.vtkIOImage import vtkPNGWriter
    from vtkmodules.vtkRenderingCore import vtkRenderer, vtkRenderWindow, vtkWindowToImageFilter

    renderer = vtkRenderer()
    renderer.SetBackground(1.0, 1.0, 1.0)
    for actor in actors:
        renderer.AddActor(actor)
    for overlay in overlays or []:
        renderer.AddViewProp(overlay)
    camera = renderer.GetActiveCamera()
    direction = np.asarray(view_from, dtype=float) / max(float(np.linalg.norm(view_from)), 1e-9)
    camera.SetViewUp(*((0, 1, 0) if abs(direction[2]) > 0.95 else (0, 0, 1)))  # superior up, unless seen from above
    camera.SetPosition(*direction)  # RAS: direction from the focal point
    camera.SetFocalPoint(0, 0, 0)
    if focus is not None:
        renderer.ResetCamera(focus.GetBounds())
    else:
        renderer.ResetCamera()
    camera.Zoom(zoom)
    window = vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    window.Render()
    grabber = vtkWindowToImageFilter()
    grabber.SetInput(window)
    grabber.Update()
    path = Path(path)
    with _atomic_target(path, overwrite) as temporary:
        writer = vtkPNGWriter()
        writer.SetFileName(str(temporary))
        writer.SetInputConnection(grabber.GetOutputPort())
        writer.Write()
    window.Finalize()
    return path
