# swarm container images: one Dockerfile, two targets.
#
#   docker build --target tracker -t swarm-tracker .
#   docker build --target agent   -t swarm-agent .
#
# BASE_IMAGE is any Debian-like image with Python 3.11+ and the venv module
# (`python3 -m venv` must work). The default is the official slim Python
# image; tests/deploy builds one from Debian packages instead (debootstrap,
# `docker import`) because no registry is reachable there. The package and
# its wheels are installed with pip from the build context, so the build
# needs the package index: on an engine without a default bridge, build with
# `--network host`.
#
# Needs no BuildKit feature: tested with the classic builder of Debian's docker.io 20.10.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# a virtual environment keeps swarm's dependencies away from the base image's
# Python packages (and works where the system Python is "externally managed")
RUN python3 -m venv /opt/swarm \
 && /opt/swarm/bin/python -c 'import sys; assert sys.version_info >= (3, 11), sys.version'
COPY pyproject.toml README.md constraints.txt /src/
COPY swarm /src/swarm
# versions pinned by constraints.txt; the tracker target adds its extras below
RUN /opt/swarm/bin/pip install -c /src/constraints.txt /src \
 && /opt/swarm/bin/swarm --version
COPY deploy/docker/entrypoint.sh /usr/local/bin/swarm-entrypoint
COPY deploy/docker/healthcheck.sh /usr/local/bin/swarm-healthcheck
RUN chmod 0755 /usr/local/bin/swarm-entrypoint /usr/local/bin/swarm-healthcheck \
 && (getent group swarm >/dev/null || groupadd --system --gid 10001 swarm) \
 && (getent passwd swarm >/dev/null || useradd --system --uid 10001 --gid swarm --home-dir /var/lib/swarm-tracker \
        --no-create-home --shell /usr/sbin/nologin swarm)
ENV PATH=/opt/swarm/bin:$PATH
ENTRYPOINT ["swarm-entrypoint"]

# The tracker: unprivileged user, state in one volume.
FROM base AS tracker
RUN /opt/swarm/bin/pip install -c /src/constraints.txt '/src[tracker,tracker-ha]' && rm -rf /src
RUN mkdir -p /var/lib/swarm-tracker && chown swarm:swarm /var/lib/swarm-tracker && chmod 0700 /var/lib/swarm-tracker
ENV SWARM_DATA=/var/lib/swarm-tracker \
    SWARM_LISTEN=0.0.0.0:7070
USER swarm
VOLUME ["/var/lib/swarm-tracker"]
EXPOSE 7070
# ready = the database and the peer store answer; https (SWARM_TLS) is verified against the swarm CA
HEALTHCHECK --interval=3s --timeout=5s --start-period=3s --retries=10 \
    CMD ["/usr/local/bin/swarm-healthcheck", "tracker"]
CMD ["swarm", "tracker", "serve"]

# The agent: runs as root inside its container because it talks to a Docker
# engine socket (root-equivalent on that engine anyway); peers on 6881/tcp.
FROM base AS agent
RUN rm -rf /src && mkdir -p /var/lib/swarm && chmod 0700 /var/lib/swarm
ENV SWARM_DATA=/var/lib/swarm \
    SWARM_LISTEN=0.0.0.0:6881 \
    SWARM_METRICS_LISTEN=0.0.0.0:9101
VOLUME ["/var/lib/swarm"]
EXPOSE 6881 9101
# ready = torrent session up, certificate valid, tracker answering (GET /readyz on the metrics port)
HEALTHCHECK --interval=5s --timeout=5s --start-period=5s --retries=6 \
    CMD ["/usr/local/bin/swarm-healthcheck", "agent"]
CMD ["swarm", "agent"]
