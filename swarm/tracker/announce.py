"""BitTorrent announce and scrape, as pure functions: query in, bencoded bytes out.

BEP 3 (announce, dict peers), BEP 23 (compact IPv4 `peers`), BEP 7 (compact
IPv6 `peers6`), BEP 48 (scrape). Swarm torrents are v2-only and announce the
first 20 bytes of their 32-byte info-hash (`Layer.announce_hash`).
Errors are a bencoded {"failure reason": ...}, sent with HTTP 200.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes

from swarm.core.errors import InvalidInput
from swarm.core.peerid import canonical_ip
from swarm.core.torrent import bencode
from swarm.tracker.peers.base import MAX_NUMWANT, Peer, SwarmCounts

EVENTS = ("", "started", "stopped", "completed", "paused")

#: a seed (left=0) announces this many times less often than a downloader, where the peer store
#: outlives the tracker process: tracker load then follows active downloads, not cached layers
SEED_INTERVAL_FACTOR = 40


def seed_interval(interval: int, durable_peers: bool) -> int:
    """The interval the tracker tells seeds. A seed is only asked to announce so that new
    downloaders find it, and its entry stays in the store for as long; with an in-memory store a
    tracker restart forgets every peer, so seeds keep the downloaders' interval to come back soon."""
    return interval * SEED_INTERVAL_FACTOR if durable_peers else interval


def interval_for(left: int, interval: int, seed_interval: int) -> int:
    """The announce interval for a peer with `left` bytes still to download."""
    return seed_interval if left == 0 else interval


@dataclass(frozen=True)
class AnnounceRequest:
    info_hash: bytes  # 20 bytes
    peer_id: bytes  # 20 bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: str  # one of EVENTS ("" for a regular announce)
    numwant: int
    compact: bool
    no_peer_id: bool


MAX_FIELDS = 200


def _params(raw_query: str) -> dict[str, list[bytes]]:
    """Percent-decode a raw query into raw bytes values (info_hash and peer_id are binary).

    What parse_qs does for `&`-separated fields, without its generality (a third of the parse cost);
    a query must be ASCII (clients percent-encode everything else)."""
    if not raw_query.isascii():
        raise InvalidInput("malformed query string")
    out: dict[str, list[bytes]] = {}
    parts = raw_query.split("&")
    if len(parts) > MAX_FIELDS:
        raise InvalidInput("malformed query string")
    for part in parts:
        if not part:
            continue
        name, _, value = part.partition("=")
        key = unquote_to_bytes(name.replace("+", " ")).decode("latin-1")
        out.setdefault(key, []).append(unquote_to_bytes(value.replace("+", " ")))
    return out


def _one(params: Mapping[str, list[bytes]], name: str, default: bytes | None = None) -> bytes:
    values = params.get(name)
    if not values:
        if default is None:
            raise InvalidInput(f"missing {name}")
        return default
    return values[0]


def _int(params: Mapping[str, list[bytes]], name: str, default: int | None = None, maximum: int = 2**63 - 1) -> int:
    raw = _one(params, name, None if default is None else str(default).encode())
    if not raw.isdigit() or len(raw) > 20:
        raise InvalidInput(f"invalid {name}")
    value = int(raw)
    if value > maximum:
        raise InvalidInput(f"invalid {name}")
    return value


def _hash20(raw: bytes, name: str) -> bytes:
    if len(raw) != 20:
        raise InvalidInput(f"invalid {name}: expected 20 bytes")
    return raw


def parse_announce(raw_query: str) -> AnnounceRequest:
    p = _params(raw_query)
    port = _int(p, "port")
    if not 1 <= port <= 65535:
        raise InvalidInput("invalid port")
    event = _one(p, "event", b"").decode("latin-1")
    if event not in EVENTS:
        raise InvalidInput("invalid event")
    return AnnounceRequest(
        info_hash=_hash20(_one(p, "info_hash"), "info_hash"),
        peer_id=_hash20(_one(p, "peer_id"), "peer_id"),
        port=port,
        uploaded=_int(p, "uploaded", 0),
        downloaded=_int(p, "downloaded", 0),
        left=_int(p, "left"),
        event=event,
        numwant=_int(p, "numwant", MAX_NUMWANT),
        compact=_one(p, "compact", b"0") == b"1",
        no_peer_id=_one(p, "no_peer_id", b"0") == b"1",
    )


def parse_scrape(raw_query: str) -> list[bytes]:
    """The info-hashes asked for; at least one (a scrape of everything is not served)."""
    hashes = [_hash20(h, "info_hash") for h in _params(raw_query).get("info_hash", [])]
    if not hashes:
        raise InvalidInput("missing info_hash")
    return list(dict.fromkeys(hashes))


@lru_cache(maxsize=65536)
def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


@lru_cache(maxsize=65536)
def normalize_ip(remote: str) -> str:
    """The peer address as announced: IPv4-mapped IPv6 addresses become IPv4 (InvalidInput if none)."""
    return canonical_ip(remote)


def announce_response(
    peers: Iterable[Peer],
    counts: SwarmCounts,
    interval: int,
    compact: bool,
    no_peer_id: bool = False,
    min_interval: int | None = None,
) -> bytes:
    out: dict[bytes, object] = {
        b"interval": interval,
        b"min interval": max(1, interval // 2) if min_interval is None else min_interval,
        b"complete": counts.complete,
        b"incomplete": counts.incomplete,
    }
    if compact:
        v4, v6 = bytearray(), bytearray()
        for peer in peers:
            packed = _packed(peer.ip)
            target = v4 if len(packed) == 4 else v6
            target += packed + peer.port.to_bytes(2, "big")
        out[b"peers"] = bytes(v4)
        if v6:
            out[b"peers6"] = bytes(v6)
    else:
        out[b"peers"] = [_peer_dict(p, no_peer_id) for p in peers]
    return bencode(out)


def _peer_dict(peer: Peer, no_peer_id: bool) -> dict[bytes, object]:
    d: dict[bytes, object] = {b"ip": peer.ip.encode(), b"port": peer.port}
    if not no_peer_id:
        d[b"peer id"] = peer.peer_id
    return d


def scrape_response(files: Mapping[bytes, SwarmCounts]) -> bytes:
    return bencode(
        {
            b"files": {
                h: {b"complete": c.complete, b"downloaded": c.downloaded, b"incomplete": c.incomplete}
                for h, c in files.items()
            }
        }
    )


def failure(reason: str) -> bytes:
    return bencode({b"failure reason": reason.encode()})
