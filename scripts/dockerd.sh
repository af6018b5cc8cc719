#!/usr/bin/env bash
# A private dockerd in the background, for CI and demos.
#
#   scripts/dockerd.sh DIR          start one (data in DIR/root, socket DIR/docker.sock,
#                                   log DIR/dockerd.log), wait until it answers, print
#                                   DOCKER_HOST=unix://DIR/docker.sock
#   scripts/dockerd.sh --stop DIR   stop it (SIGTERM, wait) and unmount leftovers under DIR
#
# No bridge, no iptables, no NAT: containers use --network none or host.
# Environment: SWARM_DOCKERD (binary), SWARM_DOCKERD_STORAGE_DRIVER (e.g. vfs;
# default: dockerd's choice, overlay2 here), DOCKERD_START_TIMEOUT (seconds, 60).
# Keep DIR short: unix socket paths are limited to 107 bytes and containerd's
# sockets live under DIR/exec/containerd/.
set -euo pipefail

usage() { echo "usage: $0 [--stop] DIR" >&2; exit 2; }

stop=0
if [[ "${1:-}" == "--stop" ]]; then stop=1; shift; fi
[[ $# -eq 1 ]] || usage
mkdir -p "$1"
dir="$(cd "$1" && pwd)"
sock="$dir/docker.sock"
pidfile="$dir/docker.pid"

unmount_under() {
    # deepest first; lazily, so a busy mount does not block the cleanup
    awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo \
        | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2- \
        | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

if [[ $stop -eq 1 ]]; then
    if [[ -f "$pidfile" ]]; then
        pid="$(cat "$pidfile")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        fi
    fi
    unmount_under "$dir"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || { echo "$0: a private dockerd needs root" >&2; exit 1; }
dockerd="${SWARM_DOCKERD:-$(command -v dockerd || echo /usr/sbin/dockerd)}"
[[ -x "$dockerd" ]] || { echo "$0: no dockerd (apt-get install docker.io)" >&2; exit 1; }
probe="$dir/exec/containerd/containerd.sock.ttrpc"
(( ${#probe} <= 100 )) || { echo "$0: $dir is too long for unix socket paths; use a shorter DIR" >&2; exit 1; }
if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "$0: a dockerd already runs for $dir (pid $(cat "$pidfile"))" >&2; exit 1
fi

args=(--data-root "$dir/root" --exec-root "$dir/exec" -H "unix://$sock" --pidfile "$pidfile"
      --bridge=none --iptables=false --ip-masq=false --ip-forward=false --userland-proxy=false)
if [[ -n "${SWARM_DOCKERD_STORAGE_DRIVER:-}" ]]; then
    args+=(--storage-driver "$SWARM_DOCKERD_STORAGE_DRIVER")
fi
setsid "$dockerd" "${args[@]}" </dev/null >>"$dir/dockerd.log" 2>&1 &
pid=$!

answers() {
    [[ -S "$sock" ]] || return 1
    if command -v curl >/dev/null; then
        curl -sf --max-time 2 --unix-socket "$sock" http://docker/_ping >/dev/null 2>&1
    else
        python3 - "$sock" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
sys.exit(0 if b" 200 " in s.recv(64) else 1)
PY
    fi
}
deadline=$(( $(date +%s) + ${DOCKERD_START_TIMEOUT:-60} ))
until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "$0: dockerd exited while starting; last lines of $dir/dockerd.log:" >&2
        tail -n 20 "$dir/dockerd.log" >&2
        exit 1
    fi
    if (( $(date +%s) > deadline )); then
        echo "$0: dockerd did not answer on $sock in time; last lines of $dir/dockerd.log:" >&2
        tail -n 20 "$dir/dockerd.log" >&2
        kill -TERM "$pid" 2>/dev/null || true
        exit 1
    fi
    sleep 0.05
done
echo "DOCKER_HOST=unix://$sock"
