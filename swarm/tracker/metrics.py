"""Prometheus metrics of one tracker process (`GET /metrics`, text format).

Each TrackerService has its own registry, so several services in one process
(tests) do not mix their counts.

  swarm_tracker_announces_total{result}   ok, cached, stopped, unauthorized, rate_limited,
                                          invalid, unknown_torrent, refused (another host's peer id or
                                          address, or a peer id naming another host)
  swarm_tracker_scrapes_total{result}     ok, unauthorized, rate_limited, invalid, unknown_torrent
  swarm_tracker_auth_failures_total{reason}  unknown (guessed or missing secret), revoked, rate_limited
  swarm_tracker_certificates_issued_total
  swarm_tracker_publications_total
  swarm_tracker_active_peers              peers in all swarms (the shared store's view with --redis)
  swarm_tracker_enrolled_hosts            tokens not revoked (builders included)
  swarm_tracker_revoked_tokens
  swarm_tracker_manifests                 manifests (repo:tag) currently published
  swarm_tracker_build_info{version, python}

With --workers N every process counts into files of one directory
(prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR, set before
prometheus_client is imported: swarm/tracker/cli.py) and a scrape answered
by any of them sums them all, so counters never go backwards between scrapes.
The gauges are set from shared state at each scrape: the most recent value wins.
"""

from __future__ import annotations

import os
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from swarm.core.buildinfo import BuildInfo

ANNOUNCE_RESULTS = (
    "ok",
    "cached",
    "stopped",
    "unauthorized",
    "rate_limited",
    "invalid",
    "unknown_torrent",
    "retired_torrent",
    "refused",
)
SCRAPE_RESULTS = ("ok", "unauthorized", "rate_limited", "invalid", "unknown_torrent")
AUTH_REASONS = ("unknown", "revoked", "rate_limited")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_LATEST: Literal["mostrecent"] = "mostrecent"


class TrackerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.announces = Counter("swarm_tracker_announces", "Announces answered, by result", ["result"], registry=r)
        self.scrapes = Counter("swarm_tracker_scrapes", "Scrapes answered, by result", ["result"], registry=r)
        self.auth_failures = Counter(
            "swarm_tracker_auth_failures", "Refused authentications, by reason", ["reason"], registry=r
        )
        self.certificates = Counter("swarm_tracker_certificates_issued", "Host certificates signed", registry=r)
        self.publications = Counter("swarm_tracker_publications", "Manifests published", registry=r)
        self.active_peers = Gauge(
            "swarm_tracker_active_peers", "Peers in all swarms", registry=r, multiprocess_mode=_LATEST
        )
        self.enrolled_hosts = Gauge(
            "swarm_tracker_enrolled_hosts", "Tokens not revoked", registry=r, multiprocess_mode=_LATEST
        )
        self.revoked_tokens = Gauge(
            "swarm_tracker_revoked_tokens", "Revoked tokens", registry=r, multiprocess_mode=_LATEST
        )
        self.manifests = Gauge(
            "swarm_tracker_manifests", "Manifests currently published", registry=r, multiprocess_mode=_LATEST
        )
        r.register(BuildInfo("swarm_tracker"))
        # every label shows from the start, at zero
        for result in ANNOUNCE_RESULTS:
            self.announces.labels(result)
        for result in SCRAPE_RESULTS:
            self.scrapes.labels(result)
        for reason in AUTH_REASONS:
            self.auth_failures.labels(reason)

    def render(self) -> bytes:
        registry = self.registry
        if os.environ.get(MULTIPROCESS_DIR):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(BuildInfo("swarm_tracker"))
        data: bytes = generate_latest(registry)
        return data
