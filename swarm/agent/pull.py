"""The pull pipeline: manifest → signature → torrents → sha256 → docker load.

Nothing reaches Docker unless the manifest verifies against a trusted builder
key (swarm/agent/trust.py: pinned or delegated by the root, and not older than
the newest this host accepted for the tag), every torrent is exactly the one the manifest names and is bound to this
swarm's CA, and every blob's sha256 matches. A pull in flight is recorded in
the agent's state, so an agent that died resumes it when it starts again.

A host with Docker loads while it downloads: its layers are downloaded in image
order (a window of the lowest unfinished ones wanted, the rest at piece priority
0, `swarm.core.layer_order`), and each time the verified bottom of the image
grows it is loaded into Docker as a stage (swarm/agent/staged_load.py).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from swarm.agent.api import LayerProgress, PullProgress
from swarm.agent.cache import CacheKeeper
from swarm.agent.metrics import AgentMetrics
from swarm.agent.staged_load import StagedLoad
from swarm.agent.store import BlobStore, ManifestStore
from swarm.agent.tracker_client import TrackerClient
from swarm.agent.trust import HostTrust
from swarm.core.errors import (
    DockerError,
    DockerUnreachable,
    ImageNotFound,
    LegacyTorrent,
    NotFound,
    SwarmError,
    TorrentError,
)
from swarm.core.layer_order import WINDOW_BYTES, download_window, loadable_prefix
from swarm.core.manifest import Layer, Manifest
from swarm.core.refs import ImageRef
from swarm.core.signing import SignedManifest
from swarm.core.torrent import check_layer_torrent, manifest_group_id
from swarm.core.units import human_bytes
from swarm.engine.session import Engine
from swarm.images import load as docker_load

log = logging.getLogger(__name__)

#: Docker unreachable during a pull: retry with back-off up to this long
DOCKER_PATIENCE = 600.0


@dataclass
class PullState:
    ref: str
    stage: str = "resolving"  # resolving → downloading → verifying → loading (→ waiting-for-docker) → done
    manifest: Manifest | None = None
    started: float = field(default_factory=time.monotonic)
    cached: set[str] = field(default_factory=set)  # blobs that were already here
    in_docker: set[str] = field(default_factory=set)  # blobs a stage loaded while the rest downloads
    queued: set[str] = field(default_factory=set)  # blobs waiting for the layers below them to download
    note: str = ""
    #: fetch the blobs even when Docker already holds the image, to seed them
    seed: bool = False
    #: or "already-in-docker": nothing fetched, nothing loaded; or "cached": a relay's pull, verified, seeding
    outcome: str = "loaded"
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def set_stage(self, stage: str, note: str | None = None) -> None:
        if note is not None:
            self.note = note
        if stage != self.stage:
            self.stage = stage
            self._changed.set()
            self._changed = asyncio.Event()  # one event per change: every waiter sees each one

    async def next_change(self) -> None:
        """Return at the next change of stage."""
        await self._changed.wait()

    #: (stage, unix time it began), oldest first: every `state.stage = ...` is recorded (see __setattr__)
    history: list[tuple[str, float]] = field(default_factory=list)
    #: told of every stage change (the rollout reporter); must not raise or block
    listener: Callable[[PullState], None] | None = None

    def __post_init__(self) -> None:
        self.history.append((self.stage, time.time()))

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "stage" and "listener" in self.__dict__:  # not while __init__ sets the fields
            self.history.append((value, time.time()))
            if self.listener is not None:
                self.listener(self)


class PullObserver(Protocol):
    """Told of every pull: its stage changes, and its end (`error` None: loaded as `image_id`)."""

    def changed(self, state: PullState) -> None: ...

    def finished(self, state: PullState, image_id: str | None, error: str | None) -> None: ...


def check_pin(ref: ImageRef, image_id: str) -> None:
    """`app:1@sha256:X` loads app:1 only while its image ID is X."""
    if ref.digest is not None and ref.digest != image_id:
        raise ImageNotFound(f"{ref} is now {image_id}, not the pinned {ref.digest}")


class Puller:
    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        manifests: ManifestStore,
        cache: CacheKeeper,
        tracker: TrackerClient,
        trust: HostTrust,
        docker: Any | None,  # None: a relay, which keeps the blobs and seeds them without loading
        ca_pem: str,
        metrics: AgentMetrics,
        trust_resume: bool = False,
        ensure_name: Callable[[str, str], Awaitable[None]] | None = None,
        load_while_downloading: bool = True,
        load_window: int = WINDOW_BYTES,
    ) -> None:
        self._engine = engine
        #: (group id, what for): make sure the certificate names that group (identity.ensure_name)
        self._ensure_name = ensure_name
        self._cache = cache
        self._blobs = blobs
        self._manifests = manifests
        self._tracker = tracker
        self._trust = trust
        self._docker = docker
        self._metrics = metrics
        self._trust_resume = trust_resume
        self._load_while_downloading = load_while_downloading
        self._load_window = load_window
        self.ca_pem = ca_pem
        self._active: dict[str, tuple[PullState, asyncio.Task[str]]] = {}
        #: blob -> resolved once it is on disk (True) or its download failed (False), while a pull fetches it
        self._fetching: dict[str, asyncio.Future[bool]] = {}
        self.observer: PullObserver | None = None

    def start(self, ref: ImageRef, seed: bool = False) -> tuple[PullState, asyncio.Task[str]]:
        """Start pulling `ref`, or join the pull of it already under way.

        `seed`: fetch its blobs even if Docker already holds the image, so this host serves them.
        """
        key = str(ref)
        if key in self._active:
            state, task = self._active[key]
            state.seed = state.seed or seed
            return state, task
        state = PullState(key, seed=seed)
        if self.observer is not None:
            state.listener = self.observer.changed
            self.observer.changed(state)
        self._blobs.set_pending(key, True)
        self._metrics.pulls.labels("started").inc()
        task = asyncio.create_task(self._pull(ref, state), name=f"pull {key}")
        self._active[key] = (state, task)
        task.add_done_callback(lambda t: self._finished(key, state, t))
        return state, task

    def _finished(self, key: str, state: PullState, task: asyncio.Task[str]) -> None:
        self._active.pop(key, None)
        self._cache.release(key)
        if task.cancelled():
            return  # the agent is stopping: the pull stays pending and resumes on restart
        self._blobs.set_pending(key, False)
        if self.observer is not None:
            error = task.exception()
            self.observer.finished(
                state,
                task.result() if error is None else None,
                None if error is None else str(error) or type(error).__name__,
            )
        if task.exception() is None:
            self._metrics.pulls.labels("completed").inc()
            self._metrics.pull_seconds.observe(time.monotonic() - state.started)
        else:
            self._metrics.pulls.labels("failed").inc()
            log.error("pull of %s failed: %s", key, task.exception())

    async def _pull(self, ref: ImageRef, state: PullState) -> str:
        try:
            data = await self._tracker.manifest(str(ref))
        except NotFound as exc:
            raise ImageNotFound(f"unknown image {ref}: no such manifest on the tracker") from exc
        envelope = SignedManifest.from_bytes(data)
        manifest = await self._trust.verify(envelope, ref)
        check_pin(ref, manifest.image_id)
        try:
            for layer in manifest.layers:
                check_layer_torrent(layer.torrent, layer.info_hash, layer.blob_size, self.ca_pem)
        except LegacyTorrent as exc:
            raise LegacyTorrent(f"{ref}: {exc}") from exc
        group_id = manifest_group_id(manifest)
        if self._ensure_name is not None and group_id is not None:
            await self._ensure_name(group_id, str(ref))
        state.manifest = manifest
        self._cache.hold(str(ref), (layer.blob for layer in manifest.layers))
        log.info("pulling %s (%s, %d layers)", ref, manifest.image_id[:19], len(manifest.layers))

        if self._docker is None:
            await self._fetch(manifest, state)
            state.outcome, state.note = "cached", "cached (relay)"
            return self._done(ref, envelope, manifest, state)
        # Docker's image id is the config's digest and Docker checked every diff_id when it
        # loaded it: holding this id, it holds exactly these layers
        in_docker = await self._loaded_id(ref) == manifest.image_id
        if in_docker and (self._all_verified(manifest) or not state.seed):
            self._serve_cached(manifest, state)
            state.outcome, state.note = "already-in-docker", "already in Docker"
        elif in_docker or not self._load_while_downloading:
            await self._fetch(manifest, state)
            if not in_docker:
                await self._load_with_retry(manifest, state, StagedLoad(self._docker, manifest, self._blobs.path))
        else:
            staged = StagedLoad(self._docker, manifest, self._blobs.path)
            try:
                await self._fetch(manifest, state, staged)
                await self._load_with_retry(manifest, state, staged)
            finally:
                # loaded: the image holds the layers now; failed: Docker drops them with the partial images
                await asyncio.shield(staged.clear())
        return self._done(ref, envelope, manifest, state)

    def _done(self, ref: ImageRef, envelope: SignedManifest, manifest: Manifest, state: PullState) -> str:
        self._blobs.touch([layer.blob for layer in manifest.layers if self._blobs.is_verified(layer.blob)])
        self._manifests.save(envelope)
        state.set_stage("done")
        if state.outcome == "already-in-docker":
            log.info(
                "%s already in Docker as %s (%d of %d blobs cached)",
                ref,
                manifest.image_id[:19],
                len(state.cached),
                len({layer.blob for layer in manifest.layers}),
            )
        elif state.outcome == "cached":
            log.info("%s cached as %s in %.1fs", ref, manifest.image_id[:19], time.monotonic() - state.started)
        else:
            log.info("%s loaded as %s in %.1fs", ref, manifest.image_id[:19], time.monotonic() - state.started)
        return manifest.image_id

    def _serve_cached(self, manifest: Manifest, state: PullState) -> None:
        """Seed whatever blobs of `manifest` are here (a no-op for torrents already running)."""
        state.cached = {layer.blob for layer in manifest.layers if self._blobs.is_verified(layer.blob)}
        for layer in manifest.layers:
            if layer.blob in state.cached:
                self._add(layer, seed=True)

    def _all_verified(self, manifest: Manifest) -> bool:
        return all(self._blobs.is_verified(layer.blob) for layer in manifest.layers)

    async def _loaded_id(self, ref: ImageRef) -> str | None:
        try:
            return await asyncio.to_thread(docker_load.image_id, self._docker, str(ref))
        except DockerUnreachable:
            return None  # the load stage waits for Docker

    async def _fetch(self, manifest: Manifest, state: PullState, staged: StagedLoad | None = None) -> None:
        """Download and verify the blobs not here; with `staged`, in image order, loading as they verify.

        In image order, a layer's torrent is added when it enters the download window (a torrent at
        piece priority 0 is "finished" to libtorrent, which drops its seeds and does not find them
        again when the priority rises), so the host asks the swarm for the lowest layers first.
        """
        unique = {layer.blob: layer for layer in manifest.layers}
        state.cached = {b for b in unique if self._blobs.is_verified(b)}
        missing = [layer for b, layer in unique.items() if b not in state.cached]
        self._check_room(manifest, missing)
        self._cache.reserve(str(manifest.ref), {layer.blob: layer.blob_size for layer in missing})
        # a blob another pull is downloading through another group's torrent is not fetched twice:
        # this pull waits for that download, then seeds its own torrent over the same file
        borrowed = {
            layer.blob: self._fetching[layer.blob]
            for layer in missing
            if layer.blob in self._fetching and not self._engine.has(layer.info_hash)
        }
        loop = asyncio.get_running_loop()
        for layer in unique.values():
            if layer.blob in borrowed:
                continue
            if staged is None or layer.blob in state.cached:
                self._add(layer, seed=layer.blob in state.cached)  # blobs here are seeded: this host serves them
        for layer in missing:
            if layer.blob not in borrowed:  # before any await: a pull starting now sees it
                self._fetching.setdefault(layer.blob, loop.create_future())
        ready = set(state.cached)
        pending = list(missing)  # lowest first

        def window() -> list[str]:
            return download_window([(la.blob, la.blob_size) for la in pending], min_bytes=self._load_window)

        if staged is not None:
            first = set(window())
            for layer in pending:
                if layer.blob in first and layer.blob not in borrowed:
                    self._add(layer, seed=False)
        state.set_stage("downloading")
        state.queued = {layer.blob for layer in missing} if staged is not None else set()
        progress = asyncio.Condition()
        downloaded = 0

        async def get(layer: Layer) -> None:
            nonlocal downloaded
            if staged is not None:
                async with progress:
                    await progress.wait_for(lambda: layer.blob in window())
                if layer.blob not in borrowed:
                    self._add(layer, seed=False)
                state.queued.discard(layer.blob)
            await self._download(layer, borrowed.get(layer.blob))
            downloaded += 1
            if downloaded == len(missing):
                state.set_stage("verifying")
            await self._blobs.verify(layer.blob)
            if layer.blob in borrowed:
                self._add(layer, seed=True)
            ready.add(layer.blob)
            pending.remove(layer)
            async with progress:
                progress.notify_all()

        tasks = [asyncio.create_task(get(layer), name=f"fetch {layer.blob[:19]}") for layer in missing]
        if staged is not None:
            tasks.append(asyncio.create_task(self._load_stages(state, staged, ready, progress), name="stages"))
        try:
            await _all_or_first_error(tasks)
            state.set_stage("verifying")
        except (TorrentError, SwarmError, OSError) as exc:
            self._discard(state, missing)
            if isinstance(exc, TorrentError) and "space" in str(exc).lower():
                raise TorrentError(f"no space left on device for the layers of {manifest.ref}") from exc
            raise
        finally:
            state.queued = set()

    async def _load_stages(
        self, state: PullState, staged: StagedLoad, ready: set[str], progress: asyncio.Condition
    ) -> None:
        """Load the verified bottom of the image each time it grows; the top is the final load's."""
        assert state.manifest is not None
        blobs = [layer.blob for layer in state.manifest.layers]
        while not staged.stopped:
            count = loadable_prefix(blobs, ready)
            if count == len(blobs):
                return
            if count > staged.loaded:
                await staged.stage(count)
                state.in_docker = set(blobs[: staged.loaded])
                continue
            async with progress:
                await progress.wait_for(lambda: loadable_prefix(blobs, ready) > staged.loaded)

    def _add(self, layer: Layer, seed: bool) -> None:
        self._engine.add_layer(layer, self._blobs.blobs_dir, self._tracker.announce_url, seed, self._trust_resume)

    async def _download(self, layer: Layer, other: asyncio.Future[bool] | None) -> None:
        """Until the blob is on disk: through this layer's torrent, or through the torrent another
        pull is downloading it with (`other`: resolved when that one ends; then this layer's own if
        that download failed)."""
        if other is not None:
            if await asyncio.shield(other):
                return
            self._add(layer, seed=False)
        done = self._fetching.setdefault(layer.blob, asyncio.get_running_loop().create_future())
        try:
            await self._engine.wait_finished(layer.info_hash)
            if not done.done():
                done.set_result(True)
        finally:
            if not done.done():
                done.set_result(False)
            if self._fetching.get(layer.blob) is done:
                del self._fetching[layer.blob]

    def _check_room(self, manifest: Manifest, missing: list[Layer]) -> None:
        """Refuse up front a pull whose blobs cannot fit (libtorrent writes sparse files)."""
        have = 0
        for layer in missing:
            try:
                have += self._blobs.path(layer.blob).stat().st_blocks * 512  # partial downloads
            except FileNotFoundError:
                pass
        need = sum(layer.blob_size for layer in missing) - have
        free = shutil.disk_usage(self._blobs.blobs_dir).free
        if need > free:
            raise TorrentError(
                f"no space left on device for the layers of {manifest.ref}: "
                f"needs {human_bytes(need)}, {human_bytes(free)} free"
            )

    def _discard(self, failed: PullState, layers: list[Layer]) -> None:
        """Drop what a failed pull fetched (`layers`: the blobs it did not have, partial or verified
        since: a full disk gets its space back), unless another pull needs them."""
        others = {
            layer.blob
            for state, _t in self._active.values()
            if state is not failed and state.manifest and state.stage != "done"
            for layer in state.manifest.layers
        }
        for layer in layers:
            if layer.blob in others:
                continue
            self._engine.remove(layer.info_hash)
            self._blobs.forget(layer.blob, delete=True)

    async def _load_with_retry(self, manifest: Manifest, state: PullState, staged: StagedLoad) -> None:
        delay, waited = 1.0, 0.0
        while True:
            state.set_stage("loading")
            try:
                await self._load(manifest, staged)
                state.note = ""
                return
            except DockerUnreachable as exc:
                if waited >= DOCKER_PATIENCE:
                    raise
                state.set_stage("waiting-for-docker", str(exc))
                log.warning("%s; retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 30.0)

    async def _load(self, manifest: Manifest, staged: StagedLoad) -> None:
        await staged.finish()
        loaded = await asyncio.to_thread(docker_load.image_id, self._docker, str(manifest.ref))
        if loaded != manifest.image_id:
            raise DockerError(f"Docker holds {manifest.ref} as {loaded}, expected {manifest.image_id}")

    def progress(self, state: PullState) -> PullProgress:
        layers = []
        if state.manifest is not None:
            seen = set()
            for layer in state.manifest.layers:
                if layer.blob in seen:
                    continue
                seen.add(layer.blob)
                layers.append(self._layer_progress(layer, state))
        return PullProgress(state.ref, state.stage, state.note, tuple(layers))

    def _layer_progress(self, layer: Layer, state: PullState) -> LayerProgress:
        if layer.blob in state.cached:
            return LayerProgress(layer.blob, layer.blob_size, layer.blob_size, 0, 0, "cached")
        if layer.blob in state.in_docker and state.stage != "done":
            return LayerProgress(layer.blob, layer.blob_size, layer.blob_size, 0, 0, "in-docker")
        if self._engine.has(layer.info_hash):
            st = self._engine.status(layer.info_hash)
            return LayerProgress(
                layer.blob,
                layer.blob_size,
                st.done,
                st.download_rate,
                sum(1 for p in st.peers if p.connected),
                st.state,
            )
        return LayerProgress(
            layer.blob, layer.blob_size, 0, 0, 0, "queued" if layer.blob in state.queued else "waiting"
        )

    def progress_all(self) -> list[PullProgress]:
        """The progress of every pull under way."""
        return [self.progress(state) for state, _t in list(self._active.values())]

    def cancel_all(self) -> None:
        """Stop every pull (the agent is stopping): each stays pending and resumes on restart."""
        for _state, task in list(self._active.values()):
            task.cancel()


async def _all_or_first_error(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for every task; at the first failure cancel the others and raise it."""
    try:
        for done in asyncio.as_completed(tasks):
            await done
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
