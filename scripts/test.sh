#!/usr/bin/env bash
# Set up ./.venv (if needed) and run the whole test suite. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
.venv/bin/python -m ruff check . || exit 1
start=$(date +%s)
.venv/bin/python -m pytest Testing "$@"
status=$?
# The whole suite's wall time, for keeping an eye on it (pytest's own figure leaves out collection and start-up).
echo "test suite: $(( $(date +%s) - start )) s in total (pytest exit status $status)"
if [ "$status" -eq 5 ]; then
  # pytest's "no tests collected": say so plainly instead of failing on an empty selection.
  echo "pytest collected no tests for this selection" >&2
  exit 0
fi
exit "$status"
