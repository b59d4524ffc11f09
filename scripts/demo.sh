#!/usr/bin/env bash
# The demo command: set up, then prune the seed CNN on Fashion-MNIST to 95% beside a dense baseline.
# Extra arguments go to `prunekit demo` (see `prunekit demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
exec .venv/bin/prunekit demo "$@"
