#!/usr/bin/env bash
# Set up .venv if needed and open napari with the MedSeg widget and a sample CT.
# Without a display it runs on a virtual one (Xvfb) and saves a screenshot (medseg-demo.png).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ "$(uname)" = Linux ]; then bash scripts/display.sh; fi
exec .venv/bin/medseg demo "$@"
