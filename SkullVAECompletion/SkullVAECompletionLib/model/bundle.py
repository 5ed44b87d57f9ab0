"""Model bundle: a folder with ``manifest.json`` and safetensors weights, checked on load.

The manifest carries everything completion needs besides the weights: network config, model grid
and placement policy, class names, latent centroids, DEV vectors, default γ per defect type,
the completion method, training provenance and evaluation figures, and the sha256 of every file.
Weights are read with safetensors, never with pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import BundleError
from ..options import DECODER_METHODS, EXTRACTION_CHOICES, LEGACY_DEFECT_CLASSES
from ..preprocessing.geometry import GridSpec
from .networks import AggregatedVAE, NetworkConfig

FORMAT_NAME = "skullvae-bundle"
# 2: region defect classes ("defect_classes"), an optional class head in the network, config hash and data
# description at the top level. Version-1 bundles (classes "cranial" / "facial") still load.
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.safetensors"
LATENTS_NAME = "latents.safetensors"  # optional: paired training latents for the k-NN DEV option
PAIRED_LATENT_KEYS = ("defective", "delta", "type_index")  # type_index: position in ModelBundle.defect_classes
DEFAULT_MODEL_NAME = "skullvae-cranium-population"

REQUIRED_KEYS = {
    "format": str,
    "format_version": int,
    "model_id": str,
    "version": str,
    "network": dict,
    "geometry": dict,
    "class_names": list,
    "centroids": dict,
    "dev": dict,
    "default_gamma": dict,
    "completion": dict,
    "training": dict,
    "evaluation": dict,
    "files": dict,
}


@dataclass
class ModelBundle:
    """A loaded, verified model bundle."""

    folder: Path
    manifest: dict[str, Any]
    model: AggregatedVAE
    paired_latents: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def defect_classes(self) -> list[str]:
        """The classes a latent shift completes (each has a DEV), in the order of the k-NN table's type_index."""
        return list(self.manifest.get("defect_classes") or [c for c in LEGACY_DEFECT_CLASSES if c in self.dev])

    @property
    def centroids(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.float32) for k, v in self.manifest["centroids"].items()}

    @property
    def dev(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.float32) for k, v in self.manifest["dev"].items()}

    @property
    def default_gamma(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.manifest["default_gamma"].items()}

    @property
    def grid(self) -> GridSpec:
        return GridSpec.from_dict(self.manifest["geometry"])

    @property
    def completion_options(self) -> dict[str, Any]:
        return dict(self.manifest["completion"])


def resources_dir() -> Path:
    """The extension's ``Resources`` folder, in a Slicer install, a source checkout or a wheel."""
    here = Path(__file__).resolve().parent.parent  # the SkullVAECompletionLib package (this file is in model/)
    candidates = []
    if os.environ.get("SKULLVAE_RESOURCES"):
        candidates.append(Path(os.environ["SKULLVAE_RESOURCES"]))
    candidates += [
        here.parent / "Resources",  # Slicer: qt-scripted-modules/{SkullVAECompletionLib,Resources}
        here.parent.parent / "Resources",  # source checkout and editable installs
        here / "resources",  # wheel: pyproject maps Resources/ to SkullVAECompletionLib/resources
    ]
    for candidate in candidates:
        if (candidate / "Models").is_dir() or (candidate / "SampleData").is_dir():
            return candidate
    raise BundleError(
        "cannot find the extension's Resources folder (looked in: "
        + ", ".join(str(c) for c in candidates)
        + "); set SKULLVAE_RESOURCES to it or pass a model folder explicitly"
    )


def default_bundle_dir() -> Path:
    folder = resources_dir() / "Models" / DEFAULT_MODEL_NAME
    if not folder.is_dir():
        raise BundleError(
            f"the bundled model is missing ({folder}); reinstall the extension or pass a model folder explicitly"
        )
    return folder


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check a bundle's manifest (schema, format, version, consistency of the vectors)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{folder} is not a SkullVAE model bundle: {MANIFEST_NAME} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: cannot read the manifest ({error}); the bundle is corrupt") from error
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: the manifest must be a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{path}: not a SkullVAE bundle manifest (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version} is newer than this engine supports ({FORMAT_VERSION}); "
            "update the SkullVAE Completion extension to use this model"
        )
    problems = [
        f"'{key}' missing" if key not in manifest else f"'{key}' should be {kind.__name__}"
        for key, kind in REQUIRED_KEYS.items()
        if not isinstance(manifest.get(key), kind)
    ]
    if problems:
        raise BundleError(f"{path}: invalid manifest: {'; '.join(problems)}")
    if version < 1:
        raise BundleError(f"{path}: invalid format_version {version}")
    _check_vectors(manifest, path)
    return manifest


def _check_vectors(manifest: dict[str, Any], path: Path) -> None:
    latent = NetworkConfig.from_dict(manifest["network"]).latent_size
    GridSpec.from_dict(manifest["geometry"])
    heads = int(manifest["network"].get("num_classes", 0))
    # Detection by centroids needs one per class; with a class head, the classes a shift starts from or ends at.
    needed = [*manifest["dev"], "complete"] if heads else manifest["class_names"]
    for name in needed:
        if name not in manifest["centroids"]:
            raise BundleError(f"{path}: no latent centroid for class '{name}'")
    for group in ("centroids", "dev"):
        for name, vector in manifest[group].items():
            if not isinstance(vector, list) or len(vector) != latent:
                raise BundleError(f"{path}: {group}['{name}'] must be a list of {latent} numbers")
    for defect in manifest["dev"]:
        if defect not in manifest["default_gamma"]:
            raise BundleError(f"{path}: no default gamma for defect type '{defect}'")
    for defect in manifest.get("defect_classes", []):
        if defect not in manifest["dev"]:
            raise BundleError(f"{path}: defect class '{defect}' has no DEV vector")
    if heads and heads != len(manifest["class_names"]):
        raise BundleError(f"{path}: the class head has {heads} outputs but the manifest names "
                          f"{len(manifest['class_names'])} classes")
    method = manifest["completion"].get("method", "dev")
    if method not in DECODER_METHODS:
        raise BundleError(f"{path}: unknown completion method '{method}' (known: {', '.join(DECODER_METHODS)})")
    for defect, threshold in manifest["completion"].get("decode_threshold", {}).items():
        if not isinstance(threshold, int | float) or not 0.0 < threshold < 1.0:
            raise BundleError(f"{path}: completion decode_threshold['{defect}'] must be a probability between 0 and "
                              f"1, got {threshold!r}")
    for defect, extraction in manifest["completion"].get("extraction_by_class", {}).items():
        if extraction not in EXTRACTION_CHOICES:
            raise BundleError(f"{path}: completion extraction_by_class['{defect}'] is {extraction!r}; known: "
                              f"{', '.join(EXTRACTION_CHOICES)}")
    if WEIGHTS_NAME not in manifest["files"]:
        raise BundleError(f"{path}: the manifest lists no {WEIGHTS_NAME} checksum")


def load_bundle(folder: str | os.PathLike | None = None) -> ModelBundle:
    """Load and verify a bundle (``None``: the bundled default model). Raises :class:`BundleError`."""
    folder = Path(folder) if folder is not None else default_bundle_dir()
    if not folder.is_dir():
        raise BundleError(f"model bundle folder {folder} does not exist")
    manifest = read_manifest(folder)
    for name, expected in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            raise BundleError(f"{folder}: {name} is missing from the bundle")
        actual = sha256_of(file)
        if actual != expected:
            raise BundleError(
                f"{file}: checksum mismatch (sha256 {actual[:12]}…, manifest says {str(expected)[:12]}…); "
                "the file is corrupt or was replaced — reinstall the extension or re-export the bundle"
            )
    model = AggregatedVAE(NetworkConfig.from_dict(manifest["network"]))
    state = _load_tensors(folder / WEIGHTS_NAME)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise BundleError(
            f"{folder / WEIGHTS_NAME}: weights do not match the network in the manifest: {_first_line(error)}"
        ) from error
    model.eval()
    latents = {}
    if LATENTS_NAME in manifest["files"]:
        latents = {k: v.numpy() for k, v in _load_tensors(folder / LATENTS_NAME).items()}
        missing = [k for k in PAIRED_LATENT_KEYS if k not in latents]
        if missing:
            raise BundleError(f"{folder / LATENTS_NAME}: missing tables {missing}")
    return ModelBundle(folder=folder, manifest=manifest, model=model, paired_latents=latents)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise BundleError(f"{path}: cannot read the weights ({_first_line(error)}); the file is corrupt") from error


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _make_readable(folder: Path) -> None:
    """mkdtemp makes private (0700) folders: give the bundle the usual permissions for the user's umask."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for file in folder.iterdir():
        file.chmod(0o666 & ~umask)


def save_bundle(
    folder: str | os.PathLike,
    model: AggregatedVAE,
    manifest: dict[str, Any],
    paired_latents: dict[str, np.ndarray] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle atomically: weights, optional latents, and the manifest with their checksums.

    ``manifest`` holds every key of :data:`REQUIRED_KEYS` except ``format``, ``format_version``,
    ``network`` and ``files``, which are filled in here.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise BundleError(f"{folder} already exists; choose another folder or pass overwrite=True")
    manifest = dict(manifest)
    manifest.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, network=model.config.to_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=folder.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_NAME))
        files = {WEIGHTS_NAME: sha256_of(staging / WEIGHTS_NAME)}
        if paired_latents:
            tensors = {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in paired_latents.items()}
            save_file(tensors, str(staging / LATENTS_NAME))
            files[LATENTS_NAME] = sha256_of(staging / LATENTS_NAME)
        manifest["files"] = files
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        read_manifest(staging)  # refuse to publish a bundle that would not load
        _make_readable(staging)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
