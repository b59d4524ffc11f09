#!/usr/bin/env bash
# Set up everything prunekit's demo and tests need, on a fresh machine or an existing checkout:
# a virtual environment in .venv (PyTorch 2.14.1, test tools, prunekit itself, editable) and the
# Debian Fashion-MNIST package when apt is usable. Re-running is cheap: the venv is rebuilt only
# when this script or pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.prunekit-setup"
want=$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[setup] creating $VENV (PyTorch 2.14.1 from the local wheel cache or PyPI; a few minutes)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  log=$(mktemp)
  if ! { "$VENV/bin/pip" install torch==2.14.1 torchvision==0.29.1 &&
         "$VENV/bin/pip" install -e ".[dev,demo]" &&
         "$VENV/bin/python" -c "import torch, torchvision, prunekit.torch"; } >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -40
    echo "[setup] installing into $VENV failed (full log: $log)" >&2
    exit 1
  fi
  rm -f "$log"
  echo "$want" > "$STAMP"
fi

# Fashion-MNIST from Debian (the demo falls back to scikit-learn's digits when it cannot be had).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1; then
    echo "[setup] installed dataset-fashion-mnist"
  else
    echo "[setup] could not install dataset-fashion-mnist with apt; the demo will use scikit-learn's digits"
  fi
fi
