"""Both peer stores follow one handout policy; the Redis one against a real redis-server."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from swarm.tracker.peers.base import MAX_NUMWANT, Peer, PeerStore, SwarmCounts
from swarm.tracker.peers.memory import MemoryPeerStore
from swarm.tracker.peers.redis import RedisPeerStore
from tests.support.bt import Clock
from tests.support.redis import RedisServer

IH = bytes(range(200, 220))
OTHER = bytes(20)

def peer(i: int, left: int, ip: str = "10.0.0.9", host: str | None = None) -> Peer:
    return Peer(ip, 7000 + i, i.to_bytes(20, "big"), left, host or f"h{i}")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer.start(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[PeerStore, Clock]]:
    clock = Clock(1_000_000.0)
    s: PeerStore
    if request.param == "memory":
        s = MemoryPeerStore(ttl=60, rng=random.Random(1), clock=clock)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        s = RedisPeerStore(server.url, ttl=60, prefix=f"t{random.getrandbits(64):x}", clock=clock)
    yield s, clock
    await s.aclose()


async def test_complete_first_never_self_capped(store: tuple[PeerStore, Clock]) -> None:
    s, _ = store
    seeds = [peer(i, 0) for i in range(3)]
    leechers = [peer(i, 10) for i in range(3, 100)]
    for p in seeds + leechers:
        await s.handle(IH, p, "started", 0)
    me = leechers[0]
    got = (await s.handle(IH, me, "", 200)).peers
    assert len(got) == MAX_NUMWANT
    assert {p.peer_id for p in got[:3]} == {p.peer_id for p in seeds}
    assert all(p.complete for p in got[:3]) and not any(p.complete for p in got[3:])
    assert me.peer_id not in {p.peer_id for p in got}
    assert len({p.peer_id for p in got}) == len(got)
    assert len((await s.handle(IH, me, "", 5)).peers) == 5
    # a seed gets no seeds; a random sample: two handouts differ
    seed_view = (await s.handle(IH, seeds[0], "", 50)).peers
    assert not any(p.complete for p in seed_view) and len(seed_view) == 50
    again = (await s.handle(IH, seeds[0], "", 50)).peers
    assert {p.peer_id for p in again} != {p.peer_id for p in seed_view}
    assert (await s.scrape([IH, OTHER])) == {IH: SwarmCounts(3, 97, 0), OTHER: SwarmCounts(0, 0, 0)}
    assert await s.active() == 100


async def test_events_expiry_and_hosts(store: tuple[PeerStore, Clock]) -> None:
    s, clock = store
    a, b, c = peer(1, 10), peer(2, 10), peer(3, 0, host="h-seed")
    for p in (a, b, c):
        await s.handle(IH, p, "started", 0)
    await s.handle(OTHER, peer(4, 10, host="h-seed"), "started", 0)
    # stopped removes at once; completed counts; a new peer_id on the same endpoint replaces the old
    out = await s.handle(IH, a, "stopped", 50)
    assert out.peers == [] and out.counts == SwarmCounts(1, 1, 0)
    await s.handle(IH, Peer(b.ip, b.port, b.peer_id, 0, b.host), "completed", 0)
    assert (await s.scrape([IH]))[IH] == SwarmCounts(2, 0, 1)
    restarted = Peer(b.ip, b.port, b"r" * 20, 0, b.host)
    await s.handle(IH, restarted, "started", 0)
    assert (await s.scrape([IH]))[IH] == SwarmCounts(2, 0, 1)
    view = (await s.handle(IH, peer(9, 10), "", 50)).peers
    assert {p.peer_id for p in view} == {restarted.peer_id, c.peer_id}
    # peers that stop announcing expire after the ttl
    clock.now += 45
    await s.handle(IH, restarted, "", 0)
    clock.now += 20
    assert await s.sweep() == 3  # c, the leecher 9 and the other torrent's peer
    assert (await s.scrape([IH]))[IH] == SwarmCounts(1, 0, 1)
    # a host's peers go everywhere at once
    await s.handle(IH, c, "started", 0)
    await s.handle(OTHER, peer(4, 10, host="h-seed"), "started", 0)
    assert await s.drop_host("h-seed") == 2
    assert (await s.scrape([IH, OTHER])) == {IH: SwarmCounts(1, 0, 1), OTHER: SwarmCounts(0, 0, 0)}
    assert await s.active() == 1


async def test_ipv6_and_binary_ids(store: tuple[PeerStore, Clock]) -> None:
    s, _ = store
    odd = Peer("2001:db8::1", 6881, bytes([0, 124, 255]) + b"|" * 17, 5, "h6")
    await s.handle(IH, odd, "started", 0)
    [got] = (await s.handle(IH, peer(1, 10), "", 50)).peers
    assert (got.ip, got.port, got.peer_id, got.host) == (odd.ip, odd.port, odd.peer_id, "h6")


async def test_entries_belong_to_their_host_and_each_host_is_capped(store: tuple[PeerStore, Clock]) -> None:
    from swarm.tracker.peers.base import ENDPOINT_TAKEN, MAX_PEERS_PER_HOST, PEER_ID_TAKEN

    s, clock = store
    real = peer(1, 0, host="seed")
    await s.handle(IH, real, "started", 0)
    # another host with the seed's peer id (stopped, completed, moved) or at its address: refused, nothing changes
    for forged, event in ((Peer("10.0.0.8", 9000, real.peer_id, 0, "mallory"), "stopped"),
                          (Peer(real.ip, real.port, real.peer_id, 10, "mallory"), ""),
                          (Peer(real.ip, real.port, b"m" * 20, 0, "mallory"), "stopped")):
        out = await s.handle(IH, forged, event, 50)
        assert out.refused in (PEER_ID_TAKEN, ENDPOINT_TAKEN) and out.peers == []
    assert (await s.scrape([IH]))[IH] == SwarmCounts(1, 0, 0)
    # mallory announces many fake complete peers: it keeps its newest few, the seed stays in every handout
    for i in range(100, 300):
        clock.now += 0.01
        await s.handle(IH, peer(i, 0, host="mallory"), "started", 0)
    assert (await s.scrape([IH]))[IH] == SwarmCounts(1 + MAX_PEERS_PER_HOST, 0, 0)
    for _ in range(10):
        got = (await s.handle(IH, peer(2, 10, host="honest"), "", 50)).peers
        assert real.peer_id in {p.peer_id for p in got}
    # the owner itself still stops its peer
    assert (await s.handle(IH, real, "stopped", 0)).refused == ""
    assert (await s.scrape([IH]))[IH].complete == MAX_PEERS_PER_HOST
