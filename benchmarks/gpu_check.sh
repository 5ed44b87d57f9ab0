#!/usr/bin/env bash
# GPU check for a CUDA machine. Runs: the CUDA tests, the agreement of CUDA float32 / float16 with the CPU on
# the benchmark skull, and the benchmark with --device cuda. Writes everything to ${OUT:-benchmarks/gpu_results}.
#   bash benchmarks/gpu_check.sh            # from the repository root; about 5 minutes
#   QUICK=1 bash benchmarks/gpu_check.sh    # about 2 minutes: one repeat, float32, seed and engine pipelines
# A machine without vtk / slicer-core (a bare GPU image: carry monai and pynrrd as wheels) skips the tests and the
# benchmark pipelines that need them.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${OUT:-benchmarks/gpu_results}"
mkdir -p "$RESULTS"
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
export PYTHONPATH="SkullVAECompletion:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
QUICK="${QUICK:-0}"
status=0

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; } > "$RESULTS/machine.txt" 2>&1
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" \
  | tee -a "$RESULTS/machine.txt" || { echo "no usable CUDA device: stopping"; exit 2; }
has() { "$PYTHON" -c "import $1" 2>/dev/null; }

# 1. Tests that take the CUDA path when a GPU is present (device choice, OOM fallback, precision, Logic device).
tests=(Testing/test_completion.py)
has vtk && tests+=(Testing/test_robustness.py)
timeout 300 "$PYTHON" -m pytest -q -p no:cacheprovider "${tests[@]}" \
  -k "device or cuda or precision or float16 or plain" 2>&1 | tail -20 | tee "$RESULTS/pytest_cuda.txt" || status=1

# 2. CUDA float32 and float16 against the CPU with the benchmark's model and skull: implant Dice must be >= 0.995.
timeout 240 "$PYTHON" - <<'PY' 2>&1 | tee "$RESULTS/precision_agreement.txt" || status=1
import sys, time
sys.path[:0] = ["Testing", "benchmarks"]
from pathlib import Path
import torch
from benchmark_completion import benchmark_volume, model_folder, load_npz
from SkullVAECompletionLib.inference.completion import SkullCompleter
from SkullVAECompletionLib.metrics import dice
cache = Path("/tmp/skullvae_bench")
_, npz = benchmark_volume(cache)
model, text = model_folder(None, cache)
mask, matrix = load_npz(npz)
print(f"model: {text}")
results = {}
for name, device, precision in (("cpu float32", "cpu", "float32"), ("cuda float32", "cuda", "float32"),
                                ("cuda float16", "cuda", "float16"), ("cuda auto", "cuda", "auto")):
    completer = SkullCompleter(str(model), device=device, precision=precision)
    completer.run(mask, matrix, gamma=1.0)  # warm-up (cuDNN plans, allocations)
    tick = time.perf_counter()
    results[name] = completer.run(mask, matrix, gamma=1.0)
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"{name}: Apply {time.perf_counter() - tick:.2f} s, precision used {completer.precision}")
reference = results["cpu float32"].implant
worst = 1.0
for name, result in results.items():
    d = dice(result.implant, reference)
    worst = min(worst, d)
    print(f"implant Dice {name} vs cpu float32: {d:.5f}")
sys.exit(0 if worst >= 0.995 else 1)
PY

# 3. The benchmark on the GPU (pipelines that need slicer-core only where it is installed).
pipelines=seed,engine,cli
has slicer && pipelines=seed,engine,logic,cli
if [ "$QUICK" = 1 ]; then
  timeout 240 "$PYTHON" benchmarks/benchmark_completion.py --device cuda --repeats 1 --pipelines seed,engine \
    --json "$RESULTS/benchmark_cuda_float32.json" 2>&1 | tee "$RESULTS/benchmark_cuda_float32.txt" || status=1
else
  timeout 420 "$PYTHON" benchmarks/benchmark_completion.py --device cuda --repeats 2 --pipelines "$pipelines" \
    --json "$RESULTS/benchmark_cuda_float32.json" 2>&1 | tee "$RESULTS/benchmark_cuda_float32.txt" || status=1
  timeout 240 "$PYTHON" benchmarks/benchmark_completion.py --device cuda --precision auto --repeats 2 \
    --pipelines "${pipelines/seed,/}" --json "$RESULTS/benchmark_cuda_auto.json" 2>&1 \
    | tee "$RESULTS/benchmark_cuda_auto.txt" || status=1
fi
echo "gpu_check: exit status $status (results in $RESULTS)"
exit $status
