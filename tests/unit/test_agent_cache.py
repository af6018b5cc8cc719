"""The cache budget's accounting: reservations count whole, held blobs stay, over budget is logged on change."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from swarm.agent.cache import CacheKeeper
from swarm.agent.metrics import AgentMetrics
from swarm.agent.paths import AgentPaths
from swarm.agent.store import BlobStore, ManifestStore


def _blob(blobs: BlobStore, n: int, size: int) -> str:
    digest = "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()
    blobs.path(digest).write_bytes(b"x" * size)
    blobs.mark_verified(digest)
    blobs.touch([digest])
    return digest


@pytest.fixture
def keeper(tmp_path: Path) -> tuple[CacheKeeper, BlobStore, AgentMetrics]:
    paths = AgentPaths(tmp_path)
    paths.create()
    blobs, metrics = BlobStore(paths), AgentMetrics()
    # no manifests: nothing to protect by age, and no torrent for the engine to stop
    return CacheKeeper(1000, 0, blobs, ManifestStore(paths), None, metrics), blobs, metrics  # type: ignore[arg-type]


def test_a_reservation_counts_whole_and_evicts_before_the_download(keeper: tuple[CacheKeeper, BlobStore,
                                                                                 AgentMetrics]) -> None:
    cache, blobs, metrics = keeper
    old, held = _blob(blobs, 1, 400), _blob(blobs, 2, 400)
    assert cache.committed() == 800 and cache.over_budget() == 0
    cache.hold("app:2", [held])
    evicted = cache.reserve("app:2", {"sha256:" + "f" * 64: 500})
    assert evicted == [old] and not blobs.path(old).exists() and blobs.path(held).exists()
    assert (cache.committed(), cache.reserved(), cache.over_budget()) == (900, 500, 0)
    assert metrics.registry.get_sample_value("swarm_agent_cache_evicted_bytes_total") == 400
    cache.release("app:2")
    assert cache.reserved() == 0 and cache.committed() == 400


def test_over_budget_is_logged_when_it_starts_and_when_it_ends(keeper: tuple[CacheKeeper, BlobStore, AgentMetrics],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    cache, blobs, metrics = keeper
    caplog.set_level(logging.INFO, "swarm.agent.cache")
    held = _blob(blobs, 1, 1500)
    cache.hold("app:1", [held])
    for _ in range(5):
        cache.evict()
    assert metrics.registry.get_sample_value("swarm_agent_cache_over_budget_bytes") == 500
    cache.release("app:1")
    cache.evict()
    cache.evict()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("over budget by 500 B" in line for line in lines) == 1
    assert sum("back within budget" in line for line in lines) == 1
    assert metrics.registry.get_sample_value("swarm_agent_cache_over_budget_bytes") == 0
