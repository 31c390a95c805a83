#!/usr/bin/env bash
# Create or update .peer-nnunet, a virtual environment with the official nnU-Net v2 (nnunetv2 2.8) that the
# parity tests (tests/peers, marked `peer`) run as a separate process. It is separate from .venv because
# nnunetv2's dynamic-network-architectures pins timm < 1.0.23. Safe to run again: a current one is kept.
# Prints the environment's python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
venv=.peer-nnunet
requirements=("torch==2.14.1" "nnunetv2==2.8.*")
stamp="$venv/.peer-installed"
want="$(printf '%s\n' "${requirements[@]}" | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    echo "Creating $venv" >&2
    "$PYTHON" -m venv "$venv"
  fi
  echo "Installing ${requirements[*]} into $venv (a few minutes the first time)" >&2
  "$venv/bin/python" -m pip install -q "${requirements[@]}" >&2
  echo "$want" > "$stamp"
fi
echo "$PWD/$venv/bin/python"
