#!/bin/sh
# Container entrypoint for the swarm images: secrets from files, then exec.
#
#   SWARM_TOKEN_FILE=/path   the join token is read from this file into SWARM_TOKEN
#   SWARM_TRUST_FILE=/path   builder public keys (one per line) into SWARM_TRUST
#
# So a token lives in a file (a volume, a Docker secret) instead of the
# container's configuration, where `docker inspect` would show it. The
# command runs as PID 1's replacement (exec), so signals reach swarm.
set -eu

read_file() {
    if [ ! -r "$1" ]; then
        echo "swarm-entrypoint: cannot read $2 file $1" >&2
        exit 1
    fi
    # one line of words, whatever the file's line breaks
    tr -s ' \t\r\n' ' ' <"$1" | sed 's/^ //; s/ $//'
}

if [ -n "${SWARM_TOKEN_FILE:-}" ]; then
    SWARM_TOKEN="$(read_file "$SWARM_TOKEN_FILE" SWARM_TOKEN_FILE)"
    export SWARM_TOKEN
fi
if [ -n "${SWARM_TRUST_FILE:-}" ]; then
    SWARM_TRUST="$(read_file "$SWARM_TRUST_FILE" SWARM_TRUST_FILE)"
    export SWARM_TRUST
fi
unset SWARM_TOKEN_FILE SWARM_TRUST_FILE
exec "$@"
