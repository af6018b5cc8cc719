#!/bin/sh
# docker-compose's one-shot `init` service (tracker image, run as root):
#   - the builder's signing key in the builder-key volume (/keys/builder.key, 0600;
#     its public key in /keys/builder.pub);
#   - for each NAME:ROLE argument, a join token made by the tracker's CLI, written
#     to /agents/NAME/join-token (0600) in that agent's own data volume, and for
#     hosts the builder's public key to /agents/NAME/trust.pub.
# Idempotent: what exists is kept, so `docker-compose up` may run it again.
set -eu

# the tracker's database belongs to the unprivileged user `swarm`
as_swarm() { setpriv --reuid=swarm --regid=swarm --init-groups -- "$@"; }

if [ ! -s /keys/builder.key ]; then
    rm -f /keys/builder.key /keys/builder.pub
    swarm keygen /keys/builder.key >/keys/builder.pub.tmp
    mv /keys/builder.pub.tmp /keys/builder.pub
    echo "init: builder signing key made; public key $(cat /keys/builder.pub)"
fi

for spec in "$@"; do
    name="${spec%%:*}"
    role="${spec#*:}"
    dir="/agents/$name"
    [ -d "$dir" ] || { echo "init: no volume mounted at $dir" >&2; exit 1; }
    chmod 0700 "$dir"
    if [ ! -s "$dir/join-token" ]; then
        umask 077
        if [ "$role" = builder ]; then
            # a builder token is bound to its signing key when it is made
            as_swarm swarm tracker token create "$name" --role builder --key "$(cat /keys/builder.pub)" \
                >"$dir/join-token.tmp"
        else
            as_swarm swarm tracker token create "$name" --role "$role" >"$dir/join-token.tmp"
        fi
        mv "$dir/join-token.tmp" "$dir/join-token"
        echo "init: $role token for $name written to its volume"
    fi
    if [ "$role" = host ]; then
        cp /keys/builder.pub "$dir/trust.pub"
    fi
done
echo "init: done"
