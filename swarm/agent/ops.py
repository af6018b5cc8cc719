"""The agent's socket API operations (messages in swarm/agent/api.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from swarm.agent import allocator
from swarm.agent.api import (
    CACHED,
    NOT_CACHED,
    PARTLY_CACHED,
    CacheInfo,
    ImageInfo,
    Message,
    Note,
    PeerInfo,
    PrepareRequest,
    PrepareResponse,
    PublishRequest,
    PublishResponse,
    PulledImage,
    PullRequest,
    PullResponse,
    StatusRequest,
    StatusResponse,
    TorrentInfo,
)
from swarm.agent.cache import CacheKeeper
from swarm.agent.identity import Identity
from swarm.agent.pull import Puller, check_pin
from swarm.agent.server import Handler, RawEmit
from swarm.agent.store import BlobStore, ManifestStore
from swarm.agent.tracker_client import TrackerClient
from swarm.builder.prepare import prepare_archive, prepare_image
from swarm.core.errors import SwarmError, UsageError
from swarm.core.groups import group_id
from swarm.core.manifest import Manifest
from swarm.core.refs import ImageRef
from swarm.core.signing import SignedManifest, format_public_key
from swarm.core.torrent import manifest_group_id
from swarm.engine.session import Engine

#: seconds between two progress messages of a pull
PROGRESS_EVERY = 0.5

Emit = Callable[[Message], Awaitable[None]]
Req = TypeVar("Req", bound=Message)


@dataclass
class AgentOps:
    """What the socket API can ask of the agent; one method per op."""

    identity: Identity
    tracker: TrackerClient
    engine: Engine
    puller: Puller
    cache: CacheKeeper
    blobs: BlobStore
    manifests: ManifestStore
    docker: Any | None  # None: a relay
    trusted: list[bytes]

    def handlers(self) -> dict[str, Handler]:
        return {
            StatusRequest.op: _route(StatusRequest, self.status),
            PullRequest.op: _route(PullRequest, self.pull),
            PrepareRequest.op: _route(PrepareRequest, self.prepare),
            PublishRequest.op: _route(PublishRequest, self.publish),
        }

    async def status(self, _request: StatusRequest, _emit: Emit) -> StatusResponse:
        used, count = self.blobs.usage()
        names = await self._group_names()
        return StatusResponse(
            name=self.identity.name,
            role=self.identity.role,
            tracker=self.tracker.base_url,
            tracker_reachable=await self.tracker.health(),
            certificate_expires=self.identity.not_after,
            certificate_error=self.identity.last_error,
            peer_port=self.engine.ssl_port,
            trusted_keys=tuple(format_public_key(k) for k in self.trusted),
            images=tuple(self._image(m, names) for _e, m in self.manifests.all()),
            pulls=tuple(self.puller.progress_all()),
            torrents=tuple(self._torrent(ih) for ih in self.engine.info_hashes()),
            cache=CacheInfo(used, count, self.cache.budget, self.cache.over_budget(), self.cache.reserved()),
            relay=self.docker is None,
        )

    async def _group_names(self) -> dict[str, str]:
        """Group id -> name, from the tracker's list of what this token reads ({} when it does not answer)."""
        try:
            entries = await self.tracker.manifests()
        except SwarmError:
            return {}
        return {group_id(e.group): e.group for e in entries if e.group}

    def _image(self, manifest: Manifest, names: dict[str, str]) -> ImageInfo:
        blobs = {layer.blob for layer in manifest.layers}
        cached = sum(1 for b in blobs if self.blobs.is_verified(b))
        state = CACHED if cached == len(blobs) else PARTLY_CACHED if cached else NOT_CACHED
        try:
            gid = manifest_group_id(manifest) or ""
        except SwarmError:
            gid = ""
        group = names.get(gid, gid) if gid else "(none: published before groups)"
        return ImageInfo(
            str(manifest.ref), manifest.image_id, len(manifest.layers), len(blobs), cached, state, group, gid
        )

    def _torrent(self, info_hash: bytes) -> TorrentInfo:
        st = self.engine.status(info_hash)
        return TorrentInfo(
            blob="sha256:" + st.name,
            info_hash=st.info_hash,
            state=st.state,
            progress=st.progress,
            total=st.total,
            done=st.done,
            download_rate=st.download_rate,
            upload_rate=st.upload_rate,
            downloaded=st.downloaded,
            uploaded=st.uploaded,
            failed_pieces=st.failed_pieces,
            error=st.error,
            peers=tuple(PeerInfo(p.name, p.address, p.downloaded, p.uploaded, p.connected) for p in st.peers),
        )

    async def pull(self, request: PullRequest, emit: Emit) -> PullResponse:
        refs = [ImageRef.parse(r, digest=True) for r in request.refs]
        pulls = [self.puller.start(ref, seed=request.seed) for ref in refs]
        tasks = [task for _s, task in pulls]
        while not all(t.done() for t in tasks):
            # a message every PROGRESS_EVERY, and one at each change of stage (verifying and
            # loading may take less than that)
            changes = [asyncio.create_task(state.next_change()) for state, _t in pulls]
            try:
                await asyncio.wait([*tasks, *changes], timeout=PROGRESS_EVERY, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for change in changes:
                    change.cancel()
            for state, _t in pulls:
                await emit(self.puller.progress(state))
        ids = [task.result() for task in tasks]  # re-raises a failed pull's error
        for ref, image_id in zip(refs, ids, strict=True):
            check_pin(ref, image_id)  # a pull this request joined was started without its pin
        self.cache.evict()
        allocator.trim()  # the buffers of the download and the load
        return PullResponse(
            tuple(
                PulledImage(str(ref), image_id, state.outcome, self._all_cached(state.manifest))
                for ref, image_id, (state, _t) in zip(refs, ids, pulls, strict=True)
            )
        )

    def _all_cached(self, manifest: Manifest | None) -> bool:
        return manifest is not None and all(self.blobs.is_verified(layer.blob) for layer in manifest.layers)

    async def prepare(self, request: PrepareRequest, emit: Emit) -> PrepareResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()

        def progress(text: str) -> None:  # called from the export thread
            loop.call_soon_threadsafe(queue.put_nowait, text)

        async def forward() -> None:
            while True:
                await emit(Note(await queue.get()))

        forwarder = asyncio.create_task(forward())
        manifests = []
        try:
            for image in request.images:
                if not request.archive and self.docker is None:
                    raise UsageError(f"{image}: this agent is a relay, no Docker to export from (--from-archive)")
                _group, group_id = await self.tracker.resolve_group(ImageRef.parse(image).repository)
                await self.identity.ensure_name(group_id, image)
                if request.archive:
                    m = await asyncio.to_thread(
                        prepare_archive,
                        Path(request.archive),
                        image,
                        self.blobs.blobs_dir,
                        self.identity.ca_pem,
                        request.key_id,
                        self.identity.name,
                        progress,
                        group_id,
                    )
                else:
                    m = await asyncio.to_thread(
                        prepare_image,
                        self.docker,
                        image,
                        self.blobs.blobs_dir,
                        self.identity.ca_pem,
                        request.key_id,
                        self.identity.name,
                        progress,
                        group_id,
                    )
                for layer in m.layers:
                    self.blobs.mark_verified(layer.blob)  # hashed while exported
                manifests.append(m.to_bytes())
        finally:
            forwarder.cancel()
            allocator.trim()  # the export's and the hashing's buffers
        return PrepareResponse(tuple(manifests))

    async def publish(self, request: PublishRequest, emit: Emit) -> PublishResponse:
        published = []
        for raw in request.envelopes:
            envelope = SignedManifest.from_bytes(raw)
            manifest = envelope.verify(None)
            for layer in manifest.layers:
                if not self.blobs.is_verified(layer.blob):
                    raise UsageError(f"blob {layer.blob[:19]} of {manifest.ref} is not in this agent's cache")
            entry = await self.tracker.publish(raw)
            self.manifests.save(envelope)
            for layer in manifest.layers:
                self.engine.add_layer(layer, self.blobs.blobs_dir, self.tracker.announce_url, seed=True)
            self.blobs.touch([layer.blob for layer in manifest.layers])
            await emit(Note(f"published {entry.ref} ({entry.image_id[:19]}), seeding"))
            published.append(entry)
        return PublishResponse(tuple(published))


def _route(request_type: type[Req], op: Callable[[Req, Emit], Awaitable[Message]]) -> Handler:
    """A socket handler for a typed op: decode the request, run, encode the response."""

    async def handle(request: dict[str, Any], emit: RawEmit) -> dict[str, Any]:
        async def emit_typed(progress: Message) -> None:
            await emit(progress.to_map())

        response = await op(request_type.from_map(request), emit_typed)
        return response.to_map()

    return handle
