#!/usr/bin/env bash
# The Docker engines the compose demo's agents load images into: one dockerd
# per agent (builder, host1, host2, host3), each with its own data root and
# its own socket, started on this machine.
#
#   deploy/compose/engines.sh [DIR]          start them (default DIR: $SWARM_ENGINES_DIR
#                                            or /run/swarm-compose), wait until each answers
#   deploy/compose/engines.sh --stop [DIR]   stop them and unmount what they left
#
# Layout: DIR/NAME/socket/docker.sock (the directory docker-compose.yml
# bind-mounts into the agent NAME at /run/engine), DIR/NAME/root (images),
# DIR/NAME/exec, DIR/NAME/dockerd.log. The socket has a directory of its own
# so that an agent sees a restarted engine's new socket, and never the
# engine's data root.
#
# Why separate engines: every host must load into an engine of its own, or a
# host would find the image "already loaded" by another and skip the
# download, and the demo would prove nothing. The engines use no bridge, no
# iptables and no NAT: they only load and run images (--network none).
# Environment: SWARM_ENGINES (names, default "builder host1 host2 host3"),
# SWARM_DOCKERD (binary), SWARM_DOCKERD_STORAGE_DRIVER, DOCKERD_START_TIMEOUT (60).
set -euo pipefail

usage() { echo "usage: $0 [--stop] [DIR]" >&2; exit 2; }
stop=0
if [[ "${1:-}" == "--stop" ]]; then stop=1; shift; fi
[[ $# -le 1 ]] || usage
base="${1:-${SWARM_ENGINES_DIR:-/run/swarm-compose}}"
read -r -a names <<<"${SWARM_ENGINES:-builder host1 host2 host3}"

unmount_under() {
    # deepest first; lazily, so a busy mount does not block the cleanup
    awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo \
        | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2- \
        | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

stop_one() {
    local dir="$1" pid
    if [[ -f "$dir/docker.pid" ]]; then
        pid="$(cat "$dir/docker.pid")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        fi
        rm -f "$dir/docker.pid"
    fi
    unmount_under "$dir"
}

if [[ $stop -eq 1 ]]; then
    [[ -d "$base" ]] || exit 0
    base="$(cd "$base" && pwd)"
    for name in "${names[@]}"; do stop_one "$base/$name"; done
    echo "engines stopped (state kept in $base; remove it to start afresh)"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || { echo "$0: starting dockerd needs root" >&2; exit 1; }
dockerd="${SWARM_DOCKERD:-$(command -v dockerd || echo /usr/sbin/dockerd)}"
[[ -x "$dockerd" ]] || { echo "$0: no dockerd (apt-get install docker.io)" >&2; exit 1; }
mkdir -p "$base"
base="$(cd "$base" && pwd)"

answers() {
    python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
sys.exit(0 if b" 200 " in s.recv(64) else 1)
PY
}

declare -A pids
for name in "${names[@]}"; do
    dir="$base/$name"
    probe="$dir/exec/containerd/containerd.sock.ttrpc"
    (( ${#probe} <= 100 )) || { echo "$0: $base is too long for unix socket paths; use a shorter DIR" >&2; exit 1; }
    if [[ -f "$dir/docker.pid" ]] && kill -0 "$(cat "$dir/docker.pid")" 2>/dev/null; then
        echo "$name: already running (pid $(cat "$dir/docker.pid"))"
        continue
    fi
    mkdir -p "$dir/socket"
    chmod 0711 "$dir"
    args=(--data-root "$dir/root" --exec-root "$dir/exec" -H "unix://$dir/socket/docker.sock"
          --pidfile "$dir/docker.pid" --bridge=none --iptables=false --ip-masq=false --ip-forward=false
          --userland-proxy=false)
    if [[ -n "${SWARM_DOCKERD_STORAGE_DRIVER:-}" ]]; then
        args+=(--storage-driver "$SWARM_DOCKERD_STORAGE_DRIVER")
    fi
    setsid "$dockerd" "${args[@]}" </dev/null >>"$dir/dockerd.log" 2>&1 &
    pids[$name]=$!
done

deadline=$(( $(date +%s) + ${DOCKERD_START_TIMEOUT:-60} ))
for name in "${!pids[@]}"; do
    dir="$base/$name"
    until answers "$dir/socket/docker.sock"; do
        if ! kill -0 "${pids[$name]}" 2>/dev/null; then
            echo "$0: dockerd for $name exited while starting; last lines of $dir/dockerd.log:" >&2
            tail -n 20 "$dir/dockerd.log" >&2
            exit 1
        fi
        if (( $(date +%s) > deadline )); then
            echo "$0: dockerd for $name did not answer in time; see $dir/dockerd.log" >&2
            exit 1
        fi
        sleep 0.1
    done
done
for name in "${names[@]}"; do
    echo "$name: DOCKER_HOST=unix://$base/$name/socket/docker.sock"
done
