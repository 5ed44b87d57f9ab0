"""Minimal NRRD/NIfTI mask I/O in the engine convention (arrays (i, j, k), 4x4 IJK->RAS).

The engine's `SkullVAECompletionLib.io.read_mask` is preferred for reading (see `training.data`);
this module provides the writer the generator needs and a fallback reader so that the
data side works on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# LPS = diag(-1, -1, 1) . RAS (and the same matrix converts back).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

_SPACE_TO_RAS = {
    "right-anterior-superior": np.diag([1.0, 1.0, 1.0]),
    "ras": np.diag([1.0, 1.0, 1.0]),
    "left-posterior-superior": RAS_TO_LPS,
    "lps": RAS_TO_LPS,
    "left-anterior-superior": np.diag([-1.0, 1.0, 1.0]),
    "las": np.diag([-1.0, 1.0, 1.0]),
}


def affine_from_spacing(spacing: tuple[float, float, float], directions: np.ndarray | None = None,
                        origin: np.ndarray | None = None) -> np.ndarray:
    """IJK->RAS 4x4 from spacing, a 3x3 direction matrix (columns = axis unit vectors in RAS), origin."""
    m = np.eye(4)
    d = np.eye(3) if directions is None else np.asarray(directions, float)
    m[:3, :3] = d * np.asarray(spacing, float)[None, :]
    if origin is not None:
        m[:3, 3] = origin
    return m


def spacing_of(ijk_to_ras: np.ndarray) -> np.ndarray:
    """Voxel spacing (mm) of each index axis."""
    return np.linalg.norm(np.asarray(ijk_to_ras)[:3, :3], axis=0)


def write_mask_nrrd(path: str | Path, mask_ijk: np.ndarray, ijk_to_ras: np.ndarray,
                    compression_level: int = 3) -> Path:
    """Write a binary mask as gzip NRRD (uint8 0/1, LPS space as Slicer writes it)."""
    import nrrd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.asarray(ijk_to_ras, float)
    header = {
        "type": "uint8",
        "dimension": 3,
        "space": "left-posterior-superior",
        # pynrrd: one row per index axis.
        "space directions": (RAS_TO_LPS @ m[:3, :3]).T,
        "space origin": RAS_TO_LPS @ m[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    data = (np.asarray(mask_ijk) > 0).astype(np.uint8)
    nrrd.write(str(path), data, header, index_order="F", compression_level=compression_level)
    _strip_header_comments(path)
    return path


def _strip_header_comments(path: Path) -> None:
    """Drop pynrrd's '# ... generated on <date>' comment lines so identical data give identical bytes."""
    raw = path.read_bytes()
    end = raw.find(b"\n\n")
    if end < 0:
        return
    lines = [ln for ln in raw[:end].split(b"\n") if not ln.startswith(b"#")]
    path.write_bytes(b"\n".join(lines) + raw[end:])


def read_nrrd(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an NRRD volume as ((i, j, k) array, IJK->RAS)."""
    import nrrd

    data, header = nrrd.read(str(path), index_order="F")
    space = str(header.get("space", "left-posterior-superior")).lower()
    to_ras = _SPACE_TO_RAS.get(space)
    if to_ras is None:
        raise ValueError(f"{path}: unsupported NRRD space '{space}'")
    dirs = header.get("space directions")
    if dirs is None:
        dirs = np.diag(header.get("spacings", [1.0, 1.0, 1.0]))
    dirs = np.asarray([d for d in dirs if d is not None and not np.any(np.isnan(np.asarray(d, float)))], float)
    origin = np.asarray(header.get("space origin", [0.0, 0.0, 0.0]), float)
    m = np.eye(4)
    m[:3, :3] = to_ras @ dirs.T
    m[:3, 3] = to_ras @ origin
    return data, m


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume as ((i, j, k) array, IJK->RAS)."""
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj), np.asarray(img.affine, float)


def write_mask_nifti(path: str | Path, mask_ijk: np.ndarray, ijk_to_ras: np.ndarray) -> Path:
    """Write a binary mask as NIfTI (uint8)."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image((np.asarray(mask_ijk) > 0).astype(np.uint8), np.asarray(ijk_to_ras, float)), str(path))
    return path


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read .nrrd/.nhdr/.nii/.nii.gz as ((i, j, k) array, IJK->RAS)."""
    name = str(path).lower()
    if name.endswith((".nrrd", ".nhdr")):
        return read_nrrd(path)
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    raise ValueError(f"{path}: unsupported file type (expected .nrrd, .nii, .nii.gz)")


def read_binary_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a mask file and binarise it (any non-zero voxel is bone) as uint8 (i, j, k)."""
    data, m = read_volume(path)
    return (np.asarray(data) > 0).astype(np.uint8), m
