#!/usr/bin/env bash
# The peer tests: this package against the official code run in its own environment (tests/peers, marked
# `peer`). Builds .peer-nnunet first (scripts/peer_nnunet.sh; minutes the first time), then runs them with
# .venv (set up by scripts/setup.sh); a missing peer environment is then a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=dev bash scripts/setup.sh
MEDSEG_PEER_NNUNET="$(bash scripts/peer_nnunet.sh)"
export MEDSEG_PEER_NNUNET MEDSEG_REQUIRE_PEERS=1
exec .venv/bin/python -m pytest -m peer tests/peers "$@"
