"""Peer stores: the interface and records in `base`, in memory (`memory`) or in Redis (`redis`).

Opened by `open_peer_store`.
"""

from __future__ import annotations

from swarm.core.errors import InvalidInput, UsageError
from swarm.tracker.peers.base import MAX_PEERS_PER_HOST, PeerStore


def open_peer_store(redis_url: str | None, ttl: float, per_host: int = MAX_PEERS_PER_HOST) -> PeerStore:
    """The store in Redis at `redis_url` (shared by replicas and workers), else in this process.

    Peers not seen for `ttl` seconds leave it; one host holds at most `per_host` entries per torrent."""
    if per_host < 1:
        raise InvalidInput("the peers per host limit must be at least 1")
    if redis_url:
        try:
            from swarm.tracker.peers.redis import (
                RedisPeerStore,  # redis loads only for a Redis store
            )
        except ModuleNotFoundError as exc:
            raise UsageError(f"--redis needs the tracker-ha extra (pip install 'swarm[tracker-ha]'): {exc}") from None

        return RedisPeerStore(redis_url, ttl=ttl, per_host=per_host)
    from swarm.tracker.peers.memory import MemoryPeerStore

    return MemoryPeerStore(ttl=ttl, per_host=per_host)
