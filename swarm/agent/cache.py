"""Keeps the blob cache within its disk budget (--cache-size).

Least-recently-used blobs go first; never a blob that a running pull needs,
nor one of an image this host loaded or published less than --min-seed-time
ago (it is what the fleet is fetching right now). Evicting a blob removes its
torrents (one per host group whose images hold it, all on the one file), so
libtorrent announces `stopped` and peers stop asking for it.

A pull reserves the full size of the blobs it downloads when it starts, and
room is made for them then, so a download never runs the cache over budget
while it lasts. When nothing more can be evicted the cache stays over budget:
that is logged once when it starts and once when it ends, and kept as a metric.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from swarm.agent.metrics import AgentMetrics
from swarm.agent.store import BlobStore, ManifestStore
from swarm.core.units import human_bytes
from swarm.engine.session import Engine

log = logging.getLogger(__name__)


@dataclass
class _Claim:
    """What one pull holds: blobs it needs (never evicted) and the full sizes of those it downloads."""

    blobs: set[str] = field(default_factory=set)
    reserved: dict[str, int] = field(default_factory=dict)


class CacheKeeper:
    def __init__(
        self,
        budget: int,
        min_seed_time: float,
        blobs: BlobStore,
        manifests: ManifestStore,
        engine: Engine,
        metrics: AgentMetrics,
    ) -> None:
        self.budget = budget
        self.min_seed_time = min_seed_time
        self._blobs = blobs
        self._manifests = manifests
        self._engine = engine
        self._metrics = metrics
        self._claims: dict[str, _Claim] = {}
        self._over = False  # over budget at the last eviction: the warning is logged on the change only

    # -- what pulls hold -------------------------------------------------------------

    def hold(self, key: str, blobs: Iterable[str]) -> None:
        """The pull `key` needs `blobs`: none of them is evicted until it is released."""
        self._claims.setdefault(key, _Claim()).blobs.update(blobs)

    def reserve(self, key: str, sizes: Mapping[str, int]) -> list[str]:
        """The pull `key` downloads these blobs (digest -> full size): count them whole from now on
        and evict what must go for them to fit. Returns the evicted digests."""
        claim = self._claims.setdefault(key, _Claim())
        claim.blobs.update(sizes)
        claim.reserved.update(sizes)
        return self.evict()

    def release(self, key: str) -> None:
        self._claims.pop(key, None)

    def _reserved(self) -> dict[str, int]:
        return {d: size for claim in self._claims.values() for d, size in claim.reserved.items()}

    def reserved(self) -> int:
        """Bytes of the blobs being downloaded, counted whole."""
        return sum(self._reserved().values())

    # -- accounting ---------------------------------------------------------------------

    def committed(self) -> int:
        """Bytes on disk, with every blob a running pull downloads counted at its full size."""
        reserved = self._reserved()
        on_disk = self._blobs.sizes()
        return sum(s for d, s in on_disk.items() if d not in reserved) + sum(reserved.values())

    def over_budget(self) -> int:
        if self.budget <= 0:
            return 0
        return max(0, self.committed() - self.budget)

    # -- eviction --------------------------------------------------------------------------

    def evict(self) -> list[str]:
        excess = self.over_budget()
        evicted = self._evict(excess) if excess > 0 else []
        self._note_over_budget(self.over_budget())
        return evicted

    def _evict(self, excess: int) -> list[str]:
        protected = {d for claim in self._claims.values() for d in claim.blobs}
        info_hashes: dict[str, set[bytes]] = {}
        now = time.time()
        for _env, manifest in self._manifests.all():
            recent = now - self._manifests.saved_at(str(manifest.ref)) < self.min_seed_time
            for layer in manifest.layers:
                info_hashes.setdefault(layer.blob, set()).add(layer.info_hash)
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
            for ih in info_hashes.get(digest, ()):
                self._engine.remove(ih)
            self._blobs.forget(digest, delete=True)
            excess -= size
            evicted.append(digest)
            self._metrics.evicted_blobs.inc()
            self._metrics.evicted_bytes.inc(size)
            log.info("cache: evicted %s (%s)", digest[:19], human_bytes(size))
        return evicted

    def _note_over_budget(self, excess: int) -> None:
        self._metrics.cache_over_budget.set(excess)
        if excess > 0 and not self._over:
            log.warning(
                "cache: over budget by %s (budget %s): every remaining blob is in use or was "
                "pulled or published less than --min-seed-time ago",
                human_bytes(excess),
                human_bytes(self.budget),
            )
        elif excess == 0 and self._over:
            log.info("cache: back within budget (%s of %s)", human_bytes(self.committed()), human_bytes(self.budget))
        self._over = excess > 0
