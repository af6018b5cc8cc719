"""Announce/scrape parsing and responses, and the peer handout policy (pure, no HTTP)."""

from __future__ import annotations

import random
from urllib.parse import quote_from_bytes

import libtorrent as lt
import pytest

from swarm.core.errors import InvalidInput
from swarm.tracker.announce import (
    SEED_INTERVAL_FACTOR,
    announce_response,
    failure,
    interval_for,
    normalize_ip,
    parse_announce,
    parse_scrape,
    scrape_response,
    seed_interval,
)
from swarm.tracker.peers.base import MAX_NUMWANT, Peer, SwarmCounts
from swarm.tracker.peers.memory import MemoryPeerStore
from tests.support.bt import Clock

IH = bytes(range(200, 220))           # not valid UTF-8, has '%' '&' '=' '+' free bytes after quoting
PID = b"-LT2110-" + bytes([0, 37, 38, 43, 61, 255, 32, 1, 2, 3, 4, 5])  # includes % & + = and space


def query(**overrides: object) -> str:
    fields: dict[str, object] = {
        "info_hash": IH, "peer_id": PID, "port": 6882, "uploaded": 0, "downloaded": 0, "left": 100,
        "corrupt": 0, "key": "abc", "event": "started", "numwant": 200, "compact": 1, "no_peer_id": 1,
        "supportcrypto": 1, "redundant": 0,
    }
    fields.update(overrides)
    parts = []
    for k, v in fields.items():
        if v is None:
            continue
        raw = v if isinstance(v, bytes) else str(v).encode()
        parts.append(f"{k}={quote_from_bytes(raw, safe='')}")
    return "&".join(parts)


def test_parse_raw_bytes() -> None:
    req = parse_announce(query())
    assert req.info_hash == IH and req.peer_id == PID
    assert (req.port, req.left, req.event, req.numwant, req.compact, req.no_peer_id) == (6882, 100, "started", 200,
                                                                                         True, True)


def test_parse_defaults() -> None:
    req = parse_announce(query(event=None, numwant=None, compact=None, no_peer_id=None, uploaded=None))
    assert (req.event, req.numwant, req.compact, req.no_peer_id, req.uploaded) == ("", MAX_NUMWANT, False, False, 0)
    assert parse_announce(query(event="")).event == ""


@pytest.mark.parametrize("overrides, message", [
    ({"info_hash": IH[:19]}, "info_hash"),
    ({"info_hash": IH + b"x"}, "info_hash"),
    ({"info_hash": bytes(32)}, "info_hash"),
    ({"peer_id": b"short"}, "peer_id"),
    ({"port": 0}, "port"),
    ({"port": 65536}, "port"),
    ({"port": -1}, "port"),
    ({"port": "x"}, "port"),
    ({"left": -5}, "left"),
    ({"uploaded": "1e3"}, "uploaded"),
    ({"numwant": "9" * 30}, "numwant"),
    ({"event": "bogus"}, "event"),
    ({"info_hash": None}, "missing info_hash"),
    ({"peer_id": None}, "missing peer_id"),
    ({"port": None}, "missing port"),
    ({"left": None}, "missing left"),
])
def test_parse_rejects(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_announce(query(**overrides))


def test_parse_scrape() -> None:
    other = bytes(20)
    q = f"info_hash={quote_from_bytes(IH)}&info_hash={quote_from_bytes(other)}&info_hash={quote_from_bytes(IH)}"
    assert parse_scrape(q) == [IH, other]
    with pytest.raises(InvalidInput):
        parse_scrape("")
    with pytest.raises(InvalidInput):
        parse_scrape("info_hash=abc")


def test_normalize_ip() -> None:
    assert normalize_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert normalize_ip("127.0.0.1") == "127.0.0.1"
    assert normalize_ip("2001:db8::0001") == "2001:db8::1"
    with pytest.raises(InvalidInput):
        normalize_ip("not-an-ip")


PEERS = [
    Peer("10.0.0.1", 6881, b"a" * 20, 0, "h1"),
    Peer("2001:db8::1", 6882, b"b" * 20, 5, "h2"),
    Peer("10.0.0.3", 65535, b"c" * 20, 5, "h3"),
]


def test_compact_response() -> None:
    d = lt.bdecode(announce_response(PEERS, SwarmCounts(1, 2, 0), 30, compact=True))
    assert d[b"interval"] == 30 and d[b"min interval"] == 15
    assert d[b"complete"] == 1 and d[b"incomplete"] == 2
    assert d[b"peers"] == bytes([10, 0, 0, 1]) + (6881).to_bytes(2, "big") + bytes([10, 0, 0, 3]) + b"\xff\xff"
    assert d[b"peers6"] == bytes.fromhex("20010db8000000000000000000000001") + (6882).to_bytes(2, "big")


def test_compact_response_without_v6_has_empty_peers() -> None:
    d = lt.bdecode(announce_response([], SwarmCounts(0, 0, 0), 30, compact=True))
    assert d[b"peers"] == b"" and b"peers6" not in d


def test_dict_response() -> None:
    d = lt.bdecode(announce_response(PEERS, SwarmCounts(1, 2, 0), 30, compact=False))
    assert d[b"peers"] == [
        {b"ip": b"10.0.0.1", b"port": 6881, b"peer id": b"a" * 20},
        {b"ip": b"2001:db8::1", b"port": 6882, b"peer id": b"b" * 20},
        {b"ip": b"10.0.0.3", b"port": 65535, b"peer id": b"c" * 20},
    ]
    d = lt.bdecode(announce_response(PEERS[:1], SwarmCounts(1, 0, 0), 30, compact=False, no_peer_id=True))
    assert d[b"peers"] == [{b"ip": b"10.0.0.1", b"port": 6881}]


def test_scrape_and_failure() -> None:
    d = lt.bdecode(scrape_response({IH: SwarmCounts(2, 3, 4)}))
    assert d == {b"files": {IH: {b"complete": 2, b"downloaded": 4, b"incomplete": 3}}}
    assert lt.bdecode(failure("unknown torrent")) == {b"failure reason": b"unknown torrent"}

def peer(i: int, left: int, ip: str = "10.0.0.9") -> Peer:
    return Peer(ip, 7000 + i, i.to_bytes(20, "big"), left, f"h{i}")


def test_handout_complete_first_never_self() -> None:
    store = MemoryPeerStore(ttl=60, rng=random.Random(1))
    seeds = [peer(i, 0) for i in range(3)]
    leechers = [peer(i, 10) for i in range(3, 100)]
    for p in seeds + leechers:
        store.announce(IH, p)
    me = leechers[0]
    got = store.peers(IH, me, 200)
    assert len(got) == MAX_NUMWANT
    assert {p.peer_id for p in got[:3]} == {p.peer_id for p in seeds}
    assert all(not p.complete for p in got[3:])
    assert me.peer_id not in {p.peer_id for p in got}
    assert len({p.peer_id for p in got}) == len(got)
    assert len(store.peers(IH, me, 5)) == 5
    assert store.counts(IH) == SwarmCounts(3, 97, 0)


def test_handout_excludes_same_endpoint_and_seeds_for_a_seed() -> None:
    store = MemoryPeerStore(ttl=60)
    a, b = peer(1, 0), peer(2, 10)
    store.announce(IH, a)
    store.announce(IH, b)
    # same ip+port as `b` under another peer_id: that is the requester itself
    me = Peer(b.ip, b.port, b"z" * 20, 10, "h2")
    assert [p.peer_id for p in store.peers(IH, me, 50)] == [a.peer_id]
    # a seed gets no other seeds
    assert [p.peer_id for p in store.peers(IH, peer(3, 0), 50)] == [b.peer_id]


def test_stopped_expire_and_remove_host() -> None:
    clock = Clock()
    store = MemoryPeerStore(ttl=60, clock=clock)
    a, b, c = peer(1, 10), peer(2, 10), peer(3, 0)
    for p in (a, b, c):
        store.announce(IH, p)
    store.remove(IH, a)
    assert store.counts(IH) == SwarmCounts(1, 1, 0)
    clock.now += 30
    store.announce(IH, b)  # b stays fresh
    clock.now += 31
    assert store.expire() == 1  # c expired
    assert [p.peer_id for p in store.peers(IH, peer(9, 10), 50)] == [b.peer_id]
    store.remove_host(b.host)
    assert store.counts(IH) == SwarmCounts(0, 0, 0)
    store.completed(IH)
    assert store.counts(IH).downloaded == 1


def test_seeds_are_told_a_longer_interval_only_with_a_durable_peer_store() -> None:
    assert seed_interval(30, durable_peers=True) == 30 * SEED_INTERVAL_FACTOR
    assert seed_interval(30, durable_peers=False) == 30
    assert interval_for(0, 30, 1200) == 1200
    assert interval_for(1, 30, 1200) == 30
