"""GET /v1/peers and the agent's peer names, against the real tracker over HTTP (both peer stores).

The attack: an insider with a valid token and certificate announces honestly (the
tracker refuses a peer id naming another token) but sends the builder's peer id in
its BitTorrent handshakes. Agents must label it by what the tracker attests, never
as the builder. tests/e2e/test_e2e_attacks.py runs it with real agents and peers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from swarm.agent.peer_names import TrackerPeerNames
from swarm.agent.tracker_client import TrackerClient
from swarm.core import wire
from swarm.core.api import PeerEntry
from swarm.core.errors import NotFound, Unauthorized
from swarm.core.peerid import PeerIdentity, peer_tag
from swarm.core.signing import SigningKey
from swarm.core.tokens import JoinToken
from swarm.tracker.options import ServeOptions
from swarm.tracker.server import open_service, start_tracker
from swarm.tracker.service import TrackerService
from tests.support.bt import announce_query, bt
from tests.support.manifests import make_signed_manifest
from tests.support.redis import RedisServer
from tests.support.threadloop import loop_in_thread


def pid_of(name: str, role: str = "host") -> bytes:
    tag = peer_tag(name, role).encode()
    return tag + b"x" * (20 - len(tag))


@dataclass
class Env:
    url: str
    service: TrackerService
    http: aiohttp.ClientSession
    ih: bytes  # the announce hash of the published layer
    tokens: dict[str, JoinToken]

    async def announce(self, name: str, port: int, pid: bytes, left: int = 10, event: str = "started") -> None:
        d = await bt(self.http, self.url, "announce", self.tokens[name].secret,
                     announce_query(self.ih, port, pid, left, event))
        assert b"failure reason" not in d, d

    async def get_peers(self, secret: str | None, info_hash: str) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
        async with self.http.get(self.url + "/v1/peers", params={"info_hash": info_hash}, headers=headers) as r:
            return r.status, wire.unpack_map(await r.read())

    def client(self, name: str) -> TrackerClient:
        return TrackerClient(self.url, self.tokens[name])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with RedisServer.start(tmp_path_factory.mktemp("redis")) as redis:
        yield redis.url


@pytest.fixture(params=["memory", "redis"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    redis = request.getfixturevalue("redis_url") if request.param == "redis" else None
    if redis is not None:
        import redis.asyncio as aioredis

        flush = aioredis.Redis.from_url(redis)
        await flush.flushall()
        await flush.aclose()
    service = open_service(ServeOptions(tmp_path / "data", interval=60, redis=redis))
    runner, port = await start_tracker(service, "127.0.0.1", 0, client_timeout=2.0)
    key = SigningKey.generate()
    service.add_group("other")
    tokens = {
        "b1": service.create_token("b1", "builder", key.public_raw),
        "h1": service.create_token("h1", "host"),
        "mallory": service.create_token("mallory", "host"),
        "stranger": service.create_token("stranger", "host", groups=("other",)),
    }
    signed = make_signed_manifest(tmp_path, service.ca.cert_pem, key)
    service.publish(tokens["b1"].secret, signed.to_bytes())
    try:
        async with aiohttp.ClientSession() as http:
            yield Env(f"http://127.0.0.1:{port}", service, http, signed.verify(None).layers[0].announce_hash, tokens)
    finally:
        await runner.cleanup()
        await service.aclose()


async def test_peers_are_listed_with_the_token_that_announced_them(env: Env) -> None:
    await env.announce("b1", 6001, pid_of("b1", "builder"), left=0)
    await env.announce("h1", 7001, pid_of("h1"))
    status, body = await env.get_peers(env.tokens["h1"].secret, env.ih.hex())
    assert status == 200
    got = {PeerEntry.from_map(m) for m in body["peers"]}
    assert got == {
        PeerEntry("127.0.0.1", 6001, pid_of("b1", "builder"), "b1", "builder"),
        PeerEntry("127.0.0.1", 7001, pid_of("h1"), "h1", "host"),
    }
    async with env.client("h1") as client:  # the agent's own client reads the same
        assert set(await client.peers(env.ih)) == got
    # a stopped peer leaves the list
    await env.announce("h1", 7001, pid_of("h1"), event="stopped")
    async with env.client("b1") as client:
        assert [e.token for e in await client.peers(env.ih)] == ["b1"]


async def test_peers_answer_only_tokens_entitled_to_the_torrent(env: Env) -> None:
    await env.announce("h1", 7001, pid_of("h1"))
    # no token, a made-up one: 401; a host outside the torrent's group and an unknown torrent: 404
    assert (await env.get_peers(None, env.ih.hex()))[0] == 401
    assert (await env.get_peers("sw1." + "a" * 40, env.ih.hex()))[0] == 401
    status, body = await env.get_peers(env.tokens["stranger"].secret, env.ih.hex())
    assert (status, body["error"]) == (404, "unknown torrent")
    assert (await env.get_peers(env.tokens["h1"].secret, "ab" * 20))[0] == 404
    async with env.client("stranger") as client:
        with pytest.raises(NotFound):
            await client.peers(env.ih)
    # malformed hashes: 400, one line
    for bad in ("", "zz" * 20, env.ih.hex()[:39], env.ih.hex() + "00", env.ih.hex()[:38] + "\n", "%00" * 20):
        status, body = await env.get_peers(env.tokens["h1"].secret, bad)
        assert status == 400 and "40 hex digits" in body["error"], (bad, status, body)
    # a revoked host's entries leave the list at once; its token reads nothing any more
    env.service.revoke_token("h1")
    status, body = await env.get_peers(env.tokens["mallory"].secret, env.ih.hex())
    assert (status, body["peers"]) == (200, [])
    async with env.client("h1") as client:
        with pytest.raises(Unauthorized):
            await client.peers(env.ih)


@pytest.fixture
def names_loop() -> Iterator[asyncio.AbstractEventLoop]:
    with loop_in_thread() as loop:
        yield loop


async def test_an_insider_sending_the_builders_peer_id_is_not_named_the_builder(
        env: Env, names_loop: asyncio.AbstractEventLoop) -> None:
    """Attack: mallory announces honestly at 127.0.0.1:8001, then hands out the builder's peer id."""
    builder_pid = pid_of("b1", "builder")
    await env.announce("b1", 6001, builder_pid, left=0)
    await env.announce("mallory", 8001, pid_of("mallory"), left=0)
    client = asyncio.run_coroutine_threadsafe(_client(env), names_loop).result(10)
    names = TrackerPeerNames(client, names_loop)
    batch = time.time()  # these blocks all came in one batch of alerts, after every announce

    def identify(ip: str, port: int, pid: bytes) -> PeerIdentity:
        # the alert thread's call (it may wait for the tracker), from a thread that is not the loop's
        return names.identify(env.ih + bytes(12), ip, port, pid, seen_at=batch)

    try:
        # a connection to mallory's address: mallory, whatever peer id it sends
        assert await asyncio.to_thread(identify, "127.0.0.1", 8001, builder_pid) == PeerIdentity("host", "mallory")
        # a connection from an address the builder never announced from, with the builder's peer id
        assert await asyncio.to_thread(identify, "10.1.2.3", 40000, builder_pid) == PeerIdentity("?", "?b1")
        # the honest builder: by its address and port, and from its address with its peer id
        assert await asyncio.to_thread(identify, "127.0.0.1", 6001, builder_pid) == PeerIdentity("builder", "b1")
        assert await asyncio.to_thread(identify, "::ffff:127.0.0.1", 51000, builder_pid) == PeerIdentity(
            "builder", "b1")
        assert names.fetches == 1, "one tracker answer served the whole batch"
    finally:
        asyncio.run_coroutine_threadsafe(client.close(), names_loop).result(10)


async def _client(env: Env) -> TrackerClient:
    return env.client("h1")
