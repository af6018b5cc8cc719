"""The in-process PeerStore: the default for a single tracker process, and the policy's reference."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from swarm.tracker.peers.base import (
    ENDPOINT_TAKEN,
    MAX_NUMWANT,
    MAX_PEERS_PER_HOST,
    PEER_ID_TAKEN,
    Handout,
    Peer,
    SwarmCounts,
)


@dataclass
class _Swarm:
    seeds: dict[bytes, Peer] = field(default_factory=dict)  # by peer_id
    leechers: dict[bytes, Peer] = field(default_factory=dict)
    endpoints: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (ip, port) -> peer_id
    owned: dict[str, set[bytes]] = field(default_factory=dict)  # host -> its peer_ids here
    downloaded: int = 0
    expired_at: float = float("-inf")  # the store's clock when stale peers were last dropped

    def __len__(self) -> int:
        return len(self.seeds) + len(self.leechers)

    def all(self) -> list[Peer]:
        return [*self.seeds.values(), *self.leechers.values()]

    def get(self, peer_id: bytes) -> Peer | None:
        return self.seeds.get(peer_id) or self.leechers.get(peer_id)

    def drop(self, peer_id: bytes) -> bool:
        peer = self.seeds.pop(peer_id, None) or self.leechers.pop(peer_id, None)
        if peer is None:
            return False
        if self.endpoints.get((peer.ip, peer.port)) == peer_id:
            del self.endpoints[(peer.ip, peer.port)]
        mine = self.owned.get(peer.host)
        if mine is not None:
            mine.discard(peer_id)
            if not mine:
                del self.owned[peer.host]
        return True

    def owner_conflict(self, peer: Peer) -> str:
        """Why `peer` may not be recorded or removed: its id or address is another host's ("" if not)."""
        previous = self.get(peer.peer_id)
        if previous is not None and previous.host != peer.host:
            return PEER_ID_TAKEN
        holder_id = self.endpoints.get((peer.ip, peer.port))
        holder = self.get(holder_id) if holder_id is not None else None
        if holder is not None and holder.host != peer.host:
            return ENDPOINT_TAKEN
        return ""

    def put(self, peer: Peer, per_host: int) -> None:
        """Record `peer` (owner_conflict must be "" first)."""
        old = self.endpoints.get((peer.ip, peer.port))
        if old is not None and old != peer.peer_id:
            self.drop(old)  # a peer that restarted with a new peer_id on the same address replaces its old entry
        previous = self.get(peer.peer_id)
        if previous is not None and (previous.ip, previous.port) != (peer.ip, peer.port):
            self.drop(peer.peer_id)
            previous = None
        mine = self.owned.setdefault(peer.host, set())
        if previous is None:
            while len(mine) >= per_host:  # the host's least recently seen entry makes room
                self.drop(min(mine, key=lambda pid: self._seen(pid)))
            mine = self.owned.setdefault(peer.host, set())
        (self.seeds if peer.complete else self.leechers)[peer.peer_id] = peer
        (self.leechers if peer.complete else self.seeds).pop(peer.peer_id, None)
        self.endpoints[(peer.ip, peer.port)] = peer.peer_id
        mine.add(peer.peer_id)

    def _seen(self, peer_id: bytes) -> float:
        p = self.get(peer_id)
        return p.last_seen if p is not None else float("-inf")


#: lazy expiry of one swarm on announce runs at most this often (seconds of the store's clock)
EXPIRE_EVERY = 1.0


class MemoryPeerStore:
    def __init__(
        self,
        ttl: float,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        per_host: int = MAX_PEERS_PER_HOST,
    ) -> None:
        self.ttl = ttl
        self.per_host = per_host
        self._swarms: dict[bytes, _Swarm] = {}
        self._rng = rng or random.Random()
        self._clock = clock

    # PeerStore

    async def handle(self, info_hash: bytes, peer: Peer, event: str, numwant: int) -> Handout:
        swarm = self._swarms.get(info_hash)
        conflict = swarm.owner_conflict(peer) if swarm is not None else ""
        if conflict:
            return Handout([], self.counts(info_hash), refused=conflict)
        if event == "stopped":
            self.remove(info_hash, peer)
            return Handout([], self.counts(info_hash))
        self.announce(info_hash, peer)
        if event == "completed":
            self.completed(info_hash)
        return Handout(self.peers(info_hash, peer, numwant), self.counts(info_hash))

    async def scrape(self, info_hashes: list[bytes]) -> dict[bytes, SwarmCounts]:
        return {h: self.counts(h) for h in info_hashes}

    async def entries(self, info_hash: bytes, limit: int) -> list[Peer]:
        swarm = self._live(info_hash)
        return swarm.all()[: max(0, limit)] if swarm is not None else []

    async def drop_host(self, host: str) -> int:
        return self.remove_host(host)

    async def sweep(self) -> int:
        return self.expire()

    async def active(self) -> int:
        return sum(len(s) for s in self._swarms.values())

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    # the policy, synchronously

    def announce(self, info_hash: bytes, peer: Peer) -> bool:
        """Record `peer`; False (and nothing changed) if its id or address is another host's."""
        peer = replace(peer, last_seen=self._clock())
        swarm = self._swarms.setdefault(info_hash, _Swarm())
        if swarm.owner_conflict(peer):
            return False
        swarm.put(peer, self.per_host)
        return True

    def remove(self, info_hash: bytes, peer: Peer) -> None:
        """Drop `peer`'s entry and any other entry at its address, as long as they are `peer.host`'s."""
        swarm = self._swarms.get(info_hash)
        if swarm is None or swarm.owner_conflict(peer):
            return
        swarm.drop(peer.peer_id)
        other = swarm.endpoints.get((peer.ip, peer.port))
        if other is not None:
            swarm.drop(other)

    def remove_host(self, host: str) -> int:
        gone = 0
        for swarm in self._swarms.values():
            for pid in list(swarm.owned.get(host, ())):
                gone += swarm.drop(pid)
        return gone

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
        chosen = [] if exclude.complete else self._sample(swarm.seeds, exclude, n)
        return chosen + self._sample(swarm.leechers, exclude, n - len(chosen))

    def _sample(self, group: dict[bytes, Peer], exclude: Peer, n: int) -> list[Peer]:
        if n <= 0 or not group:
            return []
        # the requester (by id or address) is at most two entries: draw two more, drop them
        drawn = self._rng.sample(list(group.values()), min(n + 2, len(group)))
        return [p for p in drawn if not p.same_endpoint(exclude)][:n]

    def counts(self, info_hash: bytes) -> SwarmCounts:
        swarm = self._live(info_hash)
        if swarm is None:
            return SwarmCounts(0, 0, 0)
        return SwarmCounts(len(swarm.seeds), len(swarm.leechers), swarm.downloaded)

    def expire(self, now: float | None = None) -> int:
        now = self._clock() if now is None else now
        gone = 0
        for info_hash, swarm in list(self._swarms.items()):
            gone += _expire(swarm, now - self.ttl)
            swarm.expired_at = now
            if not len(swarm) and not swarm.downloaded:
                del self._swarms[info_hash]
        return gone

    def _live(self, info_hash: bytes) -> _Swarm | None:
        swarm = self._swarms.get(info_hash)
        if swarm is not None:
            now = self._clock()
            if now - swarm.expired_at >= EXPIRE_EVERY:
                _expire(swarm, now - self.ttl)
                swarm.expired_at = now
        return swarm


def _expire(swarm: _Swarm, cutoff: float) -> int:
    stale = [p.peer_id for p in swarm.all() if p.last_seen < cutoff]
    for key in stale:
        swarm.drop(key)
    return len(stale)
