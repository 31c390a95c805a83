#!/usr/bin/env bash
# Set up .venv (with test tools) and a virtual display if needed, then run the whole test suite.
# GPU tests and benchmarks are skipped here; run them on a CUDA machine with: pytest -m gpu
# Peer tests (the official code in its own environment) run with scripts/test_peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=dev bash scripts/setup.sh
if [ "$(uname)" = Linux ]; then bash scripts/display.sh; fi
exec .venv/bin/python -m pytest -m "not gpu and not peer" "$@"
