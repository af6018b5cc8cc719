#!/usr/bin/env bash
# Checks the lower bounds in pyproject.toml: a fresh venv with every dependency
# (core, tracker, tracker-ha and the test tools) at exactly its floor, then the
# unit tests and the tracker, TLS, peer-store and Docker integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
"${SWARM_PYTHON:-python3}" -m venv "$scratch/venv"
py="$scratch/venv/bin/python"
# "name>=X" -> "name==X" for every requirement with a floor (no floor: left as it is)
"$py" - >"$scratch/floors.txt" <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = project["dependencies"] + [r for extra in ("tracker", "tracker-ha", "test")
                                  for r in project["optional-dependencies"][extra] if not r.startswith("swarm[")]
for req in reqs:
    print(re.sub(r">=([^,\s]+)(,<[^\s]+)?", r"==\1", req))
PY
"$py" -m pip install -q --disable-pip-version-check -r "$scratch/floors.txt"
export PYTHONPATH="$PWD"
"$py" -m pytest -q -p no:cacheprovider tests/unit tests/integration/test_tracker_http.py \
    tests/integration/test_tracker_https.py tests/integration/test_tracker_peerstores.py \
    tests/integration/test_images_docker.py
