#!/usr/bin/env bash
# Set up what prunekit's demo and tests need, on a fresh machine or an existing checkout:
#   .venv         PyTorch 2.14.1 and prunekit (editable); with the tests' level also TensorFlow 2.21,
#                 Keras 3, ONNX and the test tools
#   .venv-mxnet   (tests' level) MXNet 1.9.1, which needs numpy<1.24, with prunekit installed as a user
#                 would (editable, --no-deps: its numpy pin stays) and scikit-learn for --dataset digits
#   the Debian package dataset-fashion-mnist, when apt is usable
# Usage: bash scripts/setup.sh [demo|all]   (default all). Re-running is cheap: environments are rebuilt
# only when this script or pyproject.toml changes, and the demo level is topped up to all in place.
set -euo pipefail
cd "$(dirname "$0")/.."
LEVEL=${1:-all}
PY=${PYTHON:-python3}
VENV=.venv
MXVENV=.venv-mxnet
want=$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -d' ' -f1)

quietly() {  # run a command, showing its output only when it fails
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -40
    echo "[setup] failed: $* (full log: $log)" >&2
    exit 1
  fi
  rm -f "$log"
}

have=$(cat "$VENV/.prunekit-setup" 2>/dev/null || true)
if [ ! -x "$VENV/bin/python" ] || [ "${have%% *}" != "$want" ]; then
  echo "[setup] creating $VENV (PyTorch 2.14.1 from the local wheel cache or PyPI)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  quietly "$VENV/bin/pip" install torch==2.14.1 torchvision==0.29.1
  quietly "$VENV/bin/pip" install -e ".[demo]"
  quietly "$VENV/bin/python" -c "import torch, torchvision, prunekit.torch"
  have="$want demo"
  echo "$have" > "$VENV/.prunekit-setup"
fi
if [ "$LEVEL" = all ] && [ "${have#* }" != all ]; then
  echo "[setup] adding the test tools, TensorFlow 2.21 and Keras 3 to $VENV"
  quietly "$VENV/bin/pip" install -e ".[dev,demo]"
  echo "$want all" > "$VENV/.prunekit-setup"
fi

if [ "$LEVEL" = all ] && { [ ! -x "$MXVENV/bin/python" ] || [ "$(cat "$MXVENV/.prunekit-setup" 2>/dev/null)" != "$want" ]; }; then
  echo "[setup] creating $MXVENV (MXNet 1.9.1 with numpy<1.24, prunekit, scikit-learn)"
  rm -rf "$MXVENV"
  "$PY" -m venv "$MXVENV"
  quietly "$MXVENV/bin/pip" install "numpy<1.24" mxnet==1.9.1 scikit-learn
  quietly "$MXVENV/bin/pip" install -e . --no-deps
  quietly "$MXVENV/bin/python" -c "import mxnet, sklearn, prunekit.mxnet"
  echo "$want" > "$MXVENV/.prunekit-setup"
fi

# Fortune cookies from Debian: the text corpus of examples/integrations/gpt_prune.py (its test makes its own).
if [ "$LEVEL" = all ] && [ ! -d /usr/share/games/fortunes ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  { $SUDO apt-get install -y -qq fortunes || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq fortunes; }; } \
    >/dev/null 2>&1 || echo "[setup] could not install fortunes with apt; examples/integrations/gpt_prune.py needs --corpus"
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
