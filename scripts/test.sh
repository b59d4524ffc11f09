#!/usr/bin/env bash
# The test command: set up, then run the whole suite (unit tests, doctests, framework checks, example runs).
# The MXNet, Keras and TF1 adapters are tested in their own processes (tests/test_frameworks.py): TensorFlow in
# the torch process can crash a later triton import, and MXNet lives in .venv-mxnet. The
# scripts in tests/frameworks/ run as subprocesses, so neither is imported by this pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
exec .venv/bin/python -m pytest tests prunekit --doctest-modules -p no:cacheprovider \
  --ignore=prunekit/mxnet --ignore=prunekit/keras --ignore=prunekit/tf1 --ignore=prunekit/ir/keras_build.py --ignore=prunekit/ir/keras_layers.py \
  --ignore=tests/frameworks "$@"
