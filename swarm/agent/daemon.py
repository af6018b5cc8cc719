"""`swarm agent`: the long-running daemon on every host, builder included."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from contextlib import AsyncExitStack

from aiohttp import web

from swarm.agent.cache import CacheKeeper
from swarm.agent.config import AgentConfig
from swarm.agent.identity import Identity
from swarm.agent.metrics import AgentMetrics, serve_metrics
from swarm.agent.ops import AgentOps
from swarm.agent.paths import AgentPaths
from swarm.agent.pull import Puller
from swarm.agent.reporter import Reporter, agent_version, receipt_signer
from swarm.agent.server import SocketServer
from swarm.agent.store import BlobStore, ManifestStore
from swarm.agent.tracker_client import TrackerClient
from swarm.core.api import Heartbeat
from swarm.core.errors import TrackerError
from swarm.core.refs import ImageRef, matches
from swarm.engine.session import Engine
from swarm.images.docker_client import connect as docker_connect

log = logging.getLogger(__name__)

#: how often resume data is saved and the cache budget enforced
HOUSEKEEPING_EVERY = 30.0


class Agent:
    """The running agent: every component built and started by `Agent.create`."""

    def __init__(self, config: AgentConfig, paths: AgentPaths, tracker: TrackerClient, identity: Identity,
                 blobs: BlobStore, manifests: ManifestStore, engine: Engine, puller: Puller,
                 cache: CacheKeeper, server: SocketServer, metrics_runner: web.AppRunner | None) -> None:
        self.config = config
        self.paths = paths
        self.tracker = tracker
        self.identity = identity
        self.blobs = blobs
        self.manifests = manifests
        self.engine = engine
        self.puller = puller
        self.cache = cache
        self.server = server
        self._metrics_runner = metrics_runner
        self._tasks: list[asyncio.Task[None]] = []
        self.reporter: Reporter | None = None

    @classmethod
    async def create(cls, config: AgentConfig) -> Agent:
        """Enroll, connect to Docker, start the torrent engine, the socket and /metrics.

        Whatever was started is stopped again if a later step fails.
        """
        paths = AgentPaths(config.data)
        paths.create()
        async with AsyncExitStack() as undo:
            tracker = TrackerClient(config.tracker, config.token)
            undo.push_async_callback(tracker.close)
            identity = Identity(paths, tracker, config.token)
            await identity.enroll()
            # libtorrent's HTTPS announces trust exactly the pinned swarm CA
            os.environ["SSL_CERT_FILE"] = str(paths.ca)
            docker = await asyncio.to_thread(docker_connect, config.docker_host)
            # resume data is trusted only if the last run ended cleanly; otherwise
            # libtorrent re-checks whatever is on disk (verified pieces are kept)
            clean = not paths.running.exists()
            paths.running.touch()
            undo.callback(paths.running.unlink, missing_ok=True)
            if not clean:
                log.warning("the last run did not stop cleanly: partial downloads will be re-checked")
            blobs, manifests, metrics = BlobStore(paths), ManifestStore(paths), AgentMetrics()
            engine = Engine(config.listen, identity.name, paths.cert, paths.key, config.upload_limit,
                            config.download_limit, role=identity.role, resume_dir=paths.resume, observer=metrics)
            engine.start(asyncio.get_running_loop())
            undo.callback(engine.close)
            cache = CacheKeeper(config.cache_size, config.min_seed_time, blobs, manifests, engine, metrics)
            puller = Puller(engine, blobs, manifests, cache, tracker, config.trust, docker, identity.ca_pem,
                            metrics, trust_resume=clean)
            reporter = Reporter(tracker, engine, lambda: identity.name, receipt_signer(paths.key, paths.cert),
                                lambda: Heartbeat(agent_version(), blobs.usage()[0], config.cache_size,
                                                  identity.not_after))
            puller.observer = reporter
            ops = AgentOps(identity, tracker, engine, puller, cache, blobs, manifests, docker, config.trust)
            server = SocketServer(paths.socket, ops.handlers())
            await server.start()
            undo.push_async_callback(server.close)
            runner = await serve_metrics(metrics, config.metrics_listen) if config.metrics_listen else None
            agent = cls(config, paths, tracker, identity, blobs, manifests, engine, puller, cache, server, runner)
            agent.reporter = reporter
            metrics.add_live(agent.live_metrics)
            undo.pop_all()  # from here on, `Agent.stop` owns them
        return agent

    def start(self) -> None:
        """Seed what is here, resume interrupted pulls, start the background tasks."""
        self._reseed()
        engine, paths = self.engine, self.paths
        self._tasks.append(asyncio.create_task(
            self.identity.renew_forever(lambda: engine.set_certificate(paths.cert, paths.key))))
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        if self.reporter is not None:
            self._tasks.append(asyncio.create_task(self.reporter.run()))
        if self.config.watch:
            self._tasks.append(asyncio.create_task(self._watch()))
        for ref in self.blobs.pending_pulls():
            log.info("resuming the pull of %s that was in flight", ref)
            self.puller.start(ImageRef.parse(ref))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.puller.cancel_all()
        await self.server.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        await asyncio.to_thread(self.engine.save_resume_data)
        await asyncio.to_thread(self.engine.close)  # announces `stopped`
        self.paths.running.unlink(missing_ok=True)
        await self.tracker.close()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_EVERY)
            await asyncio.to_thread(self.engine.save_resume_data)
            self.cache.evict()

    def live_metrics(self) -> dict[str, float]:
        used, _count = self.blobs.usage()
        torrents = self.engine.info_hashes()
        peers = sum(1 for ih in torrents for p in self.engine.status(ih).peers if p.connected)
        return {"cache_bytes": used, "cache_budget": self.config.cache_size, "connected_peers": peers,
                "torrents": len(torrents), "sent_bytes": self.engine.uploaded_total(),
                "cert_expiry": self.identity.not_after}

    def _reseed(self) -> None:
        """Serve again every verified blob of every manifest this host knows."""
        for _env, manifest in self.manifests.all():
            for layer in manifest.layers:
                if self.blobs.is_verified(layer.blob):
                    self.engine.add(layer.torrent, self.blobs.blobs_dir, self.tracker.announce_url, seed=True)

    async def _watch(self) -> None:
        """Preheat: pull every newly published tag matching a --watch pattern."""
        since = 0
        while True:
            try:
                since, entries = await self.tracker.watch(since, 30)
            except TrackerError as exc:
                log.warning("watch: %s", exc)
                await asyncio.sleep(5)
                continue
            for entry in entries:
                ref = ImageRef.parse(entry.ref)
                if any(matches(p, ref) for p in self.config.watch):
                    log.info("watch: %s published, pulling", ref)
                    self.puller.start(ref)


async def serve(config: AgentConfig) -> None:
    """Run an agent until SIGTERM or SIGINT (a second one exits at once)."""
    stopping = asyncio.Event()

    def on_signal() -> None:
        if stopping.is_set():
            log.warning("second signal: exiting at once")
            os._exit(1)
        log.info("stopping: saving resume data and announcing stopped (signal again to exit at once)")
        stopping.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    agent = await Agent.create(config)
    try:
        agent.start()
        print(f"agent ready: {agent.identity.name} ({agent.identity.role}), peers on port "
              f"{agent.engine.ssl_port}, socket {agent.paths.socket}", flush=True)
        await stopping.wait()
    finally:
        await agent.stop()


def run_agent(config: AgentConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(serve(config))
