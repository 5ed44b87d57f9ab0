"""Volumes: read a skull mask (NRRD or NIfTI) with its geometry and write results on the same grid.

Arrays are (i, j, k) with an IJK→RAS matrix. NRRD files in LPS space are converted to RAS on read and
back on write.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..preprocessing.validation import check_volume_size
from .atomic import _atomic_target

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
