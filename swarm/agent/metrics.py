"""The agent's Prometheus metrics (served on --metrics-listen).

swarm_agent_pulls_total{outcome}   started, completed, failed: started = completed + failed + pulls_in_flight
swarm_agent_certificate_expiry_timestamp_seconds, swarm_agent_build_info{version, python}
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from swarm.core.buildinfo import BuildInfo


class AgentMetrics:
    """Counters fed by the engine (alert thread) and the pull pipeline; gauges read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "swarm_agent_received_bytes", "Payload bytes received from other agents", ["source"], registry=self.registry
        )
        self.failed_pieces = Counter(
            "swarm_agent_pieces_failed_hash",
            "Pieces that failed their hash check (the sending peer lied or broke)",
            registry=self.registry,
        )
        self.pulls = Counter("swarm_agent_pulls", "Pulls by outcome", ["outcome"], registry=self.registry)
        self.pull_seconds = Histogram(
            "swarm_agent_pull_duration_seconds",
            "Time from pull start to image loaded",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        self.cache_over_budget = Gauge(
            "swarm_agent_cache_over_budget_bytes",
            "Bytes the cache is over its budget with nothing left to evict "
            "(downloads under way counted whole), at the last eviction",
            registry=self.registry,
        )
        self.evicted_blobs = Counter(
            "swarm_agent_cache_evicted_blobs", "Blobs evicted to keep the cache budget", registry=self.registry
        )
        self.evicted_bytes = Counter(
            "swarm_agent_cache_evicted_bytes", "Bytes evicted to keep the cache budget", registry=self.registry
        )
        self.registry.register(BuildInfo("swarm_agent"))
        for outcome in ("started", "completed", "failed"):
            self.pulls.labels(outcome)
        for source in ("builder", "host"):
            self.received.labels(source)

    # EngineObserver
    def block_received(self, source_role: str, nbytes: int) -> None:
        self.received.labels("builder" if source_role == "builder" else "host").inc(nbytes)

    def piece_failed(self) -> None:
        self.failed_pieces.inc()

    def add_live(self, read: Callable[[], dict[str, float]]) -> None:
        """Values read from the agent when scraped: cache bytes, connected peers, bytes sent."""
        self.registry.register(_Live(read))

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


class _Live(Collector):
    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        values = self._read()
        yield GaugeMetricFamily("swarm_agent_cache_bytes", "Bytes of blobs in the cache", value=values["cache_bytes"])
        yield GaugeMetricFamily(
            "swarm_agent_cache_budget_bytes", "Cache budget (0: none)", value=values["cache_budget"]
        )
        yield GaugeMetricFamily(
            "swarm_agent_connected_peers", "Peer connections open now", value=values["connected_peers"]
        )
        yield GaugeMetricFamily("swarm_agent_torrents", "Torrents in the session", value=values["torrents"])
        yield CounterMetricFamily(
            "swarm_agent_sent_bytes", "Payload bytes sent to other agents", value=values["sent_bytes"]
        )
        yield GaugeMetricFamily(
            "swarm_agent_certificate_expiry_timestamp_seconds",
            "Unix time at which the host certificate expires",
            value=values["cert_expiry"],
        )
        yield GaugeMetricFamily(
            "swarm_agent_pulls_in_flight",
            "Pulls under way: pulls_total{started} = completed + failed + this",
            value=values["pulls_in_flight"],
        )


async def serve_metrics(
    metrics: AgentMetrics, listen: tuple[str, int], readiness: Callable[[], Awaitable[dict[str, bool]]]
) -> web.AppRunner:
    """/metrics; /healthz (the process answers); /readyz (200 if every check of `readiness` holds, else 503)."""

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(_request: web.Request) -> web.Response:
        checks = await readiness()
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    app = web.Application()
    app.router.add_get("/metrics", handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = listen
    await web.TCPSite(runner, host, port).start()
    return runner
