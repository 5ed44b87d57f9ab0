"""Benchmark: our end-to-end completion (Slicer Logic, CLI, engine) vs the seed-style pipeline on a 512×512×216 skull.

Not a test. Run from the repository root::

    bash scripts/setup_env.sh && source .venv/bin/activate
    PYTHONPATH=SkullVAECompletion:. python benchmarks/benchmark_completion.py            # CPU, 2 threads
    PYTHONPATH=SkullVAECompletion:. python benchmarks/benchmark_completion.py --device cuda

What is measured, each pipeline in its own subprocess (peak RSS from ``os.wait4``'s ru_maxrss of that child):

* ``seed``   – the seed-style pipeline: nearest resize of the whole volume to 256×256×128 with
  ``F.interpolate`` → the paper's VarAutoEncoder (``NetworkConfig()`` defaults, random weights) → argmax →
  nearest resize back to 512×512×216.
* ``engine`` – ``SkullCompleter.encode`` + ``complete`` on the (i, j, k) array, then ``complete`` with new γ
  values on the cached encoding (the γ re-decode latency).
* ``logic``  – ``SkullVAECompletionLogic.process`` on a labelmap node of a real MRML scene (slicer-core), i.e.
  the module's Apply, then ``Logic.updateGamma``.
* ``cli``    – ``skullvae-complete`` on the NRRD file (reads, completes, writes completed/implant NRRD + STL +
  PNG preview), in-process after the imports; ``cli_volumes`` the same with ``--no-stl --no-preview``.

The skull: ``Resources/SampleData/CraniumSkull.nrrd`` (256×256×108, 0.96/1.5 mm) upsampled with trilinear
interpolation (align_corners) to 512×512×216 (0.48×0.48×0.75 mm) and thresholded at 0.5; cached in
``--cache-dir``. The model: the bundled one when ``Resources/Models/skullvae-cranium-population`` exists,
else the tiny test model (``Testing/tiny_model.build_tiny_bundle``), or ``--model PATH``; the output says which.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "SkullVAECompletion", ROOT, ROOT / "Testing"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

TARGET_SHAPE = (512, 512, 216)
SEED_GRID = (256, 256, 128)
SAMPLE = ROOT / "Resources" / "SampleData" / "CraniumSkull.nrrd"
BUNDLED = ROOT / "Resources" / "Models" / "skullvae-cranium-population"
PIPELINES = ("seed", "engine", "logic", "cli", "cli_volumes")
TARGET_SPEEDUP = 3.0
TARGET_REDECODE_S = 0.3  # a γ step: re-decode and the rim-conforming stage
TARGET_STAGE_S = 1.0  # the rim-conforming stage (the engine's "implant" timing) within one Apply
TARGET_RSS_MB = 2048.0
TARGET_TRUST_S = 0.2  # the shell check and the trust figure (a decode at γ = 0), within the encoding


# --- data ------------------------------------------------------------------------------------------------------
def benchmark_volume(cache_dir: Path) -> tuple[Path, Path]:
    """The 512×512×216 skull as NRRD (for the CLI and the Logic) and .npy + matrix (for the array pipelines)."""
    import numpy as np

    stem = "CraniumSkull_{}x{}x{}".format(*TARGET_SHAPE)
    nrrd_path = cache_dir / f"{stem}.nrrd"
    npy_path = cache_dir / f"{stem}.npz"
    if nrrd_path.is_file() and npy_path.is_file():
        return nrrd_path, npy_path
    import torch

    from SkullVAECompletionLib.imageio.volumes import read_mask, write_like

    array, matrix, meta = read_mask(SAMPLE)
    with torch.inference_mode():
        source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
        upsampled = torch.nn.functional.interpolate(source, size=TARGET_SHAPE, mode="trilinear", align_corners=True)
        mask = np.asfortranarray((upsampled[0, 0] >= 0.5).numpy().astype(np.uint8))
    # align_corners: the first and last voxel centres stay put, so spacing × (n − 1) is kept per axis.
    scale = (np.asarray(array.shape) - 1) / (np.asarray(TARGET_SHAPE) - 1)
    new_matrix = matrix.copy()
    new_matrix[:3, :3] = matrix[:3, :3] @ np.diag(scale)
    meta.ijk_to_ras = new_matrix
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_like(nrrd_path, mask, meta, overwrite=True)
    np.savez(npy_path, mask=mask, ijk_to_ras=new_matrix)
    return nrrd_path, npy_path


def model_folder(requested: str | None, cache_dir: Path) -> tuple[Path, str]:
    if requested:
        return Path(requested), f"model bundle {requested}"
    if (BUNDLED / "manifest.json").is_file():
        return BUNDLED, "the bundled model (Resources/Models/skullvae-cranium-population)"
    folder = cache_dir / "tiny-model"
    if not (folder / "manifest.json").is_file():
        from tiny_model import build_tiny_bundle

        build_tiny_bundle(folder)
    return folder, "the tiny test model (Testing/tiny_model.py; no bundled model found)"


def load_npz(path: Path) -> tuple[Any, Any]:
    import numpy as np

    data = np.load(path)
    return np.asfortranarray(data["mask"]), data["ijk_to_ras"]


# --- workers (each runs in its own subprocess) ----------------------------------------------------------------
def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def worker_seed(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812

    from SkullVAECompletionLib.model.networks import NetworkConfig, build_stage1_vae

    mask, _ = load_npz(Path(args.npz))
    torch.manual_seed(0)
    config = NetworkConfig()
    device = torch.device(args.device)
    network = build_stage1_vae(config).eval().to(device)
    runs = []
    for _ in range(args.repeats + 1):  # the first run warms up (allocator, kernels) and is not reported
        _sync(args.device)
        start = time.perf_counter()
        with torch.inference_mode():
            volume = torch.from_numpy(np.ascontiguousarray(mask))[None, None].to(device).float()
            resized = F.interpolate(volume, size=config.grid, mode="nearest")
            logits = network(resized)[0]
            labels = logits.argmax(1, keepdim=True).to(torch.uint8)
            back = F.interpolate(labels, size=mask.shape, mode="nearest")[0, 0].cpu().numpy()
        _sync(args.device)
        runs.append(time.perf_counter() - start)
        del volume, resized, logits, labels
    assert back.shape == mask.shape
    return {"apply_s": statistics.median(runs[1:]), "first_s": runs[0], "runs": runs}


def worker_engine(args: argparse.Namespace) -> dict[str, Any]:
    from SkullVAECompletionLib.inference.completion import SkullCompleter

    mask, matrix = load_npz(Path(args.npz))
    completer = SkullCompleter(args.model, device=args.device, precision=args.precision)
    runs, breakdown = [], []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        encoded = completer.encode(mask, matrix)
        result = completer.complete(encoded, gamma=1.0)
        runs.append(time.perf_counter() - start)
        breakdown.append({**result.timings, "encode": runs[-1] - result.timings["total"], **encoded.check_seconds})
    redecode = []
    for index in range(args.gamma_repeats):
        start = time.perf_counter()
        result = completer.complete(encoded, gamma=1.1 + 0.1 * index)  # a new γ each time: no cache hit
        redecode.append(time.perf_counter() - start)
    return {
        "apply_s": statistics.median(runs[1:]),
        "first_s": runs[0],
        "runs": runs,
        "breakdown": breakdown[-1],
        "redecode_s": statistics.median(redecode),
        "redecode_runs": redecode,
        "redecode_breakdown": result.timings,
        "implant_ml": result.implant_volume_ml,
        "device": str(completer.device),
        "precision": completer.precision,
    }


def worker_logic(args: argparse.Namespace) -> dict[str, Any]:
    import slicer

    import SkullVAECompletion as module
    from SkullVAECompletionLib import mrml

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    node = mrml.loadLabelmapFile(scene, args.nrrd)
    logic = module.SkullVAECompletionLogic(modelPath=args.model)
    logic.getCompleter(args.model, args.device)  # model loading is not part of Apply (done once per session)
    if args.precision != "float32":
        logic.getCompleter(args.model, args.device).set_precision(args.precision)
    runs, result = [], None
    for _ in range(args.repeats + 1):
        if result is not None:
            logic.releaseResult(result)
            mrml.removeNodes(scene, [result])
        start = time.perf_counter()
        result = logic.process(node, device=args.device, gamma=1.0)
        runs.append(time.perf_counter() - start)
    redecode, measured = [], []
    # The γ slider: live previews one after another while it is dragged (no fit report, no uncertainty), then one
    # full update when it is released (with the fit report and the distance map).
    for index in range(args.gamma_repeats):
        start = time.perf_counter()
        logic.updateGamma(result, 1.1 + 0.1 * index, updateUncertainty=False, measureFit=False)
        redecode.append(time.perf_counter() - start)
    for index in range(args.gamma_repeats):
        start = time.perf_counter()
        logic.updateGamma(result, 1.15 + 0.1 * index)
        measured.append(time.perf_counter() - start)
    return {
        "apply_s": statistics.median(runs[1:]),
        "first_s": runs[0],
        "runs": runs,
        "redecode_s": statistics.median(redecode),
        "redecode_runs": redecode,
        "redecode_with_fit_s": statistics.median(measured),
        "engine_timings": logic.lastResult.timings,
    }


def worker_cli(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from SkullVAECompletionLib.cli import main

    runs = []
    for _ in range(args.repeats):  # a real CLI call is a fresh process: every run loads the model
        with tempfile.TemporaryDirectory(prefix="skullvae-bench-") as out:
            # The CLI has no precision option: it always runs float32.
            command = [args.nrrd, "-o", out, "--model", args.model, "--device", args.device, "-q"]
            if args.worker == "cli_volumes":
                command += ["--no-stl", "--no-preview"]  # only the two volumes: closest to what the seed outputs
            start = time.perf_counter()
            code = main(command)
            runs.append(time.perf_counter() - start)
            if code != 0:
                raise RuntimeError(f"the CLI failed with exit code {code}")
    return {"apply_s": statistics.median(runs), "first_s": runs[0], "runs": runs}


WORKERS = {"seed": worker_seed, "engine": worker_engine, "logic": worker_logic, "cli": worker_cli,
           "cli_volumes": worker_cli}


def run_worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
    tick = time.perf_counter()
    measured = WORKERS[args.worker](args)
    measured["worker_wall_s"] = time.perf_counter() - tick
    if args.profile:
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(args.profile)
    if args.device == "cuda":
        measured["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(measured))


def launch(name: str, args: argparse.Namespace, nrrd: Path, npz: Path, model: Path) -> dict[str, Any]:
    """Run one pipeline in a fresh interpreter; its own peak RSS comes from wait4's resource usage."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", name, "--nrrd", str(nrrd), "--npz", str(npz),
        "--model", str(model), "--device", args.device, "--threads", str(args.threads), "--repeats",
        str(args.repeats), "--gamma-repeats", str(args.gamma_repeats), "--precision", args.precision,
    ]
    if args.profile and name in args.profile_pipelines.split(","):
        command += ["--profile", str(args.profile)]
    # Keep the caller's PYTHONPATH after ours: on a bare GPU image it holds monai / pynrrd carried as wheels.
    paths = [str(ROOT / "SkullVAECompletion"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=None, text=True, env=env, cwd=ROOT)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"pipeline {name} failed (exit {process.returncode}):\n{stdout}")
    measured = json.loads(lines[-1][len("RESULT ") :])
    measured["peak_rss_mb"] = usage.ru_maxrss / 1024.0  # Linux: kilobytes
    measured["process_wall_s"] = wall
    return measured


def machine_description(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    text = f"{cpu}, {os.cpu_count()} logical CPUs (load average {load}), torch {torch.__version__}"
    if device == "cuda" and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace, model_text: str) -> str:
    lines = [
        f"Machine: {machine_description(args.device)}; torch threads {args.threads}; device {args.device}; "
        f"precision {args.precision}",
        f"Model: {model_text}",
        f"Input: {TARGET_SHAPE[0]}×{TARGET_SHAPE[1]}×{TARGET_SHAPE[2]} binary skull (CraniumSkull upsampled to "
        "≈0.48×0.48×0.75 mm)",
        f"Repeats: median of {args.repeats} after one warm-up (CLI: {args.repeats} fresh runs, model loading "
        f"included); γ re-decode: median of {args.gamma_repeats} new γ values",
        "",
        "| pipeline | apply (s) | first run (s) | γ re-decode (s) | peak RSS (MB) | speed-up vs seed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    seed = results.get("seed", {}).get("apply_s")
    for name in args.pipelines.split(","):
        r = results[name]
        redecode = f"{r['redecode_s']:.3f}" if "redecode_s" in r else "–"
        speedup = f"{seed / r['apply_s']:.2f}×" if seed and name != "seed" else "–"
        lines.append(
            f"| {name} | {r['apply_s']:.2f} | {r['first_s']:.2f} | {redecode} | {r['peak_rss_mb']:.0f} | {speedup} |"
        )
    lines.append("")
    if "engine" in results:
        e = results["engine"]
        parts = ", ".join(f"{k} {v:.3f}" for k, v in e["breakdown"].items())
        lines.append(f"Engine breakdown (s): {parts}; implant {e['implant_ml']:.1f} ml on {e['device']}")
        parts = ", ".join(f"{k} {v:.3f}" for k, v in e["redecode_breakdown"].items())
        lines.append(f"Engine γ re-decode breakdown (s): {parts}")
    if "logic" in results:
        lines.append(
            f"Logic: Apply {results['logic']['apply_s']:.2f} s, updateGamma {results['logic']['redecode_s']:.3f} s "
            "as the γ slider's preview (engine re-decode + rim stage + replacing both segments of the result node), "
            f"{results['logic']['redecode_with_fit_s']:.3f} s with the fit report and distance map"
        )
    lines.append("")
    lines.append("Targets:")
    for name in ("logic", "cli", "cli_volumes", "engine"):
        if seed and name in results:
            ratio = seed / results[name]["apply_s"]
            verdict = "met" if ratio >= TARGET_SPEEDUP else "NOT met"
            lines.append(
                f"- {name}: {ratio:.2f}× faster than the seed pipeline (target ≥ {TARGET_SPEEDUP:g}×): {verdict}"
            )
    if "engine" in results:
        value = results["engine"]["breakdown"]["implant"]
        verdict = "met" if value <= TARGET_STAGE_S else "NOT met"
        lines.append(f"- rim-conforming stage {value:.3f} s of the engine's Apply (target ≤ {TARGET_STAGE_S:g} s): "
                     f"{verdict}")
        breakdown = results["engine"]["breakdown"]
        value = breakdown.get("shell_check", 0.0) + breakdown.get("trust", 0.0)
        verdict = "met" if value <= TARGET_TRUST_S else "NOT met"
        lines.append(f"- shell check + trust figure {value:.3f} s of the engine's Apply (target ≤ {TARGET_TRUST_S:g} "
                     f"s): {verdict}")
    for name in ("engine", "logic"):
        if name in results:
            value = results[name]["redecode_s"]
            verdict = "met" if value <= TARGET_REDECODE_S else "NOT met"
            lines.append(f"- {name} γ re-decode {value:.3f} s (target ≤ {TARGET_REDECODE_S} s): {verdict}")
    for name in ("engine", "logic", "cli", "cli_volumes"):
        if name in results:
            value = results[name]["peak_rss_mb"]
            verdict = "met" if value <= TARGET_RSS_MB else "NOT met"
            lines.append(f"- {name} peak RSS {value:.0f} MB (target ≤ {TARGET_RSS_MB:.0f} MB): {verdict}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("float32", "auto", "float16"), default="float32",
                        help="inference precision of our pipelines (float16/auto: CUDA only)")
    parser.add_argument("--model", default=None, help="model bundle folder (default: bundled, else tiny)")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "skullvae_bench")
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help=f"comma-separated subset of {PIPELINES}")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gamma-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads")
    parser.add_argument("--profile", type=int, default=0, help="print the top N cProfile entries (to stderr)")
    parser.add_argument("--profile-pipelines", default="logic", help="which pipelines to profile")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    # internal: one pipeline in this process
    parser.add_argument("--worker", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--nrrd", help=argparse.SUPPRESS)
    parser.add_argument("--npz", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    nrrd, npz = benchmark_volume(args.cache_dir)
    model, model_text = model_folder(args.model, args.cache_dir)
    results = {}
    for name in args.pipelines.split(","):
        print(f"running {name} …", file=sys.stderr, flush=True)
        results[name] = launch(name, args, nrrd, npz, model)
    text = report(results, args, model_text)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "report": text}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
