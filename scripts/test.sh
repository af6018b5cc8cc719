#!/usr/bin/env bash
# The whole test suite: type check, then unit, integration and e2e tests
# (they start their own dockerds, trackers and agents), in the venv that
# scripts/setup.sh makes (.venv/, or $SWARM_VENV).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
python="${SWARM_VENV:-.venv}/bin/python"
"$python" -m mypy
"$python" -m pytest -q -p no:cacheprovider "$@"
