#!/usr/bin/env bash
# Create or update .venv with napari-medseg and everything it needs. Safe to run again.
#   EXTRAS=dev bash scripts/setup.sh     also installs the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras="qt${EXTRAS:+,$EXTRAS}"
stamp=".venv/.medseg-installed"
hash="$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)"
# The stamp is "<hash>-<extras>": an install of the same sources whose extras include the wanted ones is
# current (demo.sh wants qt, test.sh qt,dev); otherwise install the union, so alternating never reinstalls.
have="$(cat "$stamp" 2>/dev/null || true)"
current=0
if [ "${have%%-*}" = "$hash" ]; then
  current=1
  for e in ${extras//,/ }; do
    case ",${have#*-}," in *",$e,"*) ;; *) current=0 ;; esac
  done
  [ "$current" = 1 ] || extras="$(tr ',' '\n' <<<"${have#*-},$extras" | sort -u | paste -sd, -)"
fi
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv"
  "$PYTHON" -m venv .venv
fi
if [ "$current" = 0 ]; then
  echo "Installing napari-medseg[$extras] into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch and torchvision first, as a matching pair (CUDA is used when present, CPU otherwise)
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q -e ".[$extras]"
  echo "$hash-$extras" > "$stamp"
fi
