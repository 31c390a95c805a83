#!/usr/bin/env bash
# Install the X virtual framebuffer and the Qt xcb libraries when there is no display (Debian/Ubuntu).
set -euo pipefail
# grep reads ldconfig's whole listing from a process substitution: in a pipe under pipefail, grep -q
# exiting at the first match kills ldconfig with SIGPIPE and the check fails at random.
if command -v Xvfb >/dev/null 2>&1 && grep -q libxcb-icccm.so.4 < <(ldconfig -p 2>/dev/null); then exit 0; fi
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "No display and no apt-get: install Xvfb and run 'xvfb-run -a .venv/bin/medseg demo'" >&2; exit 1
fi
echo "Installing Xvfb (virtual display) and Qt's X11 libraries"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 \
  libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 >/dev/null
