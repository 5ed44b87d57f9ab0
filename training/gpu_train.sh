#!/usr/bin/env bash
# Train candidate models on a CUDA machine in one go (about 8 minutes on one H200):
#   1. the GPU population: data_small.yaml's 60 sources + EXTRA_TRAIN_SOURCES more training sources (the
#      validation and test sources stay those of the CPU population, so results compare);
#   2. the model-grid cache, once (the runs below share it);
#   3. stage 1 then stage 2 of each variant of training/configs/bundled_gpu.yaml, all variants at once on the one
#      GPU (the network is small: one run leaves most of the GPU idle), each stage within its time budget;
#   4. slim checkpoints (weights, config, history; no optimiser) and the logs into ${OUT:-training/gpu_results}.
# Then, on any machine: aggregate a returned checkpoint into a bundle (training/README.md, "The GPU recipe").
#   bash training/gpu_train.sh            # from the repository root; needs torch with CUDA, monai, pynrrd
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${OUT:-training/gpu_results}"
LOGS="$RESULTS/logs"  # packed into logs.tar.gz at the end (few files to copy back from a short-lived machine)
mkdir -p "$LOGS"
export SKULLVAE_WORK="${SKULLVAE_WORK:-/tmp/skullvae_gpu_work}"
export PYTHONPATH="SkullVAECompletion:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
EXTRA_TRAIN_SOURCES="${EXTRA_TRAIN_SOURCES:-336}"
WORKERS="${WORKERS:-$(nproc)}"
TOTAL_S="${TOTAL_S:-540}"   # the whole script's budget: the stages share what data preparation leaves of it
STAGE1_SHARE="${STAGE1_SHARE:-55}"  # per cent of the training time for stage 1
# STAGE2_FROM: a (slim) stage-2 checkpoint to continue instead of training from the start: every variant skips
# stage 1 and continues that checkpoint's stage 2 for the whole budget (e.g. the candidate model 2.2, carried).
STAGE2_FROM="${STAGE2_FROM:-}"
[ -n "$STAGE2_FROM" ] && STAGE1_SHARE=0
CONFIG=training/configs/bundled_gpu.yaml
# name|overrides of bundled_gpu.yaml (space separated --set values)
VARIANTS="${VARIANTS:-l32_warm|stage1.init_from=Resources/Models/skullvae-cranium-population
l64|network.latent_size=64
l64_beta003|network.latent_size=64 stage1.beta=0.03}"

{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null; nproc; date -u; } >"$LOGS/machine.txt"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$LOGS/machine.txt"

SECONDS=0
if [ ! -f "$SKULLVAE_WORK/skullvae_data_gpu/cases.csv" ]; then
  "$PYTHON" -m training.generate --config training/configs/data_small.yaml --out "$SKULLVAE_WORK/skullvae_data_gpu" \
    --extra-train-sources "$EXTRA_TRAIN_SOURCES" --workers "$WORKERS" >"$LOGS/generate.log" 2>&1 \
    || { tail -20 "$LOGS/generate.log"; echo "gpu_train: generation failed"; exit 2; }
fi
echo "generated the population in ${SECONDS} s"
"$PYTHON" - "$CONFIG" "$WORKERS" <<'PY' 2>"$LOGS/preprocess.log" || { tail -20 "$LOGS/preprocess.log"; exit 2; }
import sys
from training import train
cfg = train.load_config(sys.argv[1], {"data": {"preprocess_workers": int(sys.argv[2])}})
sets = train.load_volumes(cfg, ("train", "val"))
print({k: len(v.volumes) for k, v in sets.items()}, "model-grid volumes")
PY
# Stage 1 gets STAGE1_SHARE % of the time left (less 30 s for the export), stage 2 the rest. Each stage's training
# budget leaves 50 s of its share for loading and the epoch that crosses the budget; the hard timeout is the share.
LEFT=$((TOTAL_S - SECONDS - 30))
STAGE1_S=$((LEFT * STAGE1_SHARE / 100)); STAGE2_S=$((LEFT - STAGE1_S))
budget_min() { "$PYTHON" -c "print(round(max(0.25, ($1 - 50) / 60), 2))"; }
echo "model-grid cache ready at ${SECONDS} s; stage 1: ${STAGE1_S} s, stage 2: ${STAGE2_S} s per variant"
train_variant() {
  local name=$1; shift
  local sets=(--set "output_dir=$SKULLVAE_WORK/runs/$name")
  for item in "$@"; do sets+=(--set "$item"); done
  if [ -n "$STAGE2_FROM" ]; then  # stage 1 is inside that checkpoint's model (frozen encoder)
    mkdir -p "$SKULLVAE_WORK/runs/$name/stage1" "$SKULLVAE_WORK/runs/$name/stage2"
    cp "$STAGE2_FROM" "$SKULLVAE_WORK/runs/$name/stage1/last.pt"
    cp "$STAGE2_FROM" "$SKULLVAE_WORK/runs/$name/stage2/last.pt"
  else
    timeout "$STAGE1_S" "$PYTHON" -m training.train stage1 --resume --config "$CONFIG" "${sets[@]}" \
      --set "stage1.time_limit_min=$(budget_min "$STAGE1_S")"
  fi
  if [ -f "$SKULLVAE_WORK/runs/$name/stage1/last.pt" ]; then
    timeout "$STAGE2_S" "$PYTHON" -m training.train stage2 --resume --config "$CONFIG" "${sets[@]}" \
      --set "stage2.time_limit_min=$(budget_min "$STAGE2_S")"
  fi
}
while IFS='|' read -r name overrides; do
  [ -n "$name" ] || continue
  # shellcheck disable=SC2086  # the overrides are space-separated on purpose
  train_variant "$name" $overrides >"$LOGS/$name.log" 2>&1 &
done <<<"$VARIANTS"
wait
echo "trained at ${SECONDS} s"

status=0
while IFS='|' read -r name _; do
  [ -n "$name" ] || continue
  for stage in stage2 stage1; do  # the stage-2 checkpoint holds the whole model; stage 1 if stage 2 failed
    checkpoint="$SKULLVAE_WORK/runs/$name/$stage/last.pt"
    if [ -f "$checkpoint" ]; then
      "$PYTHON" -c "from training.train import slim_checkpoint; slim_checkpoint('$checkpoint', '$RESULTS/${name}_$stage.pt')"
      break
    fi
  done
  [ -f "$RESULTS/${name}_stage2.pt" ] || { echo "gpu_train: $name has no stage-2 checkpoint"; status=1; }
  grep -h "INFO training.train: stage. epoch" "$LOGS/$name.log" | tail -2
done <<<"$VARIANTS"
for log_csv in "$SKULLVAE_WORK"/runs/*/stage*/log.csv; do
  [ -f "$log_csv" ] && cp "$log_csv" "$LOGS/$(basename "$(dirname "$(dirname "$log_csv")")")_$(basename "$(dirname "$log_csv")").csv"
done
tar -czf "$RESULTS/logs.tar.gz" -C "$RESULTS" logs && rm -r "$LOGS"
ls -la "$RESULTS"
echo "gpu_train: exit status $status after ${SECONDS} s (results in $RESULTS)"
exit $status
