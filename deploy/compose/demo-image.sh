#!/usr/bin/env bash
# Build a small demo image in the builder's engine, with no registry: FROM
# scratch, a static busybox (Debian's busybox-static) and a few MiB of random
# data, so that there is something to seed.
#
#   deploy/compose/demo-image.sh [TAG] [MIB]     (default demo/hello:1, 16)
#
# Environment: SWARM_ENGINES_DIR (default /run/swarm-compose).
# Running it: docker run --rm --network none TAG (in an engine that has it)
set -euo pipefail
tag="${1:-demo/hello:1}"
mib="${2:-16}"
export DOCKER_HOST="unix://${SWARM_ENGINES_DIR:-/run/swarm-compose}/builder/socket/docker.sock"
busybox=/usr/bin/busybox
[[ -x "$busybox" ]] || { echo "$0: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin" "$ctx/data"
cp "$busybox" "$ctx/bin/busybox"
for applet in sh cat ls sha256sum; do ln -s busybox "$ctx/bin/$applet"; done
head -c "$((mib * 1024 * 1024))" /dev/urandom >"$ctx/data/random.bin"
echo "hello from $tag, delivered by swarm" >"$ctx/hello.txt"
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY bin/ /bin/
COPY data/ /data/
COPY hello.txt /hello.txt
CMD ["/bin/sh", "-c", "cat /hello.txt; sha256sum /data/random.bin"]
DOCKERFILE
# the classic builder: Debian's engine 20.10 has no BuildKit front end here
DOCKER_BUILDKIT=0 docker build --network none -q -t "$tag" "$ctx" >/dev/null
echo "$tag $(docker image inspect --format '{{.Id}}' "$tag") in the engine at $DOCKER_HOST"
