"""Two tracker processes sharing one PostgreSQL database and one Redis peer store.

A real redis-server and a real PostgreSQL cluster are started for this module
on free loopback ports and removed after it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote_from_bytes

import aiohttp
import pytest

from swarm.core import wire
from swarm.core.api import EnrollResponse, ManifestEntry
from swarm.core.certs import load_cert, make_csr, new_private_key
from swarm.core.signing import SignedManifest, SigningKey
from swarm.core.tokens import JoinToken
from tests.support.bt import announce_query, bt
from tests.support.manifests import make_signed_manifest
from tests.support.postgres import PostgresServer
from tests.support.procs import Tracker, run_swarm
from tests.support.redis import RedisServer


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostgresServer, RedisServer]]:
    with PostgresServer.start() as pg, RedisServer.start(tmp_path_factory.mktemp("redis")) as redis:
        yield pg, redis


def token(root: Path, database: str, name: str, role: str) -> JoinToken:
    out = run_swarm("tracker", "token", "create", name, "--role", role, "--data", str(root / "cli"),
                    env={"SWARM_DATABASE": database})
    return JoinToken.parse(out.stdout.strip().splitlines()[-1])

def compact(port: int) -> bytes:
    return bytes([127, 0, 0, 1]) + port.to_bytes(2, "big")


@pytest.fixture
async def replicas(backends: tuple[PostgresServer, RedisServer], tmp_path: Path,
                   request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, list[Tracker]]]:
    pg, redis = backends
    database = pg.create_database(f"t_{abs(hash(request.node.name)) % 10**9}_{os.getpid()}")
    env_args = ("--database", database, "--redis", redis.url, "--announce-interval", "30")
    trackers: list[Tracker] = []
    try:
        trackers.append(Tracker.start(tmp_path / "r1", *env_args))
        trackers.append(Tracker.start(tmp_path / "r2", *env_args))
        yield database, trackers
    finally:
        for t in trackers:
            assert t.proc.stop() == 0
            assert "Traceback" not in t.proc.text()


async def test_replicas_share_tokens_ca_manifests_peers_and_revocations(
        replicas: tuple[str, list[Tracker]], tmp_path: Path) -> None:
    database, (r1, r2) = replicas
    builder = token(tmp_path, database, "b1", "builder")
    h1, h2 = token(tmp_path, database, "h1", "host"), token(tmp_path, database, "h2", "host")
    async with aiohttp.ClientSession() as http:
        # one CA: both replicas serve it, and it is the one the join tokens pin
        cas = []
        for r in (r1, r2):
            async with http.get(r.url + "/v1/ca") as resp:
                cas.append(await resp.text())
        assert cas[0] == cas[1]
        ca = load_cert(cas[0])
        # a token made through the shared database works on both; the certificate chains to the one CA
        for r in (r1, r2):
            async with http.post(r.url + "/v1/enroll", headers={"Authorization": f"Bearer {h2.secret}"},
                                 data=wire.pack({"csr": make_csr(new_private_key(), "x")})) as resp:
                assert resp.status == 200
                answer = EnrollResponse.from_map(wire.unpack_map(await resp.read()))
            load_cert(answer.certificate).verify_directly_issued_by(ca)
            assert answer.name == "h2"

        # a watcher on replica 2 sees a publication made on replica 1
        watch = asyncio.create_task(http.get(r2.url + "/v1/watch?since=0&timeout=30",
                                             headers={"Authorization": f"Bearer {h1.secret}"}))
        work = tmp_path / "work"
        work.mkdir()
        envelope = make_signed_manifest(work, cas[0], SigningKey.generate()).to_bytes()
        async with http.post(r1.url + "/v1/manifests", data=envelope,
                             headers={"Authorization": f"Bearer {builder.secret}"}) as resp:
            assert resp.status == 200
            entry = ManifestEntry.from_map(wire.unpack_map(await resp.read()))
        async with await asyncio.wait_for(watch, 15) as resp:
            assert resp.status == 200
            assert [ManifestEntry.from_map(m) for m in wire.unpack_map(await resp.read())["manifests"]] == [entry]
        ih = SignedManifest.from_bytes(envelope).verify(None).layers[0].announce_hash

        # hosts announcing to different replicas see each other
        d = await bt(http, r1.url, "announce", h1.secret, announce_query(ih, 7001, b"1" * 20))
        assert d[b"peers"] == b""
        d = await bt(http, r2.url, "announce", h2.secret, announce_query(ih, 7002, b"2" * 20))
        assert d[b"peers"] == compact(7001) and d[b"incomplete"] == 2
        d = await bt(http, r1.url, "announce", h1.secret, announce_query(ih, 7001, b"1" * 20, left=0,
                                                                           event="completed"))
        assert d[b"peers"] == compact(7002)
        for r in (r1, r2):
            d = await bt(http, r.url, "scrape", h1.secret, f"info_hash={quote_from_bytes(ih, safe='')}")
            assert d == {b"files": {ih: {b"complete": 1, b"downloaded": 1, b"incomplete": 1}}}

        # revoked on the shared database (the CLI, via neither replica): refused by both at once,
        # and gone from every peer list
        run_swarm("tracker", "token", "revoke", "h2", "--data", str(tmp_path / "cli"),
                  env={"SWARM_DATABASE": database})
        for r in (r1, r2):
            d = await bt(http, r.url, "announce", h2.secret, announce_query(ih, 7002, b"2" * 20))
            assert d == {b"failure reason": b"unauthorized"}
            async with http.get(r.url + "/v1/manifests", headers={"Authorization": f"Bearer {h2.secret}"}) as resp:
                assert resp.status == 401
        d = await bt(http, r1.url, "announce", h1.secret, announce_query(ih, 7001, b"1" * 20, left=0,
                                                                           event="started"))
        assert d[b"peers"] == b"" and d[b"incomplete"] == 0
        for r in (r1, r2):
            async with http.get(r.url + "/metrics") as resp:
                text = await resp.text()
            assert "swarm_tracker_enrolled_hosts 2.0" in text  # b1 and h1
            assert "swarm_tracker_manifests 1.0" in text
            assert "swarm_tracker_active_peers 1.0" in text  # the shared store's view
