#!/bin/sh
# Container HEALTHCHECK for the swarm images: GET /readyz of the service in this container.
#
#   swarm-healthcheck tracker   http(s)://127.0.0.1:<port of SWARM_LISTEN>/readyz; with SWARM_TLS set
#                               true, https verified against the swarm CA in $SWARM_DATA/ca.pem
#   swarm-healthcheck agent     http://127.0.0.1:<port of SWARM_METRICS_LISTEN>/readyz
set -eu

case "${1:-}" in
tracker)
    case "$(echo "${SWARM_TLS:-}" | tr '[:upper:]' '[:lower:]')" in
        1 | true | t | yes | y | on) scheme=https ;;
        *) scheme=http ;;
    esac
    exec swarm probe "$scheme://127.0.0.1:${SWARM_LISTEN##*:}/readyz" --ca "$SWARM_DATA/ca.pem"
    ;;
agent)
    exec swarm probe "http://127.0.0.1:${SWARM_METRICS_LISTEN##*:}/readyz"
    ;;
*)
    echo "usage: swarm-healthcheck tracker|agent" >&2
    exit 2
    ;;
esac
