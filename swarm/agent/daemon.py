"""`swarm agent`: the long-running daemon on every host, builder included."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from swarm.agent.cache import CacheKeeper
from swarm.agent.identity import Identity
from swarm.agent.metrics import AgentMetrics, serve_metrics
from swarm.agent.paths import AgentPaths
from swarm.agent.pull import Puller
from swarm.agent.server import Emit, SocketServer
from swarm.agent.store import BlobStore, ManifestStore
from swarm.agent.tracker_client import TrackerClient
from swarm.builder.prepare import prepare_archive, prepare_image
from swarm.core.errors import InvalidInput, TrackerError, UsageError
from swarm.core.refs import ImageRef, matches
from swarm.core.signing import SignedManifest, format_public_key
from swarm.core.tokens import JoinToken
from swarm.engine.session import Engine
from swarm.images.docker_client import connect as docker_connect

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.5
#: how often resume data is saved and the cache budget enforced
HOUSEKEEPING_EVERY = 30.0


@dataclass
class AgentConfig:
    tracker: str
    token: JoinToken
    data: Path
    listen: str = "0.0.0.0:6881"
    trust: list[bytes] = field(default_factory=list)
    watch: list[str] = field(default_factory=list)
    docker_host: str | None = None
    upload_limit: int = 0
    download_limit: int = 0
    cache_size: int = 0
    min_seed_time: float = 3600.0
    metrics_listen: str | None = None


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.paths = AgentPaths(config.data)
        self.paths.create()
        self.tracker = TrackerClient(config.tracker, config.token)
        self.identity = Identity(self.paths, self.tracker, config.token)
        self.blobs = BlobStore(self.paths)
        self.manifests = ManifestStore(self.paths)
        self.metrics = AgentMetrics()
        self.engine: Engine | None = None
        self.puller: Puller | None = None
        self.cache: CacheKeeper | None = None
        self._runner: web.AppRunner | None = None
        self.docker: Any = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.server = SocketServer(self.paths.socket, {
            "status": self._op_status, "pull": self._op_pull,
            "prepare": self._op_prepare, "publish": self._op_publish,
        })

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            await self._start(loop)
            print(f"agent ready: {self.identity.name} ({self.identity.role}), peers on port "
                  f"{self.engine.ssl_port if self.engine else 0}, socket {self.paths.socket}", flush=True)
            await self._stop.wait()
        finally:
            await self._shutdown()

    def _on_signal(self) -> None:
        if self._stop.is_set():
            log.warning("second signal: exiting at once")
            os._exit(1)
        log.info("stopping: saving resume data and announcing stopped (signal again to exit at once)")
        self._stop.set()

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        await self.identity.enroll()
        # libtorrent's HTTPS announces trust exactly the pinned swarm CA
        os.environ["SSL_CERT_FILE"] = str(self.paths.ca)
        self.docker = await asyncio.to_thread(docker_connect, self.config.docker_host)
        # resume data is trusted only if the last run ended cleanly; otherwise
        # libtorrent re-checks whatever is on disk (verified pieces are kept)
        clean = not self.paths.running.exists()
        self.paths.running.touch()
        if not clean:
            log.warning("the last run did not stop cleanly: partial downloads will be re-checked")
        self.engine = Engine(self.config.listen, self.identity.name, self.paths.cert, self.paths.key,
                             self.config.upload_limit, self.config.download_limit, role=self.identity.role,
                             resume_dir=self.paths.resume, observer=self.metrics)
        self.engine.start(loop)
        self.puller = Puller(self.engine, self.blobs, self.manifests, self.tracker, self.config.trust,
                             self.docker, self.identity.ca_pem, self.metrics, trust_resume=clean)
        self.cache = CacheKeeper(self.config.cache_size, self.config.min_seed_time, self.blobs, self.manifests,
                                 self.engine, self.puller.busy_blobs)
        self.metrics.add_live(self._live_metrics)
        self._reseed()
        await self.server.start()
        if self.config.metrics_listen:
            self._runner = await serve_metrics(self.metrics, self.config.metrics_listen)
        engine = self.engine
        self._tasks.append(asyncio.create_task(
            self.identity.renew_forever(lambda: engine.set_certificate(self.paths.cert, self.paths.key))))
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        if self.config.watch:
            self._tasks.append(asyncio.create_task(self._watch()))
        for ref in self.blobs.pending_pulls():
            log.info("resuming the pull of %s that was in flight", ref)
            self.puller.start(ImageRef.parse(ref))

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.puller is not None:
            for _state, pull in list(self.puller.active.values()):
                pull.cancel()
        await self.server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.engine is not None:
            await asyncio.to_thread(self.engine.save_resume_data)
            await asyncio.to_thread(self.engine.close)  # announces `stopped`
            self.paths.running.unlink(missing_ok=True)
        await self.tracker.close()

    async def _housekeeping(self) -> None:
        assert self.engine is not None and self.cache is not None
        while True:
            await asyncio.sleep(HOUSEKEEPING_EVERY)
            await asyncio.to_thread(self.engine.save_resume_data)
            self.cache.evict()

    def _live_metrics(self) -> dict[str, float]:
        engine = self.engine
        used, _count = self.blobs.usage()
        peers = 0
        torrents = engine.info_hashes() if engine else []
        for ih in torrents:
            assert engine is not None
            st = engine.status(ih)
            peers += sum(1 for p in st.peers if p.connected)
        return {"cache_bytes": used, "cache_budget": self.config.cache_size, "connected_peers": peers,
                "torrents": len(torrents), "sent_bytes": engine.uploaded_total() if engine else 0,
                "cert_expiry": self.identity.not_after}

    def _reseed(self) -> None:
        """Serve again every verified blob of every manifest this host knows."""
        assert self.engine is not None
        for _env, manifest in self.manifests.all():
            for layer in manifest.layers:
                if self.blobs.is_verified(layer.blob):
                    self.engine.add(layer.torrent, self.paths.blobs_dir, self.tracker.announce_url, seed=True)

    async def _watch(self) -> None:
        """Preheat: pull every newly published tag matching a --watch pattern."""
        assert self.puller is not None
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

    # -- socket API -----------------------------------------------------------

    async def _op_status(self, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
        assert self.engine is not None and self.puller is not None
        torrents = []
        for ih in self.engine.info_hashes():
            st = self.engine.status(ih)
            torrents.append({
                "blob": "sha256:" + st.name, "info_hash": st.info_hash, "state": st.state,
                "progress": st.progress, "total": st.total, "done": st.done,
                "download_rate": st.download_rate, "upload_rate": st.upload_rate,
                "downloaded": st.downloaded, "uploaded": st.uploaded, "failed_pieces": st.failed_pieces,
                "error": st.error,
                "peers": [{"name": p.name, "address": p.address, "downloaded": p.downloaded,
                           "uploaded": p.uploaded, "connected": p.connected} for p in st.peers],
            })
        used, count = self.blobs.usage()
        assert self.cache is not None
        return {
            "name": self.identity.name, "role": self.identity.role,
            "tracker": self.config.tracker, "tracker_reachable": await self.tracker.health(),
            "certificate_expires": self.identity.not_after, "certificate_error": self.identity.last_error,
            "peer_port": self.engine.ssl_port,
            "trusted_keys": [format_public_key(k) for k in self.config.trust],
            "images": [{"ref": str(m.ref), "image_id": m.image_id, "layers": len(m.layers)}
                       for _e, m in self.manifests.all()],
            "pulls": [self.puller.progress(state) for state, _t in self.puller.active.values()],
            "torrents": torrents,
            "cache": {"bytes": used, "blobs": count, "budget": self.config.cache_size,
                      "over_budget": self.cache.over_budget()},
        }

    async def _op_pull(self, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
        result = await self._pull_and_report(request, emit)
        assert self.cache is not None
        self.cache.evict()
        return result

    async def _pull_and_report(self, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
        assert self.puller is not None
        refs = [ImageRef.parse(str(r)) for r in _str_list(request.get("refs"), "refs")]
        pulls = [self.puller.start(ref) for ref in refs]
        tasks = [task for _s, task in pulls]
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=PROGRESS_EVERY)
            for state, _t in pulls:
                await emit(self.puller.progress(state))
        results = []
        for ref, task in zip(refs, tasks):
            results.append({"ref": str(ref), "image_id": task.result()})  # re-raises a failure
        return {"images": results}

    async def _op_prepare(self, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
        images = _str_list(request.get("images"), "images")
        key_id = str(request.get("key_id", ""))
        archive = request.get("archive")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()

        def progress(text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, text)

        async def forward() -> None:
            while True:
                await emit({"message": await queue.get()})

        forwarder = asyncio.create_task(forward())
        manifests = []
        try:
            for image in images:
                if archive:
                    m = await asyncio.to_thread(prepare_archive, Path(str(archive)), image, self.paths.blobs_dir,
                                                self.identity.ca_pem, key_id, progress)
                else:
                    m = await asyncio.to_thread(prepare_image, self.docker, image, self.paths.blobs_dir,
                                                self.identity.ca_pem, key_id, progress)
                for layer in m.layers:
                    self.blobs.mark_verified(layer.blob)  # hashed while exported
                manifests.append(m.to_bytes())
        finally:
            forwarder.cancel()
        return {"manifests": manifests}

    async def _op_publish(self, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
        assert self.engine is not None
        published = []
        for raw in request.get("envelopes") or []:
            if not isinstance(raw, bytes):
                raise InvalidInput("envelopes are bytes")
            envelope = SignedManifest.from_bytes(raw)
            manifest = envelope.verify(None)
            for layer in manifest.layers:
                if not self.blobs.is_verified(layer.blob):
                    raise UsageError(f"blob {layer.blob[:19]} of {manifest.ref} is not in this agent's cache")
            entry = await self.tracker.publish(raw)
            self.manifests.save(envelope)
            for layer in manifest.layers:
                self.engine.add(layer.torrent, self.paths.blobs_dir, self.tracker.announce_url, seed=True)
            self.blobs.touch([layer.blob for layer in manifest.layers])
            await emit({"message": f"published {entry.ref} ({entry.image_id[:19]}), seeding"})
            published.append(entry.to_map())
        return {"published": published}


def _str_list(v: Any, what: str) -> list[str]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        raise InvalidInput(f"{what} must be a non-empty list of strings")
    return v


def run_agent(config: AgentConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(Agent(config).run())

