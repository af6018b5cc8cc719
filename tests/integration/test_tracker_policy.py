"""Handout policy over HTTP: min interval, rate limits on auth failures, slow clients, metrics."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import libtorrent as lt
import pytest
from yarl import URL

from swarm.core import wire
from swarm.core.certs import make_csr, new_private_key
from swarm.core.signing import SigningKey
from swarm.core.tokens import JoinToken
from swarm.tracker.announce import SEED_INTERVAL_FACTOR
from swarm.tracker.options import ServeOptions
from swarm.tracker.server import open_service, start_tracker
from swarm.tracker.service import RATE_LIMITED, TrackerService
from tests.support.bt import Clock
from tests.support.manifests import make_signed_manifest
from tests.support.redis import RedisServer


@dataclass
class Env:
    url: str
    service: TrackerService
    http: aiohttp.ClientSession
    clock: Clock
    port: int
    ih: bytes
    h1: JoinToken
    h2: JoinToken

    async def bt(self, kind: str, secret: str, query: str) -> dict[bytes, Any]:
        async with self.http.get(URL(f"{self.url}/{kind}/{secret}?{query}", encoded=True)) as resp:
            assert resp.status == 200
            d = lt.bdecode(await resp.read())
        assert isinstance(d, dict)
        return d

    async def metric(self, name: str) -> float:
        async with self.http.get(self.url + "/metrics") as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            text = await resp.text()
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert m, name
        return float(m.group(1))


def q(ih: bytes, port: int, pid: bytes, left: int = 10, event: str = "") -> str:
    return (f"info_hash={quote_from_bytes(ih, safe='')}&peer_id={quote_from_bytes(pid, safe='')}&port={port}"
            f"&uploaded=0&downloaded=0&left={left}&event={event}&compact=1&numwant=200")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    clock = Clock()
    service = open_service(ServeOptions(tmp_path / "data", interval=60, min_interval=20, auth_failure_limit=5,
                                        auth_failure_window=60), clock=clock)
    runner, port = await start_tracker(service, "127.0.0.1", 0, client_timeout=1.0)
    key = SigningKey.generate()
    builder = service.create_token("b1", "builder", key.public_raw)
    signed = make_signed_manifest(tmp_path, service.ca.cert_pem, key)
    service.publish(builder.secret, signed.to_bytes())
    try:
        async with aiohttp.ClientSession() as http:
            yield Env(f"http://127.0.0.1:{port}", service, http, clock, port, signed.verify(None).layers[0]
                      .announce_hash, service.create_token("h1", "host"), service.create_token("h2", "host"))
    finally:
        await runner.cleanup()
        service.close()


async def test_interval_and_min_interval_are_configurable_and_honoured(env: Env) -> None:
    d = await env.bt("announce", env.h1.secret, q(env.ih, 7001, b"1" * 20, event="started"))
    assert (d[b"interval"], d[b"min interval"], d[b"peers"]) == (60, 20, b"")
    await env.bt("announce", env.h2.secret, q(env.ih, 7002, b"2" * 20, event="started"))
    # h1 again within min interval: the cached answer (no h2), and the peer store was not touched
    env.clock.now += 19
    d = await env.bt("announce", env.h1.secret, q(env.ih, 7001, b"1" * 20, left=0))
    assert d[b"peers"] == b"" and d[b"incomplete"] == 1
    assert await env.metric('swarm_tracker_announces_total{result="cached"}') == 1
    assert env.service.peers.counts(env.ih).complete == 0  # type: ignore[attr-defined]
    # past min interval: fresh work
    env.clock.now += 1
    d = await env.bt("announce", env.h1.secret, q(env.ih, 7001, b"1" * 20, left=0))
    assert d[b"peers"] == bytes([127, 0, 0, 1]) + (7002).to_bytes(2, "big")
    assert (d[b"complete"], d[b"incomplete"]) == (1, 1)
    # an event is never answered from the cache
    d = await env.bt("announce", env.h1.secret, q(env.ih, 7001, b"1" * 20, left=0, event="stopped"))
    assert (d[b"complete"], d[b"incomplete"]) == (0, 1)
    assert await env.metric('swarm_tracker_announces_total{result="ok"}') == 3
    assert await env.metric('swarm_tracker_announces_total{result="stopped"}') == 1


async def test_peers_expire_when_they_stop_announcing(env: Env) -> None:
    await env.bt("announce", env.h2.secret, q(env.ih, 7002, b"2" * 20, event="started"))
    assert await env.metric("swarm_tracker_active_peers") == 1
    env.service.peers.expire(now=env.service.peers._clock() + 121)  # type: ignore[attr-defined]
    d = await env.bt("announce", env.h1.secret, q(env.ih, 7001, b"1" * 20, event="started"))
    assert d[b"peers"] == b"" and d[b"incomplete"] == 1
    assert await env.metric("swarm_tracker_active_peers") == 1


async def test_repeated_auth_failures_are_rate_limited_per_address(env: Env) -> None:
    async def manifests(secret: str) -> int:
        async with env.http.get(env.url + "/v1/manifests", headers={"Authorization": f"Bearer {secret}"}) as r:
            return r.status
    guesses = [f"{i:040x}" for i in range(5)]
    for g in guesses:
        assert await manifests(g) == 401
    # the limit is reached: further guesses from this address wait, and announce says why
    assert await manifests(f"{99:040x}") == 429
    d = await env.bt("announce", f"{98:040x}", q(env.ih, 7001, b"1" * 20, event="started"))
    assert d == {b"failure reason": RATE_LIMITED.encode()}
    async with env.http.post(env.url + "/v1/enroll", headers={"Authorization": f"Bearer {97:040x}"},
                             data=wire.pack({"csr": make_csr(new_private_key(), "x")})) as resp:
        assert resp.status == 429 and "retry later" in wire.unpack_map(await resp.read())["error"]
    assert await env.metric('swarm_tracker_auth_failures_total{reason="unknown"}') == 5
    assert await env.metric('swarm_tracker_auth_failures_total{reason="rate_limited"}') == 3
    # other addresses are not affected
    assert not env.service.limiter.blocked("127.0.0.2")
    # a minute later the address may guess again
    env.clock.now += 61
    assert await manifests(f"{99:040x}") == 401
    # a revoked token retrying is refused, but not counted as a guess
    env.service.revoke_token("h2")
    for _ in range(10):
        assert await manifests(env.h2.secret) == 401
    assert await manifests(env.h1.secret) == 200


async def test_a_stranger_behind_the_fleets_address_locks_nobody_out(env: Env) -> None:
    """Attack: 20 bad-token requests from the address valid hosts share (a NAT, a proxy)."""
    for i in range(20):
        async with env.http.get(env.url + "/v1/manifests", headers={"Authorization": f"Bearer {i:040x}"}) as r:
            assert r.status in (401, 429)
    assert env.service.limiter.blocked("127.0.0.1")
    # valid tokens on that address: every endpoint answers them as usual
    async with env.http.get(env.url + "/v1/manifests", headers={"Authorization": f"Bearer {env.h1.secret}"}) as r:
        assert r.status == 200
    d = await env.bt("announce", env.h1.secret, q(env.ih, 7001, b"1" * 20, event="started"))
    assert b"failure reason" not in d and b"peers" in d
    async with env.http.post(env.url + "/v1/enroll", headers={"Authorization": f"Bearer {env.h2.secret}"},
                             data=wire.pack({"csr": make_csr(new_private_key(), "h2")})) as resp:
        assert resp.status == 200
    # the stranger still waits
    async with env.http.get(env.url + "/v1/manifests", headers={"Authorization": f"Bearer {21:040x}"}) as r:
        assert r.status == 429


async def test_slow_clients_are_cut_off(env: Env) -> None:
    loop = asyncio.get_running_loop()
    # headers that never end
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    started = loop.time()
    async with asyncio.timeout(10):
        assert await reader.read() == b""  # closed by the tracker
    assert loop.time() - started < 5
    writer.close()
    # a body that never comes
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    writer.write(f"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {env.h1.secret}\r\n"
                 f"Content-Length: 1000\r\n\r\nabc".encode())
    await writer.drain()
    started = loop.time()
    async with asyncio.timeout(10):
        answer = await reader.read()
    assert answer.startswith(b"HTTP/1.1 408") and loop.time() - started < 5
    writer.close()
    # the tracker still serves
    async with env.http.get(env.url + "/v1/health") as resp:
        assert resp.status == 200


async def test_metrics(env: Env) -> None:
    assert await env.metric("swarm_tracker_enrolled_hosts") == 3
    assert await env.metric("swarm_tracker_manifests") == 1
    assert await env.metric("swarm_tracker_publications_total") == 1
    async with env.http.post(env.url + "/v1/enroll", headers={"Authorization": f"Bearer {env.h1.secret}"},
                             data=wire.pack({"csr": make_csr(new_private_key(), "x")})) as resp:
        assert resp.status == 200
    assert await env.metric("swarm_tracker_certificates_issued_total") == 1
    await env.bt("announce", "0" * 40, q(env.ih, 7001, b"1" * 20))
    await env.bt("announce", env.h1.secret, q(bytes(20), 7001, b"1" * 20))
    await env.bt("announce", env.h1.secret, "info_hash=x")
    await env.bt("scrape", env.h1.secret, f"info_hash={quote_from_bytes(env.ih, safe='')}")
    assert await env.metric('swarm_tracker_announces_total{result="unauthorized"}') == 1
    assert await env.metric('swarm_tracker_announces_total{result="unknown_torrent"}') == 1
    assert await env.metric('swarm_tracker_announces_total{result="invalid"}') == 1
    assert await env.metric('swarm_tracker_scrapes_total{result="ok"}') == 1
    env.service.revoke_token("h2")
    assert await env.metric("swarm_tracker_enrolled_hosts") == 2
    assert await env.metric("swarm_tracker_revoked_tokens") == 1


async def test_seeds_announce_rarely_where_the_peer_store_outlives_the_tracker(tmp_path: Path) -> None:
    """With Redis, a seed (left=0) is told a 40x longer interval than a downloader, and its entry is kept
    as long (the in-memory store: next test)."""
    with RedisServer.start(tmp_path / "redis") as redis:
        service = open_service(ServeOptions(tmp_path / "data", interval=30, redis=redis.url))
        runner, port = await start_tracker(service, "127.0.0.1", 0, client_timeout=1.0)
        try:
            key = SigningKey.generate()
            builder = service.create_token("b1", "builder", key.public_raw)
            signed = make_signed_manifest(tmp_path, service.ca.cert_pem, key)
            service.publish(builder.secret, signed.to_bytes())
            ih = signed.verify(None).layers[0].announce_hash
            seed, host = service.create_token("s1", "host"), service.create_token("h1", "host")
            async with aiohttp.ClientSession() as http:
                e = Env(f"http://127.0.0.1:{port}", service, http, Clock(), port, ih, seed, host)
                d = await e.bt("announce", seed.secret, q(ih, 7001, b"s" * 20, left=0, event="started"))
                assert d[b"interval"] == 30 * SEED_INTERVAL_FACTOR
                d = await e.bt("announce", host.secret, q(ih, 7002, b"h" * 20, event="started"))
                assert d[b"interval"] == 30 and d[b"complete"] == 1
                assert d[b"peers"] == bytes([127, 0, 0, 1]) + (7001).to_bytes(2, "big")
            assert service.peers.ttl == 2 * 30 * SEED_INTERVAL_FACTOR  # type: ignore[attr-defined]
        finally:
            await runner.cleanup()
            await service.aclose()


async def test_seeds_keep_the_interval_with_the_in_memory_store(env: Env) -> None:
    d = await env.bt("announce", env.h1.secret, q(env.ih, 7001, b"1" * 20, left=0, event="started"))
    assert d[b"interval"] == 60 and d[b"complete"] == 1


def _ports(d: dict[bytes, Any]) -> list[int]:
    peers = d[b"peers"]
    return [int.from_bytes(peers[i + 4 : i + 6], "big") for i in range(0, len(peers), 6)]


async def test_a_host_cannot_stop_or_move_another_hosts_peer(env: Env) -> None:
    """Attack: h2 announces `stopped`, then `left=0`, with h1's peer id (and from h1's address)."""
    p1 = b"-SW0100-hh1-" + b"a" * 8
    assert b"failure reason" not in await env.bt("announce", env.h1.secret, q(env.ih, 7001, p1, event="started"))
    for query in (q(env.ih, 7002, p1, event="stopped"), q(env.ih, 7002, p1, left=0),
                  q(env.ih, 7001, b"2" * 20, event="stopped"), q(env.ih, 7001, b"2" * 20, left=0)):
        d = await env.bt("announce", env.h2.secret, query)
        assert b"failure reason" in d and b"another host" in d[b"failure reason"]
    assert await env.metric('swarm_tracker_announces_total{result="refused"}') == 4
    # h1's entry is untouched: still there, still a leecher, handed out to others
    d = await env.bt("announce", env.h2.secret, q(env.ih, 7003, b"3" * 20, event="started"))
    assert _ports(d) == [7001] and (d[b"complete"], d[b"incomplete"]) == (0, 2)
    # h1 itself stops its peer as before
    d = await env.bt("announce", env.h1.secret, q(env.ih, 7001, p1, event="stopped"))
    assert d[b"incomplete"] == 1


async def test_a_peer_id_naming_another_host_is_refused(env: Env) -> None:
    """Attack: h2 claims h1's or a builder's peer id prefix (the role and name swarm peer ids carry)."""
    from swarm.core.peerid import peer_tag
    from swarm.tracker.service import PEER_ID_IMPERSONATION

    for tag in (peer_tag("h1"), peer_tag("b1", "builder")):
        pid = tag.encode() + b"x" * (20 - len(tag))
        d = await env.bt("announce", env.h2.secret, q(env.ih, 7002, pid, event="started"))
        assert d == {b"failure reason": PEER_ID_IMPERSONATION.encode()}
    own = peer_tag("h2").encode()
    d = await env.bt("announce", env.h2.secret, q(env.ih, 7002, own + b"x" * (20 - len(own)), event="started"))
    assert b"failure reason" not in d


async def test_thousands_of_fake_peers_cannot_eclipse_the_real_seed(env: Env) -> None:
    """Attack: h2 announces 2,000 fake complete peers; the builder's seed must stay in every handout."""
    b1 = env.service.create_token("seeder", "host")
    await env.bt("announce", b1.secret, q(env.ih, 6000, b"S" * 20, left=0, event="started"))
    for i in range(2000):
        await env.bt("announce", env.h2.secret, q(env.ih, 10000 + i, f"{i:020d}".encode(), left=0, event="started"))
    for i in range(20):
        env.clock.now += 21  # past the minimum interval: a fresh answer each time
        d = await env.bt("announce", env.h1.secret, q(env.ih, 7001, b"1" * 20))
        assert 6000 in _ports(d), i
        assert d[b"complete"] <= 1 + 4  # the seed and h2's most recent 4 (the per-host cap)


async def test_hostile_request_shapes_get_4xx(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    secret = env.h1.secret
    # an over-long request line carrying a secret: refused, and no log line shows the secret
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    writer.write(f"GET /announce/{secret}?{'a' * 20000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    assert re.match(rb"HTTP/1\.[01] 4\d\d", answer), answer[:80]
    # a sequence number past 64 bits, a negative one, a tag with a trailing newline
    headers = {"Authorization": f"Bearer {secret}"}
    for since in (str(2**63), str(2**64 + 5), "-1", "1\n"):
        async with env.http.get(env.url + "/v1/watch", params={"since": since, "timeout": "0"}, headers=headers) as r:
            assert r.status == 400, since
    async with env.http.get(env.url + "/v1/manifests/myapp:1%0A", headers=headers) as r:
        assert 400 <= r.status < 500
    async with env.http.get(env.url + "/v1/health") as r:
        assert r.status == 200
    assert secret not in caplog.text


async def test_a_flood_of_half_open_connections_leaves_the_tracker_answering(tmp_path: Path) -> None:
    """Attack: 1,100 connections that never finish their headers, against a tracker with 1,024 descriptors."""
    import resource

    from tests.support.procs import Tracker

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip("this test needs 1,300 descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tracker = Tracker.start(tmp_path, "--client-timeout", "30", prefix=["prlimit", "--nofile=1024:1024", "--"])
    port = int(tracker.url.rsplit(":", 1)[1])
    writers: list[asyncio.StreamWriter] = []
    try:
        for i in range(1100):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{2 + i % 4}", 0))
            writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
            writers.append(writer)
        async with aiohttp.ClientSession() as http, asyncio.timeout(10), http.get(tracker.url + "/v1/health") as resp:
            assert resp.status == 200  # from 127.0.0.1, while the flood holds
        tracker.proc.wait_line(r"connection limit reached")
    finally:
        for writer in writers:
            writer.close()
        tracker.proc.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
