"""``skullvae-complete``: complete skull masks from files, without Slicer.

For each input NAME.nrrd / NAME.nii.gz it writes NAME_completed, NAME_implant (same format and grid),
NAME_implant.stl, NAME_preview.png, NAME_distance.png (implant coloured by its distance to the skull) and
NAME_summary.json (run parameters, design options and the fit report) into the output folder. When another volume
file beside it (or another input of the run) has the same NAME, the format joins it: skull.nrrd and skull.nii.gz
give skull_nrrd_* and skull_nii_gz_*. All of an input's files appear together at the end, or none of them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import __version__
from .errors import SkullVAEError
from .imageio.outputs import (
    check_targets,
    ensure_writable_folder,
    output_paths,
    output_stem,
    publish_outputs,
    staging_folder,
    write_json,
)
from .imageio.renders import write_distance_png, write_preview_png, write_render_png
from .imageio.volumes import VolumeMeta, is_volume_file, read_mask, write_like
from .inference.completion import SkullCompleter
from .inference.detection import BY_DEFECT_POSITION
from .model.bundle import load_bundle
from .options import (
    AUTO,
    DEFAULT_BONE_THRESHOLD_HU,
    DEFAULT_CLEARANCE_MM,
    DEFAULT_EDGE_RADIUS_MM,
    DEFAULT_FLANGE_MM,
    DEFAULT_FLANGE_THICKNESS_MM,
    DEFAULT_PRECISION,
    DEFAULT_STL_COORDINATES,
    DEVICE_CHOICES,
    EXTRACTION_CHOICES,
    METHOD_CHOICES,
    PRECISION_CHOICES,
    STL_COORDINATES,
    CompletionOptions,
    DesignOptions,
)
from .pipeline import DesignedImplant, complete_and_design
from .preprocessing.skull_from_ct import skull_from_ct

logger = logging.getLogger("skullvae")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skullvae-complete",
        description="Complete defective skulls and design cranial implants with an aggregated β-VAE.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="binary skull masks (NRRD or NIfTI) or folders of them")
    parser.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for the results")
    parser.add_argument("--gamma", type=float, default=None, help="latent shift γ (default: the model's per type)")
    parser.add_argument("--defect-type", "--defect-class", dest="defect_type", default=AUTO, metavar="CLASS",
                        help="the defect class whose latent shift completes the skull (default: auto, the detected "
                        "one); the bundled model's classes: frontal, frontoorbital, parietotemporal_left, "
                        "parietotemporal_right, occipital, vertex, facial")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default=AUTO, help="default: CUDA when available")
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default=DEFAULT_PRECISION,
        help="float16 is for CUDA only; auto uses it after checking it agrees with float32",
    )
    parser.add_argument("--model", type=Path, default=None, help="model bundle folder (default: the bundled model)")
    parser.add_argument("--method", choices=METHOD_CHOICES, default=None,
                        help="dev/knn/refine: the decoder with a latent shift (default: the model's); "
                        "mirror: the healthy side mirrored about the mid-sagittal plane (unilateral defects)")
    parser.add_argument(
        "--extraction",
        choices=EXTRACTION_CHOICES,
        default=None,
        help="rim: implant surfaces fitted to the intact bone around the defect; "
        "decode: decoded minus input bone (the paper's way); union: both (default: the model's choice for the "
        "defect class, else rim)",
    )
    parser.add_argument("--label", type=int, default=None, help="use this label of a multi-label map")
    parser.add_argument("--no-smoothing", action="store_true", help="do not smooth the implant surface")
    parser.add_argument("--no-stl", action="store_true", help="do not write the implant STL")
    parser.add_argument("--no-preview", action="store_true", help="do not write the PNG preview")
    parser.add_argument("--render", action="store_true", help="also write NAME_render.png, an offscreen 3D render")
    parser.add_argument("--stl-coordinates", choices=STL_COORDINATES, default=DEFAULT_STL_COORDINATES,
                        help="STL frame (Slicer: LPS)")
    parser.add_argument("--max-triangles", type=int, default=None, metavar="N",
                        help="decimate the STL to at most N triangles (kept within 0.2 mm of the full surface)")
    parser.add_argument("--from-ct", action="store_true",
                        help="the inputs are CTs in HU: extract the skull first (threshold, largest component)")
    parser.add_argument("--bone-threshold", type=float, default=DEFAULT_BONE_THRESHOLD_HU, metavar="HU",
                        help="bone threshold for --from-ct (default: %(default)g HU)")
    design = parser.add_argument_group("implant design (default: the completion's implant as it is)")
    design.add_argument("--thickness", type=float, default=None, metavar="MM",
                        help="plate thickness along the surface normal from the outer surface inward")
    design.add_argument("--flange", type=float, default=DEFAULT_FLANGE_MM, metavar="MM",
                        help="width of a flange over the intact bone all around the rim")
    design.add_argument("--flange-thickness", type=float, default=DEFAULT_FLANGE_THICKNESS_MM, metavar="MM",
                        help="default: %(default)g")
    design.add_argument("--clearance", type=float, default=DEFAULT_CLEARANCE_MM, metavar="MM",
                        help="gap between the implant and the defect's bony edge")
    design.add_argument("--edge-radius", type=float, default=DEFAULT_EDGE_RADIUS_MM, metavar="MM",
                        help="rounding of the designed edges (default: %(default)g)")
    parser.add_argument("--no-distance-map", action="store_true", help="do not write NAME_distance.png")
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


def complete_file(completer: SkullCompleter, path: Path, args: argparse.Namespace,
                  stem: str | None = None) -> dict[str, Path]:
    """Complete one file and write its outputs; returns the written paths.

    ``stem``: what the output names start with (:func:`io.output_stem`; default: the input's NAME). Every output is
    written into a staging folder first and published at the end in one step (:func:`io.publish_outputs`): a
    failure anywhere writes nothing, and no other input's files are ever replaced.
    """
    volume, ijk_to_ras, meta = read_mask(path)
    options = completion_options(args)
    skipped = {"stl": args.no_stl, "preview": args.no_preview, "render": not args.render,
               "skull": not args.from_ct, "distance": args.no_distance_map}
    names = output_paths(meta, args.output_dir, stem)
    targets = {k: p for k, p in names.items() if not skipped.get(k, False)}
    # Fail before the work; publishing checks again under the lock.
    check_targets({**targets, "summary": names["summary"]}, path, args.overwrite)
    label = stem or meta.stem

    def progress(fraction: float, message: str) -> None:
        logger.info("  %s: %3.0f%% %s", label, 100 * fraction, message)

    mask = skull_from_ct(volume, args.bone_threshold, name=str(path)) if args.from_ct else volume
    del volume
    encoded = completer.encode(mask, ijk_to_ras, name=str(path), label=args.label, progress=progress)
    designed = complete_and_design(completer, encoded, ijk_to_ras, options, progress)
    result = designed.result
    for warning in designed.warnings:
        logger.warning("  %s: %s", label, warning)
    probability = result.class_probabilities.get(result.detected_type, result.confidence)
    how = (f"from the defect's position; class head {probability:.2f}" if result.detected_by == BY_DEFECT_POSITION
           else f"confidence {probability:.2f}")
    logger.info("  %s: %s defect (detected %s, %s), γ = %.2f, implant %.1f ml", label, result.defect_type,
                result.detected_type, how, result.gamma, result.implant_volume_ml)
    if designed.empty:
        logger.warning("  %s: the implant is empty (%s; γ = %.2f); no STL written", label,
                       result.message or "no defect found", result.gamma)
    else:
        # Measured before the files are written: the summary and the distance map need it.
        logger.info("  %s: fit: %s", label, designed.quality(distance_map=not args.no_distance_map).statusText())
    with staging_folder(args.output_dir) as staging:
        staged = write_outputs(staging, targets, label, path, args, completer, meta, mask, designed, options)
        return publish_outputs(staged, targets, path, args.overwrite, names.values())


def write_outputs(staging: Path, targets: dict[str, Path], label: str, path: Path, args: argparse.Namespace,
                  completer: SkullCompleter, meta: VolumeMeta, mask: np.ndarray, designed: DesignedImplant,
                  options: CompletionOptions) -> dict[str, Path]:
    """Write every output of one input into ``staging`` under its final name; returns them by key (the summary
    last: it lists the others)."""
    ijk_to_ras = meta.ijk_to_ras
    result, defective = designed.result, designed.completion.defective
    staged: dict[str, Path] = {}

    def at(key: str) -> Path:
        return staging / targets[key].name

    if args.from_ct:
        staged["skull"] = write_like(at("skull"), mask, meta)
    staged["completed"] = write_like(at("completed"), result.completed, meta)
    staged["implant"] = write_like(at("implant"), result.implant, meta)
    if not args.no_stl and not designed.empty:
        staged["stl"] = designed.write_stl(at("stl"), options.stl_coordinates, options.max_triangles)
    if not args.no_preview:
        title = (
            f"{label}: {result.defect_type} defect, "
            f"gamma = {result.gamma:.2f}, implant {result.implant_volume_ml:.1f} ml"
        )
        staged["preview"] = write_preview_png(at("preview"), result.completed, result.implant, ijk_to_ras, title)
    if args.render:
        staged["render"] = write_render_png(at("render"), defective, result.implant, ijk_to_ras)
    if not designed.empty and not args.no_distance_map:
        staged["distance"] = write_distance_png(at("distance"), defective, designed.surface(), ijk_to_ras)
    summary = run_summary(path, args, completer, designed, {k: targets[k] for k in staged})
    staged["summary"] = write_json(at("summary"), summary)
    return staged


def completion_options(args: argparse.Namespace) -> CompletionOptions:
    """The run's options from the command line (checked: a bad value fails before any work)."""
    return CompletionOptions(
        gamma=args.gamma, defect_type=args.defect_type, method=args.method, extraction=args.extraction,
        device=args.device, precision=args.precision, model_path=None if args.model is None else str(args.model),
        smoothing=not args.no_smoothing, design=design_options(args), distance_map=not args.no_distance_map,
        max_triangles=args.max_triangles, stl_coordinates=args.stl_coordinates,
    )


def design_options(args: argparse.Namespace) -> DesignOptions:
    """The design options of the command line (checked: a bad value fails before any work)."""
    return DesignOptions(thickness_mm=args.thickness, flange_mm=args.flange, flange_thickness_mm=args.flange_thickness,
                         clearance_mm=args.clearance, edge_radius_mm=args.edge_radius)


def run_summary(path: Path, args: argparse.Namespace, completer: SkullCompleter, designed: DesignedImplant,
                written: dict[str, Path]) -> dict:
    """Everything needed to judge a result and to redo it: NAME_summary.json."""
    bundle = completer.bundle
    return {
        "input": str(path),
        **designed.summary(
            bundle.model_id, bundle.version,
            from_ct=bool(args.from_ct),
            bone_threshold_hu=args.bone_threshold if args.from_ct else None,
            label=args.label,
            smoothing=not args.no_smoothing,
            max_triangles=args.max_triangles,
            stl_coordinates=args.stl_coordinates,
        ),
        "outputs": {key: target.name for key, target in written.items()},
        "engine_version": __version__,
    }


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
        completion_options(args)  # bad option values stop the run before any work
        if args.max_triangles is not None and args.max_triangles < 100:
            raise SkullVAEError(f"--max-triangles {args.max_triangles}: give at least 100 triangles")
        files = collect_inputs(args.inputs)
        ensure_writable_folder(args.output_dir, "output folder", "choose another with --output-dir")
        bundle = load_bundle(args.model)
        completer = SkullCompleter(bundle, device=args.device, precision=args.precision)
        if args.defect_type not in completer.defect_choices:
            raise SkullVAEError(f"--defect-type {args.defect_type}: model {bundle.model_id} {bundle.version} has no "
                                f"such class; choose one of {', '.join(completer.defect_choices)}")
    except SkullVAEError as error:
        logger.error("error: %s", error)
        return 2
    logger.info("model %s %s on %s; %d input(s)", bundle.model_id, bundle.version, completer.device, len(files))
    failures = 0
    for index, path in enumerate(files, start=1):
        logger.info("[%d/%d] %s", index, len(files), path)
        start = time.perf_counter()
        try:
            stem = output_stem(path, [other for other in files if other != path])
            written = complete_file(completer, path, args, stem)
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
