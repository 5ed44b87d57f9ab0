#!/usr/bin/env bash
# Check the module in the real 3D Slicer application (>= 5.10): what the slicer-core tests cannot show.
#
#   scripts/slicer_check.sh /path/to/Slicer [OUTPUT_DIR]
#
# 1. Runs the module's self-test headless (--no-main-window --testing): it completes a synthetic skull with the
#    bundled model, or reports "skipped" when PyTorch is not installed (testing mode installs nothing).
# 2. Starts Slicer with its main window, opens the module and saves a screenshot of the panel
#    (OUTPUT_DIR/SkullVAECompletion-panel.png, default OUTPUT_DIR: ./slicer-check).
# 3. Prints the checklist of what only the application shows; go through it by hand.
# The module is loaded from this checkout (--additional-module-paths): no extension install is needed.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  echo "usage: $0 SLICER_EXECUTABLE [OUTPUT_DIR]" >&2
  exit 2
fi
SLICER="$1"
if [[ ! -x "$SLICER" || -d "$SLICER" ]]; then
  echo "error: $SLICER is not an executable (give the Slicer launcher, e.g. ~/Slicer-5.10.0-linux-amd64/Slicer)" >&2
  exit 2
fi
OUT="$(mkdir -p "${2:-slicer-check}" && cd "${2:-slicer-check}" && pwd)"
MODULE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../SkullVAECompletion" && pwd)"

echo "== 1/3 self-test (headless, testing mode)"
"$SLICER" --no-splash --no-main-window --testing --disable-settings \
  --additional-module-paths "$MODULE_DIR" \
  --python-code "
import sys, traceback
try:
    slicer.selfTests['SkullVAECompletion']()  # registered by the module at start-up
    print('SELF-TEST PASSED (or skipped: see the message above)')
    exit_code = 0
except Exception:
    traceback.print_exc()
    print('SELF-TEST FAILED')
    exit_code = 1
slicer.util.exit(exit_code)
" 2>&1 | tee "$OUT/self-test.log"
status=${PIPESTATUS[0]}
[[ $status -eq 0 ]] || { echo "self-test failed (exit $status); log: $OUT/self-test.log" >&2; exit 1; }

echo "== 2/3 screenshot of the module panel"
"$SLICER" --no-splash --disable-settings --additional-module-paths "$MODULE_DIR" \
  --python-code "
import qt, slicer
def grab():
    try:
        slicer.util.selectModule('SkullVAECompletion')
        slicer.app.processEvents()
        slicer.util.mainWindow().grab().save(r'$OUT/SkullVAECompletion-panel.png')
        print('screenshot: $OUT/SkullVAECompletion-panel.png')
        slicer.util.exit(0)
    except Exception as error:
        print('SCREENSHOT FAILED:', error)
        slicer.util.exit(1)
qt.QTimer.singleShot(3000, grab)
" 2>&1 | tee "$OUT/screenshot.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "screenshot failed; log: $OUT/screenshot.log" >&2; exit 1; }

echo "== 3/3 checklist: start Slicer with --additional-module-paths \"$MODULE_DIR\" and check by hand"
cat <<'CHECKLIST'
[ ] The panel connects: opening the module shows no error in the Python console; the combo boxes list the
    defect types, methods, extractions and devices; choosing a skull fills the segment list.
[ ] Segment list refresh on enter: add a segment to the input in Segment Editor, come back: it is offered.
[ ] Sections disabled during a run: while Apply runs (button reads Cancel) the CT, input, design, gamma and
    advanced sections are greyed out; a design value changed just before Apply is applied after it.
[ ] Preview follows the last slider move: after Apply, with live preview on, drag gamma quickly and let go:
    the result and status show the last gamma, not an intermediate one.
[ ] Skull from CT on a fresh install (no PyTorch): select a head CT, Extract skull works without installing
    PyTorch; Apply then offers to install PyTorch (through the PyTorch extension) after one confirmation.
[ ] Category: the module is listed under Segmentation (also with a non-English Slicer language).
[ ] Reload and Test (Developer mode) passes, or says "skipped" without PyTorch.
CHECKLIST
echo "results in $OUT"
