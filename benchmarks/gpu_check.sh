#!/usr/bin/env bash
# GPU check for a lent CUDA machine (not run in the session that wrote it: it had no GPU).
# Runs, in about 5 minutes: the CUDA tests, the float16-vs-float32 agreement check on the GPU, and the benchmark
# with --device cuda (float32, then precision auto). Writes everything to ${OUT:-benchmarks/gpu_results}.
#   bash benchmarks/gpu_check.sh            # from the repository root
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${OUT:-benchmarks/gpu_results}"
mkdir -p "$RESULTS"
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
export PYTHONPATH="SkullVAECompletion:.${PYTHONPATH:+:$PYTHONPATH}"
status=0

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; } > "$RESULTS/machine.txt" 2>&1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" \
  | tee -a "$RESULTS/machine.txt" || { echo "no usable CUDA device: stopping"; exit 2; }

# 1. Tests that take the CUDA path when a GPU is present (device choice, OOM fallback, precision, Logic device).
timeout 300 python -m pytest -q -p no:cacheprovider Testing/test_completion.py Testing/test_robustness.py \
  -k "device or cuda or precision or float16 or plain" 2>&1 | tail -20 | tee "$RESULTS/pytest_cuda.txt" || status=1

# 2. float16 vs float32 on the GPU with the benchmark's model: Dice of the implants must be >= 0.995.
timeout 180 python - <<'PY' 2>&1 | tee "$RESULTS/precision_agreement.txt" || status=1
import sys, numpy as np
sys.path[:0] = ["Testing", "benchmarks"]
from pathlib import Path
from benchmark_completion import benchmark_volume, model_folder, load_npz
from SkullVAECompletionLib.completion import SkullCompleter
from SkullVAECompletionLib.metrics import dice
cache = Path("/tmp/skullvae_bench")
_, npz = benchmark_volume(cache)
model, text = model_folder(None, cache)
mask, matrix = load_npz(npz)
full = SkullCompleter(str(model), device="cuda").run(mask, matrix, gamma=1.0)
half = SkullCompleter(str(model), device="cuda", precision="float16").run(mask, matrix, gamma=1.0)
auto = SkullCompleter(str(model), device="cuda", precision="auto")
auto.run(mask, matrix, gamma=1.0)
d = dice(half.implant, full.implant)
print(f"model: {text}\nimplant Dice float16 vs float32: {d:.5f}; completed: {dice(half.completed, full.completed):.5f}")
print(f"precision 'auto' chose: {auto.precision}")
sys.exit(0 if d >= 0.995 else 1)
PY

# 3. The benchmark on the GPU: float32, then "auto" (float16 after the agreement check).
timeout 420 python benchmarks/benchmark_completion.py --device cuda --repeats 2 \
  --json "$RESULTS/benchmark_cuda_float32.json" 2>&1 | tee "$RESULTS/benchmark_cuda_float32.txt" || status=1
timeout 240 python benchmarks/benchmark_completion.py --device cuda --precision auto --repeats 2 \
  --pipelines engine,logic --json "$RESULTS/benchmark_cuda_auto.json" 2>&1 | tee "$RESULTS/benchmark_cuda_auto.txt" \
  || status=1
echo "gpu_check: exit status $status (results in $RESULTS)"
exit $status
