"""Fetch the one real head CT we may use (Debian `invesalius-examples`, Cranium.inv3) and make a skull mask.

Source: Debian package `invesalius-examples` (GPL-2, (c) CTI Renato Archer), file
`usr/share/doc/invesalius-examples/examples/Cranium.inv3`, an anonymised patient scan "ProMED CT 0051".
`Cranium.inv3` is a gzip tar of an InVesalius 3 project: `main.plist` names the matrix file
(raw little-endian int16 HU indexed (z, y, x), shape (108, 256, 256)) and its spacing listed as (x, y, z)
= (0.957, 0.957, 1.5) mm.

Orientation (checked on rendered slices): z grows superior (vertex at high z), y grows anterior
(face/frontal sinus at high y). x cannot be checked from the image (no L/R marker). The project was made by
InVesalius 3 beta 3, which read DICOM through vtkGDCMImageReader: that reader flips the row axis (DICOM rows
grow posterior -> stored rows grow anterior, as observed) and keeps the column axis, which in a standard
axial DICOM (ImageOrientationPatient 1\\0\\0\\0\\1\\0) grows towards the patient's LEFT. We therefore use
**x -> +L** (RAS direction (-1, 0, 0)), y -> +A, z -> +S. The IJK->RAS matrix then has a negative
determinant (a mirrored index frame), which NRRD/NIfTI/Slicer handle. Consequence: the real fronto-temporal
defect on the low-x side is on the patient's RIGHT. If this assumption is wrong only the L/R label flips;
nothing in the training data depends on it (the population is made symmetric by mirroring anyway).

Output mask arrays are indexed (i, j, k) = (x, y, z); the volume centre is put at RAS (0, 0, 0).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import plistlib
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from SkullVAECompletionLib.imageio.volumes import write_mask
from SkullVAECompletionLib.masks import largest_component  # noqa: F401  (re-exported)
from SkullVAECompletionLib.preprocessing.skull_from_ct import skull_from_ct

log = logging.getLogger(__name__)

PACKAGE = "invesalius-examples"
INV3_MEMBER = "usr/share/doc/invesalius-examples/examples/Cranium.inv3"
BONE_HU = 300


def cache_dir() -> Path:
    """Download cache: $SKULLVAE_CACHE or ~/.cache/skullvae."""
    root = os.environ.get("SKULLVAE_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "skullvae"
    path.mkdir(parents=True, exist_ok=True)
    return path


def download_deb(dest_dir: Path) -> Path:
    """`apt-get download invesalius-examples` in a temp dir, then move the .deb into dest_dir."""
    if shutil.which("apt-get") is None:
        raise RuntimeError("apt-get is not available: pass --deb PATH or --inv3 PATH instead")
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # apt-get download writes into the current directory.
        proc = subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        if proc.returncode != 0 or not debs:
            raise RuntimeError(f"apt-get download {PACKAGE} failed (run `apt-get update` first?):\n{proc.stderr}")
        target = dest_dir / debs[0].name
        shutil.move(str(debs[0]), target)
    log.info("downloaded %s", target)
    return target


def _ar_members(deb: Path) -> dict[str, bytes]:
    """Members of a .deb (an `ar` archive), pure Python so dpkg-deb is not needed."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb} is not a Debian package (ar archive)")
    out, pos = {}, 8
    while pos + 60 <= len(raw):
        head = raw[pos:pos + 60]
        name = head[:16].decode().strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        out[name] = raw[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are 2-byte aligned
    return out


def extract_inv3_from_deb(deb: Path, dest: Path) -> Path:
    """Extract Cranium.inv3 from the .deb into dest (a file path)."""
    members = _ar_members(deb)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if data_name is None:
        raise ValueError(f"{deb}: no data.tar member")
    if data_name.endswith(".zst"):
        raise ValueError(f"{deb}: zstd-compressed data member; extract it with dpkg-deb -x and pass --inv3")
    with tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*") as tar:
        member = next(m for m in tar.getmembers() if m.name.lstrip("./") == INV3_MEMBER)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(tar.extractfile(member).read())
    return dest


def read_inv3(inv3: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read the HU matrix (z, y, x) int16 and spacing (x, y, z) in mm from an InVesalius project."""
    with tarfile.open(inv3, mode="r:gz") as tar:
        names = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        main = plistlib.loads(tar.extractfile(names["main.plist"]).read())
        mat = main["matrix"]
        raw = tar.extractfile(names[Path(mat["filename"]).name]).read()
    shape = tuple(int(s) for s in mat["shape"])
    hu = np.frombuffer(raw, dtype=np.dtype(mat.get("dtype", "int16")).newbyteorder("<")).reshape(shape)
    spacing = tuple(float(s) for s in main["spacing"])
    return hu.astype(np.int16), spacing  # type: ignore[return-value]


def skull_mask_from_hu(hu_zyx: np.ndarray, threshold: int = BONE_HU) -> np.ndarray:
    """Bone = HU >= threshold, largest component (the engine's Skull from CT); uint8 (i, j, k) = (x, y, z)."""
    return skull_from_ct(hu_zyx.transpose(2, 1, 0), threshold, name="Cranium.inv3")


def cranium_ijk_to_ras(shape_ijk: tuple[int, int, int], spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    """IJK->RAS of the Cranium matrix: x -> +L, y -> +A, z -> +S (see module docstring); centre at 0."""
    m = np.eye(4)
    m[:3, :3] = np.diag([-1.0, 1.0, 1.0]) * np.asarray(spacing_xyz, float)[None, :]
    centre = (np.asarray(shape_ijk, float) - 1.0) / 2.0
    m[:3, 3] = -m[:3, :3] @ centre
    return m


def get_inv3(deb: Path | None = None, inv3: Path | None = None, cache: Path | None = None) -> Path:
    """Path of Cranium.inv3: given, cached, or downloaded (cached under the cache dir)."""
    if inv3 is not None:
        return Path(inv3)
    cache = cache or cache_dir()
    cached = cache / "Cranium.inv3"
    if cached.exists():
        return cached
    if deb is None:
        found = sorted(cache.glob(f"{PACKAGE}_*.deb"))
        deb = found[0] if found else download_deb(cache)
    return extract_inv3_from_deb(Path(deb), cached)


def load_cranium_skull(deb: Path | None = None, inv3: Path | None = None,
                       cache: Path | None = None, threshold: int = BONE_HU) -> tuple[np.ndarray, np.ndarray]:
    """The real (defective) Cranium skull mask: (uint8 (i, j, k) array, IJK->RAS 4x4)."""
    hu, spacing = read_inv3(get_inv3(deb, inv3, cache))
    mask = skull_mask_from_hu(hu, threshold)
    return mask, cranium_ijk_to_ras(mask.shape, spacing)


def load_cranium_hu(deb: Path | None = None, inv3: Path | None = None,
                    cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The HU volume as (int16 (i, j, k), IJK->RAS) for figures."""
    hu, spacing = read_inv3(get_inv3(deb, inv3, cache))
    vol = hu.transpose(2, 1, 0)
    return vol, cranium_ijk_to_ras(vol.shape, spacing)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (CraniumSkull.nrrd is written there)")
    p.add_argument("--deb", type=Path, help="use this invesalius-examples .deb instead of apt-get download")
    p.add_argument("--inv3", type=Path, help="use this Cranium.inv3 directly")
    p.add_argument("--threshold", type=int, default=BONE_HU, help="bone threshold in HU")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    mask, m = load_cranium_skull(args.deb, args.inv3, threshold=args.threshold)
    out = write_mask(args.out / "CraniumSkull.nrrd", mask, m, overwrite=True, compression_level=9)
    log.info("wrote %s (%d bone voxels, shape %s)", out, int(mask.sum()), mask.shape)


if __name__ == "__main__":
    main()
