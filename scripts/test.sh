#!/usr/bin/env bash
# The whole test suite: type check, then unit, integration and e2e tests
# (they start their own dockerds, trackers and agents).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m mypy
python3 -m pytest -q -p no:cacheprovider "$@"
