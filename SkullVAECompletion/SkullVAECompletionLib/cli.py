"""``skullvae-complete``: complete skull masks from files, without Slicer.

For each input NAME.nrrd / NAME.nii.gz it writes NAME_completed, NAME_implant (same format and grid),
NAME_implant.stl and NAME_preview.png into the output folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .bundle import load_bundle
from .completion import DEFECT_CHOICES, DEVICE_CHOICES, PRECISION_CHOICES, SkullCompleter
from .errors import SkullVAEError
from .io import (
    ensure_writable_folder,
    is_volume_file,
    output_paths,
    read_mask,
    write_like,
    write_preview_png,
    write_render_png,
    write_stl,
)

logger = logging.getLogger("skullvae")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skullvae-complete",
        description="Complete defective skulls and design cranial implants with an aggregated β-VAE.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="binary skull masks (NRRD or NIfTI) or folders of them")
    parser.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for the results")
    parser.add_argument("--gamma", type=float, default=None, help="latent shift γ (default: the model's per type)")
    parser.add_argument("--defect-type", choices=DEFECT_CHOICES, default="auto", help="default: detect it")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="default: CUDA when available")
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="float32",
        help="float16 is for CUDA only; auto uses it after checking it agrees with float32",
    )
    parser.add_argument("--model", type=Path, default=None, help="model bundle folder (default: the bundled model)")
    parser.add_argument("--method", choices=("dev", "knn", "refine"), default=None, help="default: the model's")
    parser.add_argument("--label", type=int, default=None, help="use this label of a multi-label map")
    parser.add_argument("--no-smoothing", action="store_true", help="do not smooth the implant surface")
    parser.add_argument("--no-stl", action="store_true", help="do not write the implant STL")
    parser.add_argument("--no-preview", action="store_true", help="do not write the PNG preview")
    parser.add_argument("--render", action="store_true", help="also write NAME_render.png, an offscreen 3D render")
    parser.add_argument("--stl-coordinates", choices=("LPS", "RAS"), default="LPS", help="STL frame (Slicer: LPS)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def collect_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; folders expanded to the volume files they contain (sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_volume_file(p))
            if not found:
                raise SkullVAEError(f"{path}: no NRRD or NIfTI files in this folder")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise SkullVAEError(f"{path}: no such file or folder")
    return files


def complete_file(completer: SkullCompleter, path: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Complete one file and write its outputs; returns the written paths."""
    mask, ijk_to_ras, meta = read_mask(path)
    skipped = {"stl": args.no_stl, "preview": args.no_preview, "render": not args.render}
    targets = {k: p for k, p in output_paths(meta, args.output_dir).items() if not skipped.get(k, False)}
    if not args.overwrite:
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing:
            raise SkullVAEError(f"outputs exist already: {', '.join(existing)}; pass --overwrite to replace them")

    def progress(fraction: float, message: str) -> None:
        logger.info("  %s: %3.0f%% %s", meta.stem, 100 * fraction, message)

    encoded = completer.encode(mask, ijk_to_ras, name=str(path), label=args.label, progress=progress)
    result = completer.complete(
        encoded,
        gamma=args.gamma,
        defect_type=args.defect_type,
        smoothing=not args.no_smoothing,
        method=args.method,
        progress=progress,
    )
    logger.info(
        "  %s: %s defect (detected %s, confidence %.2f), γ = %.2f, implant %.1f ml",
        meta.stem,
        result.defect_type,
        result.detected_type,
        result.confidence,
        result.gamma,
        result.implant_volume_ml,
    )
    written = {}
    written["completed"] = write_like(targets["completed"], result.completed, meta, args.overwrite)
    written["implant"] = write_like(targets["implant"], result.implant, meta, args.overwrite)
    if not args.no_stl and result.implant.any():
        written["stl"] = write_stl(targets["stl"], result.implant, ijk_to_ras, args.stl_coordinates, args.overwrite)
    elif not result.implant.any():
        logger.warning(
            "  %s: the implant is empty (no defect found at γ = %.2f); no STL written", meta.stem, result.gamma
        )
    if not args.no_preview:
        title = (
            f"{meta.stem}: {result.defect_type} defect, gamma = {result.gamma:.2f}, "
            f"implant {result.implant_volume_ml:.1f} ml"
        )
        written["preview"] = write_preview_png(
            targets["preview"], result.completed, result.implant, ijk_to_ras, title, args.overwrite
        )
    if args.render:
        skull_only = result.completed.astype(bool) & ~result.implant.astype(bool)
        written["render"] = write_render_png(targets["render"], skull_only, result.implant, ijk_to_ras,
                                             overwrite=args.overwrite)
    return written


@contextmanager
def _log_to_stderr(level: int) -> Iterator[None]:
    """Messages of the CLI and the engine go to stderr for the duration of one run."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    loggers = [logger, logging.getLogger("SkullVAECompletionLib")]
    previous = [(each.level, each.propagate) for each in loggers]
    for each in loggers:
        each.addHandler(handler)
        each.setLevel(level)
        each.propagate = False
    try:
        yield
    finally:
        for each, (old_level, old_propagate) in zip(loggers, previous, strict=True):
            each.removeHandler(handler)
            each.setLevel(old_level)
            each.propagate = old_propagate


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _log_to_stderr(logging.ERROR if args.quiet else logging.INFO):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        files = collect_inputs(args.inputs)
        ensure_writable_folder(args.output_dir, "output folder", "choose another with --output-dir")
        bundle = load_bundle(args.model)
        completer = SkullCompleter(bundle, device=args.device, precision=args.precision)
    except SkullVAEError as error:
        logger.error("error: %s", error)
        return 2
    logger.info("model %s %s on %s; %d input(s)", bundle.model_id, bundle.version, completer.device, len(files))
    failures = 0
    for index, path in enumerate(files, start=1):
        logger.info("[%d/%d] %s", index, len(files), path)
        start = time.perf_counter()
        try:
            written = complete_file(completer, path, args)
        except (SkullVAEError, OSError) as error:
            failures += 1
            logger.error("error: %s", error)
            continue
        logger.info("  wrote %s in %.1f s", ", ".join(p.name for p in written.values()), time.perf_counter() - start)
    if failures:
        logger.error("%d of %d input(s) failed", failures, len(files))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
