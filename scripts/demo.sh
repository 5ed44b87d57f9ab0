#!/usr/bin/env bash
# Set up ./.venv (if needed) and complete the sample skull (a real patient CT with a real
# fronto-temporal defect) with the bundled model. Results go to ./demo_output/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/skullvae-complete Resources/SampleData/CraniumSkull.nrrd --output-dir demo_output --overwrite "$@"
echo "demo results in $(pwd)/demo_output" >&2
