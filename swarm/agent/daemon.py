"""`swarm agent`: the long-running daemon on every host, builder included."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

import click
from aiohttp import web

from swarm.agent import allocator
from swarm.agent.cache import CacheKeeper
from swarm.agent.config import AgentConfig
from swarm.agent.identity import Identity
from swarm.agent.metrics import AgentMetrics, serve_metrics
from swarm.agent.ops import AgentOps
from swarm.agent.paths import AGENT_UMASK, AgentPaths
from swarm.agent.peer_names import TrackerPeerNames
from swarm.agent.pull import Puller
from swarm.agent.reporter import Reporter, agent_version, receipt_signer
from swarm.agent.server import SocketServer
from swarm.agent.store import BlobStore, ManifestStore
from swarm.agent.tracker_client import TrackerClient
from swarm.agent.trust import HostTrust, KeyDocumentFollower, TagHistory
from swarm.core import logs, redact
from swarm.core.api import Heartbeat, ManifestEntry
from swarm.core.errors import SwarmError, TrackerUnreachable
from swarm.core.refs import ImageRef, matches
from swarm.core.torrent import manifest_group_id
from swarm.engine.session import Engine
from swarm.images.docker_client import connect as docker_connect

log = logging.getLogger(__name__)

#: how often resume data is saved and the cache budget enforced
HOUSEKEEPING_EVERY = 30.0
#: first and longest pause between attempts to reach the tracker at start
RETRY_FIRST, RETRY_MAX = 1.0, 60.0
#: settings SIGHUP applies to the running agent; any other change waits for a restart
LIVE_SETTINGS = ("upload_limit", "download_limit", "watch", "trust", "log_level")


async def enroll_when_reachable(identity: Identity, tracker_url: str, wait: float) -> None:
    """Enroll, retrying an unreachable tracker with back-off for `wait` seconds (0: forever).

    A refusal (bad or revoked token, foreign CA) is final at once; one line per attempt, and the
    pauses double up to a minute, so an agent started before its tracker neither dies nor floods."""
    deadline = None if wait == 0 else time.monotonic() + wait
    delay = RETRY_FIRST
    while True:
        try:
            await identity.enroll()
            return
        except TrackerUnreachable as exc:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise
            pause = delay if left is None else min(delay, left)
            log.warning("%s; retrying in %.0fs", exc, pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, RETRY_MAX)


class Agent:
    """The running agent: every component built and started by `Agent.create`."""

    def __init__(
        self,
        config: AgentConfig,
        paths: AgentPaths,
        tracker: TrackerClient,
        identity: Identity,
        blobs: BlobStore,
        manifests: ManifestStore,
        engine: Engine,
        puller: Puller,
        cache: CacheKeeper,
        server: SocketServer,
        metrics_runner: web.AppRunner | None,
    ) -> None:
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
        self._watching: asyncio.Task[None] | None = None

    @classmethod
    async def create(cls, config: AgentConfig) -> Agent:
        """Enroll, connect to Docker, start the torrent engine, the socket and /metrics.

        Whatever was started is stopped again if a later step fails.
        """
        paths = AgentPaths(config.data)
        paths.create()
        redact.add_secret(config.token.secret)
        async with AsyncExitStack() as undo:
            tracker = TrackerClient(config.tracker, config.token)
            undo.push_async_callback(tracker.close)
            identity = Identity(paths, tracker, config.token)
            await enroll_when_reachable(identity, config.tracker, config.tracker_wait)
            # libtorrent's HTTPS announces trust exactly the pinned swarm CA
            os.environ["SSL_CERT_FILE"] = str(paths.ca)
            # a relay never talks to Docker: it needs no socket and never waits for one
            docker = None if config.relay else await asyncio.to_thread(docker_connect, config.docker_host)
            # resume data is trusted only if the last run ended cleanly; otherwise
            # libtorrent re-checks whatever is on disk (verified pieces are kept)
            clean = not paths.running.exists()
            paths.running.touch()
            undo.callback(paths.running.unlink, missing_ok=True)
            if not clean:
                log.warning("the last run did not stop cleanly: partial downloads will be re-checked")
            blobs, manifests, metrics = BlobStore(paths), ManifestStore(paths), AgentMetrics()
            engine = Engine(
                config.listen,
                identity.name,
                paths.cert,
                paths.key,
                config.upload_limit,
                config.download_limit,
                role=identity.role,
                resume_dir=paths.resume,
                observer=metrics,
                # per-peer names and "bytes from the builder" as the tracker attests them, not as peers claim
                names=TrackerPeerNames(tracker, asyncio.get_running_loop()),
            )
            engine.start(asyncio.get_running_loop())
            undo.callback(engine.close)
            cache = CacheKeeper(config.cache_size, config.min_seed_time, blobs, manifests, engine, metrics)
            trust = HostTrust(
                config.trust,
                TagHistory(paths.accepted),
                KeyDocumentFollower(config.trust_root, paths.key_document, tracker.key_document)
                if config.trust_root
                else None,
            )
            puller = Puller(
                engine,
                blobs,
                manifests,
                cache,
                tracker,
                trust,
                docker,
                identity.ca_pem,
                metrics,
                trust_resume=clean,
                ensure_name=identity.ensure_name,
                load_while_downloading=config.load_while_downloading,
                load_window=config.load_window,
            )
            reporter = Reporter(
                tracker,
                engine,
                lambda: identity.name,
                receipt_signer(paths.key, paths.cert),
                lambda: Heartbeat(agent_version(), blobs.usage()[0], config.cache_size, identity.not_after),
            )
            puller.observer = reporter
            ops = AgentOps(identity, tracker, engine, puller, cache, blobs, manifests, docker, config.trust)
            server = SocketServer(paths.socket, ops.handlers())
            await server.start()
            undo.push_async_callback(server.close)
            agent = cls(config, paths, tracker, identity, blobs, manifests, engine, puller, cache, server, None)
            agent.reporter = reporter
            metrics.add_live(agent.live_metrics)
            if config.metrics_listen:
                agent._metrics_runner = await serve_metrics(metrics, config.metrics_listen, agent.readiness)
            undo.pop_all()  # from here on, `Agent.stop` owns them
        return agent

    def start(self) -> None:
        """Seed what is here, resume interrupted pulls, start the background tasks."""
        self._reseed()
        engine, paths = self.engine, self.paths
        self.identity.on_renewed = lambda: self._renewed(engine, paths)
        self._tasks.append(asyncio.create_task(self.identity.renew_forever()))
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        if self.reporter is not None:
            self._tasks.append(asyncio.create_task(self.reporter.run()))
        if self.config.watch:
            self._start_watch()
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

    def _start_watch(self) -> None:
        self._watching = asyncio.create_task(self._watch())
        self._tasks.append(self._watching)

    def reload(self, new: AgentConfig) -> None:
        """Apply what can change while running (SIGHUP); say which other changes need a restart."""
        old = self.config
        changed = [name for name in LIVE_SETTINGS if getattr(old, name) != getattr(new, name)]
        if new.upload_limit != old.upload_limit or new.download_limit != old.download_limit:
            self.engine.set_rate_limits(new.upload_limit, new.download_limit)
            old.upload_limit, old.download_limit = new.upload_limit, new.download_limit
        old.trust[:] = new.trust  # the puller and the socket API hold this very list
        old.watch[:] = new.watch
        if old.watch and self._watching is None:
            self._start_watch()
        if new.log_level != old.log_level:
            logs.set_level(new.log_level)
            old.log_level = new.log_level
        later = [
            name
            for name in (
                "tracker",
                "token",
                "trust_root",
                "data",
                "listen",
                "docker_host",
                "relay",
                "cache_size",
                "min_seed_time",
                "metrics_listen",
            )
            if getattr(old, name) != getattr(new, name)
        ]
        log.info(
            "reloaded: %s changed%s",
            ", ".join(changed) or "nothing",
            f"; restart to apply {', '.join(later)}" if later else "",
        )

    async def readiness(self) -> dict[str, bool]:
        """What /readyz reports: the torrent session up, a valid certificate, the tracker answering."""
        return {
            "session": self.engine.ssl_port > 0,
            "certificate": self.identity.not_after > time.time(),
            "tracker": await self.tracker.health(),
        }

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_EVERY)
            await asyncio.to_thread(self.engine.save_resume_data)
            self.cache.evict()
            allocator.trim()

    def live_metrics(self) -> dict[str, float]:
        used, _count = self.blobs.usage()
        torrents = self.engine.info_hashes()
        peers = sum(1 for ih in torrents for p in self.engine.status(ih).peers if p.connected)
        return {
            "cache_bytes": used,
            "cache_budget": self.config.cache_size,
            "connected_peers": peers,
            "torrents": len(torrents),
            "sent_bytes": self.engine.uploaded_total(),
            "cert_expiry": self.identity.not_after,
            "pulls_in_flight": len(self.puller.progress_all()),
        }

    def _renewed(self, engine: Engine, paths: AgentPaths) -> None:
        """A new certificate: new connections use it, and torrents of groups it no longer names
        (this host was removed from them) stop: no peer would complete a handshake for them."""
        engine.set_certificate(paths.cert, paths.key)
        names = self.identity.names
        if "*" in names:
            return
        left = [ih for ih in engine.info_hashes() if engine.status(ih).group not in names]
        for ih in left:
            engine.remove(ih, "this host is no longer in the group of that image")
        if left:
            log.info("stopped %d torrent(s) of groups this host's new certificate no longer names", len(left))

    def _reseed(self) -> None:
        """Serve again every verified blob of every manifest this host knows (not those published
        before host groups: no certificate names their torrents, so no peer would be served)."""
        legacy = []
        for _env, manifest in self.manifests.all():
            if manifest_group_id(manifest) is None:
                legacy.append(str(manifest.ref))
                continue
            for layer in manifest.layers:
                if self.blobs.is_verified(layer.blob):
                    self.engine.add_layer(layer, self.blobs.blobs_dir, self.tracker.announce_url, seed=True)
        if legacy:
            log.warning(
                "not seeding %d image(s) published before host groups (%s): the builder must seed them again",
                len(legacy),
                ", ".join(legacy[:5]),
            )

    async def _watch(self) -> None:
        """Preheat: keep the newest matching tag of each repository pulled.

        The first answer is everything published so far: of it, only the newest matching tag
        of each repository is pulled (an agent started today does not fetch every tag since
        the first); after that, every matching tag as it is published."""
        since, failing = 0, False
        while True:
            try:
                seq, entries = await self.tracker.watch(since, 30)
            except SwarmError as exc:  # unreachable, refused, or an answer that is not one
                if not failing:  # one line when the tracker goes, one when it is back
                    log.warning("watch: %s; retrying every 5s", exc)
                failing = True
                await asyncio.sleep(5)
                continue
            if failing:
                log.info("watch: tracker answering again")
                failing = False
            try:
                self._preheat(entries, first=since == 0)
            except Exception:  # preheat must outlive any one answer; the cause is logged
                log.exception("watch: handling the tracker's answer failed; watching on")
            since = seq

    def _preheat(self, entries: list[ManifestEntry], first: bool) -> None:
        matching = [(ImageRef.parse(e.ref), e) for e in entries]  # valid_entries checked each ref
        matching = [(ref, e) for ref, e in matching if any(matches(p, ref) for p in self.config.watch)]
        if first:
            matching = list(newest_per_repository(matching).values())
        for ref, _entry in matching:
            log.info("watch: %s published, pulling", ref)
            self.puller.start(ref)


def newest_per_repository(entries: list[tuple[ImageRef, ManifestEntry]]) -> dict[str, tuple[ImageRef, ManifestEntry]]:
    """Of each repository, the entry published last (highest sequence number)."""
    newest: dict[str, tuple[ImageRef, ManifestEntry]] = {}
    for ref, entry in entries:
        if ref.repository not in newest or entry.seq > newest[ref.repository][1].seq:
            newest[ref.repository] = (ref, entry)
    return newest


async def serve(config: AgentConfig, reload: Callable[[], AgentConfig] | None = None) -> None:
    """Run an agent until SIGTERM or SIGINT (a second one exits at once); SIGHUP calls `reload` and applies
    the live settings. A stop signal while the agent still waits for its tracker ends the wait."""
    stopping = asyncio.Event()
    running: Agent | None = None

    def on_signal() -> None:
        if stopping.is_set():
            log.warning("second signal: exiting at once")
            os._exit(1)
        log.info("stopping: saving resume data and announcing stopped (signal again to exit at once)")
        stopping.set()

    def on_hangup() -> None:
        if running is None or reload is None:
            log.warning("SIGHUP: nothing to reload yet (still starting)")
            return
        try:
            running.reload(reload())
        except (SwarmError, click.ClickException) as exc:  # a malformed file or variable
            log.error("SIGHUP: configuration not reloaded, keeping the running one: %s", exc)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    creating = asyncio.create_task(Agent.create(config))
    stop_wait = asyncio.create_task(stopping.wait())
    await asyncio.wait({creating, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if not creating.done():
        creating.cancel()  # Agent.create undoes whatever it had started
        await asyncio.gather(creating, return_exceptions=True)
        return
    stop_wait.cancel()
    running = agent = creating.result()
    try:
        agent.start()
        print(
            f"agent ready: {agent.identity.name} ({agent.identity.role}), peers on port "
            f"{agent.engine.ssl_port}, socket {agent.paths.socket}",
            flush=True,
        )
        await stopping.wait()
    finally:
        await agent.stop()


def run_agent(config: AgentConfig, reload: Callable[[], AgentConfig] | None = None) -> None:
    """Logging is set up by the caller (swarm.core.logs.configure)."""
    os.umask(AGENT_UMASK)
    allocator.limit_arenas()  # before the first thread
    asyncio.run(serve(config, reload))
