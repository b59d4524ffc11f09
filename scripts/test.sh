#!/usr/bin/env bash
# The test command: set up, then run the whole suite (unit tests, doctests, framework checks, example runs).
# prunekit/mxnet is tested from the MXNet environment (tests/test_frameworks.py runs it there), and the
# scripts in tests/frameworks/ run as subprocesses, so neither is imported by this pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
exec .venv/bin/python -m pytest tests prunekit --doctest-modules -p no:cacheprovider \
  --ignore=prunekit/mxnet --ignore=tests/frameworks "$@"
