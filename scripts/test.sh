#!/usr/bin/env bash
# The test command: set up, then run the whole suite (unit tests, doctests, example smoke runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
exec .venv/bin/python -m pytest tests prunekit --doctest-modules -p no:cacheprovider "$@"
