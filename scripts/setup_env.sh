#!/usr/bin/env bash
# Create ./.venv with everything the engine, the tests and training need. Safe to run again.
# SKULLVAE_TORCH overrides the torch requirement (e.g. "torch==2.13.0+cu121" with an index URL in PIP_EXTRA_INDEX_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: a loose range would pull a multi-GB build when a CPU one is enough.
.venv/bin/python -m pip install --quiet "${SKULLVAE_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "environment ready: $(.venv/bin/python -c 'import torch, monai; print("torch", torch.__version__, "monai", monai.__version__)')" >&2
