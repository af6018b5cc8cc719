"""The pull pipeline: manifest → signature → torrents → sha256 → docker load.

Nothing reaches Docker unless the manifest verifies against a pinned builder
key, every torrent is exactly the one the manifest names and is bound to this
swarm's CA, and every blob's sha256 matches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from swarm.agent.store import BlobStore, ManifestStore
from swarm.agent.tracker_client import TrackerClient
from swarm.core.digest import digest_hex
from swarm.core.errors import DockerError, ImageNotFound, NotFound, UntrustedManifest
from swarm.core.manifest import Manifest
from swarm.core.refs import ImageRef
from swarm.core.signing import SignedManifest
from swarm.engine.metainfo import check_layer_torrent
from swarm.engine.session import Engine
from swarm.images import load as docker_load

log = logging.getLogger(__name__)


@dataclass
class PullState:
    ref: str
    stage: str = "resolving"          # resolving → downloading → verifying → loading → done
    manifest: Manifest | None = None
    started: float = field(default_factory=time.monotonic)
    cached: set[str] = field(default_factory=set)   # blobs that were already here


class Puller:
    def __init__(self, engine: Engine, blobs: BlobStore, manifests: ManifestStore, tracker: TrackerClient,
                 trusted: list[bytes], docker: Any, ca_pem: str) -> None:
        self._engine = engine
        self._blobs = blobs
        self._manifests = manifests
        self._tracker = tracker
        self._trusted = trusted
        self._docker = docker
        self.ca_pem = ca_pem
        self.active: dict[str, tuple[PullState, asyncio.Task[str]]] = {}

    def start(self, ref: ImageRef) -> tuple[PullState, asyncio.Task[str]]:
        """Start pulling `ref`, or join the pull of it already under way."""
        key = str(ref)
        if key in self.active:
            return self.active[key]
        state = PullState(key)
        task = asyncio.create_task(self._pull(ref, state), name=f"pull {key}")
        self.active[key] = (state, task)
        task.add_done_callback(lambda _t: self.active.pop(key, None))
        return state, task

    async def _pull(self, ref: ImageRef, state: PullState) -> str:
        try:
            data = await self._tracker.manifest(str(ref))
        except NotFound as exc:
            raise ImageNotFound(f"unknown image {ref}: no such manifest on the tracker") from exc
        envelope = SignedManifest.from_bytes(data)
        if not self._trusted:
            raise UntrustedManifest("no trusted builder keys: start the agent with --trust PUBKEY")
        manifest = envelope.verify(self._trusted)
        if manifest.ref != ref:
            raise UntrustedManifest(f"the tracker answered {ref} with a manifest for {manifest.ref}")
        for layer in manifest.layers:
            check_layer_torrent(layer.torrent, layer.info_hash, digest_hex(layer.blob), layer.blob_size, self.ca_pem)
        state.manifest = manifest
        log.info("pulling %s (%s, %d layers)", ref, manifest.image_id[:19], len(manifest.layers))

        if await asyncio.to_thread(docker_load.image_id, self._docker, str(ref)) == manifest.image_id:
            state.cached = {layer.blob for layer in manifest.layers}
        else:
            await self._fetch(manifest, state)
            state.stage = "loading"
            await self._load(manifest)
        self._manifests.save(envelope)
        state.stage = "done"
        log.info("%s loaded as %s in %.1fs", ref, manifest.image_id[:19], time.monotonic() - state.started)
        return manifest.image_id

    async def _fetch(self, manifest: Manifest, state: PullState) -> None:
        unique = {layer.blob: layer for layer in manifest.layers}
        state.cached = {b for b in unique if self._blobs.is_verified(b)}
        missing = [layer for b, layer in unique.items() if b not in state.cached]
        for layer in unique.values():
            # blobs already here are seeded too: this host serves what it holds
            self._engine.add(layer.torrent, self._blobs.path(layer.blob).parent, self._tracker.announce_url,
                             seed=layer.blob in state.cached)
        state.stage = "downloading"
        await asyncio.gather(*(self._engine.wait_finished(layer.info_hash) for layer in missing))
        state.stage = "verifying"
        for layer in missing:
            try:
                await self._blobs.verify(layer.blob)
            except Exception:
                self._engine.remove(layer.info_hash)
                raise

    async def _load(self, manifest: Manifest) -> None:
        layers = [(layer.diff_id, layer.size, self._blobs.path(layer.blob), layer.compression)
                  for layer in manifest.layers]
        stream = docker_load.image_tar_stream(str(manifest.ref), manifest.config, layers)
        await asyncio.to_thread(docker_load.load_image, self._docker, stream)
        loaded = await asyncio.to_thread(docker_load.image_id, self._docker, str(manifest.ref))
        if loaded != manifest.image_id:
            raise DockerError(f"Docker holds {manifest.ref} as {loaded}, expected {manifest.image_id}")

    def progress(self, state: PullState) -> dict[str, Any]:
        layers = []
        if state.manifest is not None:
            seen = set()
            for layer in state.manifest.layers:
                if layer.blob in seen:
                    continue
                seen.add(layer.blob)
                entry: dict[str, Any] = {"blob": layer.blob, "total": layer.blob_size}
                if layer.blob in state.cached:
                    entry.update(done=layer.blob_size, rate=0, peers=0, state="cached")
                elif self._engine.has(layer.info_hash):
                    st = self._engine.status(layer.info_hash)
                    entry.update(done=st.done, rate=st.download_rate,
                                 peers=sum(1 for p in st.peers if p.connected), state=st.state)
                else:
                    entry.update(done=0, rate=0, peers=0, state="waiting")
                layers.append(entry)
        return {"ref": state.ref, "stage": state.stage, "layers": layers}
