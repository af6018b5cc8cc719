#!/usr/bin/env bash
# Installs what swarm needs on a fresh Debian 12 machine (idempotent): Docker's
# engine from Debian, a static busybox for test images, and the package itself.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v dockerd >/dev/null || need+=(docker.io)
[ -x /usr/bin/busybox ] || need+=(busybox-static)
command -v ip >/dev/null || need+=(iproute2)
command -v skopeo >/dev/null || need+=(skopeo)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v redis-server >/dev/null || need+=(redis-server)
command -v pg_ctlcluster >/dev/null || need+=(postgresql)
command -v aria2c >/dev/null || need+=(aria2)
command -v transmission-show >/dev/null || need+=(transmission-cli)
command -v tcpdump >/dev/null || need+=(tcpdump)
# the fleet page's browser test (tests/integration/test_fleet_page.py): Debian's chromium, driven by playwright
command -v chromium >/dev/null || need+=(chromium)
# benchmarks only (bench/): the reference tracker, a load generator, a registry
command -v opentracker >/dev/null || need+=(opentracker)
command -v wrk >/dev/null || need+=(wrk)
command -v docker-registry >/dev/null || need+=(docker-registry)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test,bench]'
