#!/usr/bin/env bash
# Prepares this checkout on a fresh Debian 12 machine (idempotent; apt-get needs
# root): the Debian packages one use needs, and a virtual environment holding
# swarm and its Python dependencies pinned by constraints.txt. Debian's own
# python3 refuses installs outside a venv (PEP 668, EXTERNALLY-MANAGED).
#
#   scripts/setup.sh --demo    docker.io, busybox-static; swarm
#   scripts/setup.sh [--test]  + the tools the tests drive; swarm[test]
#   scripts/setup.sh --bench   + opentracker, wrk, docker-registry; swarm[test,bench]
#
# Then use $SWARM_VENV/bin/python (default .venv/bin/python) for everything.
# Environment: SWARM_VENV (the venv's directory, .venv), SWARM_PYTHON (the
# interpreter the venv is made from, python3).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 [--demo|--test|--bench]" >&2; exit 2; }
profile=test
case "${1:-}" in
    --demo) profile=demo ;;
    --test | "") profile=test ;;
    --bench) profile=bench ;;
    *) usage ;;
esac
[[ $# -le 1 ]] || usage
venv="${SWARM_VENV:-.venv}"
python="${SWARM_PYTHON:-python3}"

need=()
want() { command -v "$1" >/dev/null || [[ -x "/usr/sbin/$1" ]] || need+=("$2"); }
want "$python" python3
# ensurepip comes with python3-venv on Debian (and the pip and setuptools wheels it installs)
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then need+=(python3-venv); fi
want dockerd docker.io
[[ -x /usr/bin/busybox ]] || need+=(busybox-static)
extras=""
if [[ $profile != demo ]]; then
    extras="test"
    want ip iproute2
    want tcpdump tcpdump
    want skopeo skopeo
    want docker-compose docker-compose
    want debootstrap debootstrap
    want systemd-analyze systemd
    want redis-server redis-server
    want pg_ctlcluster postgresql
    want aria2c aria2
    want transmission-show transmission-cli
    # the fleet page's browser test (tests/integration/test_fleet_page.py): Debian's chromium, driven by playwright
    want chromium chromium
fi
if [[ $profile == bench ]]; then
    extras="test,bench"
    want opentracker opentracker
    want wrk wrk
    want docker-registry docker-registry
fi
if [[ ${#need[@]} -gt 0 ]]; then
    [[ $(id -u) -eq 0 ]] || { echo "$0: missing Debian packages ${need[*]}; run as root to install them" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! "$venv/bin/python" -c '' 2>/dev/null; then
    "$python" -m venv --clear "$venv"
fi
spec="."
[[ -z $extras ]] || spec=".[$extras]"
# skip pip when nothing it reads changed since the last run of this profile
stamp="$venv/.swarm-setup-$profile"
want_stamp="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) $(readlink -f .)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e "$spec"
    echo "$want_stamp" >"$stamp"
fi
