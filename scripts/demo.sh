#!/usr/bin/env bash
# Tracker + builder + two hosts on this machine, each with its own dockerd:
# an image generated on the spot is seeded and pulled on both hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
exec "${SWARM_VENV:-.venv}/bin/python" scripts/demo.py "$@"
