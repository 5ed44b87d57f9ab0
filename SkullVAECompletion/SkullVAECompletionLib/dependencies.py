"""Python packages the engine needs inside 3D Slicer, and installing them on first use.

Called from the module's Apply (never at import). Torch is installed through the PyTorch extension's
``PyTorchUtils`` logic, which picks the wheel matching the computer's CUDA driver; the other packages through
``slicer.packaging.pip_ensure`` (Slicer >= 5.12) or ``slicer.util.pip_install``. Packages Slicer itself ships
and depends on (numpy, SimpleITK, requests, ...) are pinned with a constraints file so that pip never replaces
them. Nothing is installed when Slicer runs in testing mode.

``slicer`` is imported lazily: this file can be imported (and :func:`missingPackages` used) anywhere.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass

logger = logging.getLogger(__name__)

TORCH_REQUIREMENT = ">=2.2"


@dataclass(frozen=True)
class Package:
    importName: str  # what ``import`` needs
    requirement: str  # what pip installs


# The engine's runtime imports (networks: torch + monai; bundle: safetensors; geometry: scipy).
REQUIRED_PACKAGES = (
    Package("torch", f"torch{TORCH_REQUIREMENT}"),
    Package("monai", "monai>=1.3"),
    Package("safetensors", "safetensors>=0.4"),
    Package("scipy", "scipy>=1.10"),
)
# Skull from CT and the volume checks need no torch (geometry imports it only where tensors are made).
SKULL_FROM_CT_PACKAGES = tuple(p for p in REQUIRED_PACKAGES if p.importName == "scipy")

# Slicer's own packages: never let pip upgrade or downgrade them.
PROTECTED_DISTRIBUTIONS = ("numpy", "SimpleITK", "requests", "vtk", "pydicom")


class DependencyError(RuntimeError):
    """Required packages are missing and were not installed (declined, testing mode, or install failed)."""


def missingPackages(packages: tuple[Package, ...] | None = None) -> list[Package]:
    """The packages (default: all the engine needs) that cannot be imported."""
    return [p for p in (REQUIRED_PACKAGES if packages is None else packages)
            if importlib.util.find_spec(p.importName) is None]


def missingMessage(missing: list[Package]) -> str:
    names = ", ".join(p.requirement for p in missing)
    return (
        f"SkullVAE Completion needs these Python packages, which are not installed: {names}. "
        "Install the PyTorch extension (Extensions Manager), then click Apply again to install them "
        "(this downloads up to a few GB and may take several minutes)."
    )


def _constraintsFile() -> str | None:
    """A pip constraints file pinning the protected packages at their installed versions."""
    lines = []
    for name in PROTECTED_DISTRIBUTIONS:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    if not lines:
        return None
    handle, path = tempfile.mkstemp(prefix="skullvae-constraints-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines) + "\n")
    return path


def ensureDependencies(packages: tuple[Package, ...] | None = None, askConfirmation: bool = True) -> None:
    """Make sure ``packages`` (default: all the engine needs) are importable; install them in Slicer after one
    confirmation.

    Raises :class:`DependencyError` when packages are missing and cannot or may not be installed.
    """
    missing = missingPackages(packages)
    if not missing:
        return
    import slicer  # noqa: PLC0415  (lazy: only in the application)

    app = getattr(slicer, "app", None)
    if app is None:
        raise DependencyError(missingMessage(missing) + " Outside Slicer: pip install " +
                              " ".join(f'"{p.requirement}"' for p in missing))
    if app.testingEnabled():
        raise DependencyError(missingMessage(missing) + " (Not installed automatically in testing mode.)")

    torchMissing = any(p.importName == "torch" for p in missing)
    others = [p for p in missing if p.importName != "torch"]
    # Ask once. If torch is all that is missing, PyTorchUtils' own dialog (which names the CUDA build) is the one.
    askedHere = False
    if askConfirmation and others:
        names = ", ".join(p.requirement for p in missing)
        if not slicer.util.confirmOkCancelDisplay(
            f"SkullVAE Completion needs these Python packages: {names}.\n\n"
            "Install them now? This may download up to a few GB and take several minutes; "
            "Slicer's own packages (numpy, SimpleITK, ...) are not changed.",
            windowTitle="SkullVAE Completion: install dependencies",
        ):
            raise DependencyError(missingMessage(missing) + " Installation was declined.")
        askedHere = True

    if torchMissing:
        _installTorch(askConfirmation=askConfirmation and not askedHere)
    if others:
        _installOthers(others)
    stillMissing = missingPackages(packages)
    if stillMissing:
        raise DependencyError(missingMessage(stillMissing) + " Installation did not succeed; see the Python console.")


def _installTorch(askConfirmation: bool) -> None:
    try:
        import PyTorchUtils  # noqa: PLC0415  (provided by the PyTorch extension, EXTENSION_DEPENDS)
    except ModuleNotFoundError as error:
        raise DependencyError(
            "PyTorch is not installed and the PyTorch extension is missing: install 'PyTorch' from the "
            "Extensions Manager, restart Slicer, then click Apply again."
        ) from error
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    torch = torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        raise DependencyError(
            "PyTorch was not installed (declined or failed). Install it from the PyTorch Utils module, then "
            "click Apply again."
        )


def _installOthers(packages: list[Package]) -> None:
    import slicer  # noqa: PLC0415

    requirements = [p.requirement for p in packages]
    constraints = _constraintsFile()
    try:
        try:
            import slicer.packaging as packaging  # noqa: PLC0415  (Slicer >= 5.12)
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure(requirements, constraints=constraints, prompt_install=False,
                                 requester="SkullVAE Completion")
        else:
            args = " ".join(f'"{r}"' for r in requirements)
            if constraints:
                args += f' -c "{constraints}"'
            slicer.util.pip_install(args)
    finally:
        if constraints:
            try:
                os.remove(constraints)
            except OSError:
                logger.debug("could not remove %s", constraints)
