"""Keeps the blob cache within its disk budget (--cache-size).

Least-recently-used blobs go first; never a blob that a running pull needs,
nor one of an image this host loaded or published less than --min-seed-time
ago (it is what the fleet is fetching right now). Evicting a blob removes its
torrent, so libtorrent announces `stopped` and peers stop asking for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from swarm.agent.store import BlobStore, ManifestStore
from swarm.core.units import human_bytes
from swarm.engine.session import Engine

log = logging.getLogger(__name__)


class CacheKeeper:
    def __init__(self, budget: int, min_seed_time: float, blobs: BlobStore, manifests: ManifestStore,
                 engine: Engine, busy_blobs: Callable[[], set[str]]) -> None:
        self.budget = budget
        self.min_seed_time = min_seed_time
        self._blobs = blobs
        self._manifests = manifests
        self._engine = engine
        self._busy_blobs = busy_blobs

    def over_budget(self) -> int:
        if self.budget <= 0:
            return 0
        return max(0, self._blobs.usage()[0] - self.budget)

    def evict(self) -> list[str]:
        excess = self.over_budget()
        if excess == 0:
            return []
        protected = set(self._busy_blobs())
        info_hash: dict[str, bytes] = {}
        now = time.time()
        for _env, manifest in self._manifests.all():
            recent = now - self._manifests.saved_at(str(manifest.ref)) < self.min_seed_time
            for layer in manifest.layers:
                info_hash[layer.blob] = layer.info_hash
                if recent:
                    protected.add(layer.blob)
        candidates = sorted((self._blobs.last_used(d), d) for d in self._blobs.verified() if d not in protected)
        evicted = []
        for _used, digest in candidates:
            if excess <= 0:
                break
            try:
                size = self._blobs.path(digest).stat().st_size
            except FileNotFoundError:
                size = 0
            if digest in info_hash:
                self._engine.remove(info_hash[digest])
            self._blobs.forget(digest, delete=True)
            excess -= size
            evicted.append(digest)
            log.info("cache: evicted %s (%s)", digest[:19], human_bytes(size))
        if excess > 0:
            log.warning("cache: %s over budget, but every remaining blob is in use or seeding recently",
                        human_bytes(excess))
        return evicted
