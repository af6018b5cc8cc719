"""Who is in each torrent's swarm: a small store interface and its in-memory form.

Peers are keyed by their peer_id within a torrent. A peer that stops
announcing for `ttl` seconds (twice the announce interval) is dropped; a
`stopped` event drops it at once; revoking a token drops its host everywhere.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

#: most peers handed out per announce, whatever numwant asks (libtorrent asks 200)
MAX_NUMWANT = 50


@dataclass(frozen=True)
class Peer:
    ip: str
    port: int
    peer_id: bytes
    left: int
    host: str            # the token name the peer announced with
    last_seen: float = 0.0  # the store's clock, set by announce()

    @property
    def complete(self) -> bool:
        return self.left == 0

    def same_endpoint(self, other: Peer) -> bool:
        return self.peer_id == other.peer_id or (self.ip == other.ip and self.port == other.port)


@dataclass(frozen=True)
class SwarmCounts:
    complete: int
    incomplete: int
    downloaded: int


class PeerStore(Protocol):
    def announce(self, info_hash: bytes, peer: Peer) -> None: ...

    def remove(self, info_hash: bytes, peer: Peer) -> None: ...

    def remove_host(self, host: str) -> None: ...

    def completed(self, info_hash: bytes) -> None:
        """Count one finished download (a `completed` event) for scrape."""

    def peers(self, info_hash: bytes, exclude: Peer, numwant: int) -> list[Peer]: ...

    def counts(self, info_hash: bytes) -> SwarmCounts: ...

    def expire(self, now: float | None = None) -> int:
        """Drop peers not seen for the store's ttl; returns how many went."""


@dataclass
class _Swarm:
    peers: dict[bytes, Peer] = field(default_factory=dict)
    downloaded: int = 0


class MemoryPeerStore:
    def __init__(self, ttl: float, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._swarms: dict[bytes, _Swarm] = {}
        self._rng = rng or random.Random()
        self._clock = clock

    def announce(self, info_hash: bytes, peer: Peer) -> None:
        peer = replace(peer, last_seen=self._clock())
        swarm = self._swarms.setdefault(info_hash, _Swarm())
        # a peer that restarted with a new peer_id on the same address replaces its old entry
        for key in [k for k, p in swarm.peers.items() if p.same_endpoint(peer)]:
            del swarm.peers[key]
        swarm.peers[peer.peer_id] = peer

    def remove(self, info_hash: bytes, peer: Peer) -> None:
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            return
        for key in [k for k, p in swarm.peers.items() if p.same_endpoint(peer)]:
            del swarm.peers[key]

    def remove_host(self, host: str) -> None:
        for swarm in self._swarms.values():
            for key in [k for k, p in swarm.peers.items() if p.host == host]:
                del swarm.peers[key]

    def completed(self, info_hash: bytes) -> None:
        self._swarms.setdefault(info_hash, _Swarm()).downloaded += 1

    def peers(self, info_hash: bytes, exclude: Peer, numwant: int) -> list[Peer]:
        """Complete peers first, then a random sample of the rest; never `exclude` itself.

        A complete requester gets no other complete peers: two seeds have nothing to trade.
        """
        swarm = self._live(info_hash)
        if swarm is None:
            return []
        n = max(0, min(numwant, MAX_NUMWANT))
        others = [p for p in swarm.peers.values() if not p.same_endpoint(exclude)]
        seeds = [] if exclude.complete else [p for p in others if p.complete]
        rest = [p for p in others if not p.complete]
        chosen = self._rng.sample(seeds, min(n, len(seeds)))
        return chosen + self._rng.sample(rest, min(n - len(chosen), len(rest)))

    def counts(self, info_hash: bytes) -> SwarmCounts:
        swarm = self._live(info_hash)
        if swarm is None:
            return SwarmCounts(0, 0, 0)
        complete = sum(1 for p in swarm.peers.values() if p.complete)
        return SwarmCounts(complete, len(swarm.peers) - complete, swarm.downloaded)

    def expire(self, now: float | None = None) -> int:
        now = self._clock() if now is None else now
        gone = 0
        for swarm in self._swarms.values():
            gone += _expire(swarm, now - self.ttl)
        return gone

    def _live(self, info_hash: bytes) -> _Swarm | None:
        swarm = self._swarms.get(info_hash)
        if swarm is not None:
            _expire(swarm, self._clock() - self.ttl)
        return swarm


def _expire(swarm: _Swarm, cutoff: float) -> int:
    stale = [k for k, p in swarm.peers.items() if p.last_seen < cutoff]
    for key in stale:
        del swarm.peers[key]
    return len(stale)
