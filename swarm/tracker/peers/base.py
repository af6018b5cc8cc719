"""Who is in each torrent's swarm: the store interface and its records (`open_peer_store` is in the package).

Peers are keyed by their peer_id within a torrent. A peer that stops
announcing for `ttl` seconds (twice the announce interval) is dropped; a
`stopped` event drops it at once; revoking a token drops its host everywhere.

Ownership: an entry belongs to the token (host) that created it. Another
token's announce with that peer_id, or from that ip:port, is refused and
changes nothing, `stopped` included. One token holds at most
MAX_PEERS_PER_HOST entries per torrent; a further one replaces the token's
least recently seen entry, so an insider announcing thousands of fake peers
still holds a handful and cannot crowd the real seeds out of handouts.

`PeerStore` is what the tracker service uses, all async so that a networked
store (Redis, redis.py, shared by replicas) never blocks the event loop:
one call per announce (`handle`) does the whole update and handout in one
round trip. `MemoryPeerStore` (memory.py) is the default for a single
tracker process; its synchronous primitives are the policy's reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: most peers handed out per announce, whatever numwant asks (libtorrent asks 200)
MAX_NUMWANT = 50
#: entries one token may hold in one torrent's swarm (an agent needs one; restarts replace theirs)
MAX_PEERS_PER_HOST = 4

#: why a store refused an announce (the answer's failure reason)
PEER_ID_TAKEN = "peer_id belongs to another host"
ENDPOINT_TAKEN = "address and port belong to another host's peer"


@dataclass(frozen=True)
class Peer:
    ip: str
    port: int
    peer_id: bytes
    left: int
    host: str  # the token name the peer announced with
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


@dataclass(frozen=True)
class Handout:
    peers: list[Peer]  # complete peers first
    counts: SwarmCounts
    refused: str = ""  # set (PEER_ID_TAKEN, ENDPOINT_TAKEN): nothing was recorded or removed


class PeerStore(Protocol):
    async def handle(self, info_hash: bytes, peer: Peer, event: str, numwant: int) -> Handout:
        """Record one announce (`stopped` removes the peer; `completed` counts a download) and
        answer it: up to `numwant` (capped at MAX_NUMWANT) other peers, complete ones first
        (none for a complete requester), then a random sample of the rest; never the requester.

        An announce that would touch another host's entry is refused (`Handout.refused`)."""

    async def scrape(self, info_hashes: list[bytes]) -> dict[bytes, SwarmCounts]: ...

    async def entries(self, info_hash: bytes, limit: int) -> list[Peer]:
        """The torrent's live entries (at most `limit`), with the token that owns each (GET /v1/peers)."""

    async def drop_host(self, host: str) -> int:
        """Remove every peer announced under token `host` (revoked); returns how many went."""

    async def sweep(self) -> int:
        """Drop peers not seen for the store's ttl; returns how many went."""

    async def active(self) -> int:
        """Peers currently in all swarms."""

    async def ping(self) -> None:
        """Raise SwarmError now if the store cannot be reached (checked once at start)."""

    async def aclose(self) -> None: ...
