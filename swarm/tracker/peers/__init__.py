"""Peer stores: the interface and records in `base`, in memory (`memory`) or in Redis (`redis`).

Opened by `open_peer_store`.
"""

from __future__ import annotations

from swarm.tracker.peers.base import PeerStore


def open_peer_store(redis_url: str | None, ttl: float) -> PeerStore:
    """The store in Redis at `redis_url` (shared by replicas and workers), else in this process.

    Peers not seen for `ttl` seconds leave it."""
    if redis_url:
        from swarm.tracker.peers.redis import (
            RedisPeerStore,  # redis loads only for a Redis store
        )

        return RedisPeerStore(redis_url, ttl=ttl)
    from swarm.tracker.peers.memory import MemoryPeerStore

    return MemoryPeerStore(ttl=ttl)
