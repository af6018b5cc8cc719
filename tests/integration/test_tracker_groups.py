"""Host groups at the tracker, over HTTP: a host reads, announces and is handed out only for images
of its groups; membership changes (made by the CLI, another process) count at once; an upgrade
from the previous schema keeps every token working in `default`."""

from __future__ import annotations

import sqlite3
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
from swarm.core.errors import Forbidden
from swarm.core.signing import SigningKey
from swarm.core.tokens import JoinToken, hash_secret
from swarm.tracker.options import ServeOptions
from swarm.tracker.server import open_service, start_tracker
from swarm.tracker.service import TrackerService
from swarm.tracker.storage import migrations
from tests.support.manifests import make_signed_manifest
from tests.support.procs import run_swarm


@dataclass
class Fleet:
    url: str
    data: Path
    service: TrackerService
    http: aiohttp.ClientSession
    web_ih: bytes
    pci_ih: bytes
    web: JoinToken  # host in web only
    both: JoinToken  # host in web and pci
    builder: JoinToken

    async def get(self, token: JoinToken, path: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token.secret}"}
        async with self.http.get(self.url + path, headers=headers) as resp:
            body = await resp.read()
            return resp.status, wire.unpack(body) if resp.content_type == "application/msgpack" else body

    async def bt(self, kind: str, token: JoinToken, query: str) -> dict[bytes, Any]:
        async with self.http.get(URL(f"{self.url}/{kind}/{token.secret}?{query}", encoded=True)) as resp:
            assert resp.status == 200
            d = lt.bdecode(await resp.read())
        assert isinstance(d, dict)
        return d

    async def announce(self, token: JoinToken, ih: bytes, port: int, left: int = 0) -> dict[bytes, Any]:
        # a foreign client's peer id: it claims no swarm identity (swarm-shaped ids must name their token)
        pid = f"-XX0100-{port}-".encode().ljust(20, b"x")
        query = (
            f"info_hash={quote_from_bytes(ih, safe='')}&peer_id={quote_from_bytes(pid, safe='')}&port={port}"
            f"&uploaded=0&downloaded=0&left={left}&event=started&compact=1&numwant=50"
        )
        return await self.bt("announce", token, query)


def ports(answer: dict[bytes, Any]) -> set[int]:
    raw = answer.get(b"peers", b"")
    return {int.from_bytes(raw[i + 4 : i + 6], "big") for i in range(0, len(raw), 6)}


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    data = tmp_path / "data"
    service = open_service(ServeOptions(data, interval=60, min_interval=0))
    runner, port = await start_tracker(service, "127.0.0.1", 0)
    service.add_group("web")
    service.add_group("pci")
    service.map_pattern("payments/*", "pci")
    service.map_pattern("shop/*", "web")
    key = SigningKey.generate()
    builder = service.create_token("b1", "builder", key.public_raw)
    web_m = make_signed_manifest(tmp_path, service.ca.cert_pem, key, "shop/front", "v1", [b"web layer\n"],
                                 group="web")
    pci_m = make_signed_manifest(tmp_path, service.ca.cert_pem, key, "payments/api", "v1", [b"pci layer\n"],
                                 group="pci")
    assert service.publish(builder.secret, web_m.to_bytes()).group == "web"
    assert service.publish(builder.secret, pci_m.to_bytes()).group == "pci"
    try:
        async with aiohttp.ClientSession() as http:
            yield Fleet(
                f"http://127.0.0.1:{port}",
                data,
                service,
                http,
                web_m.verify(None).layers[0].announce_hash,
                pci_m.verify(None).layers[0].announce_hash,
                service.create_token("web-01", "host", groups=("web",)),
                service.create_token("both-01", "host", groups=("web", "pci")),
                builder,
            )
    finally:
        await runner.cleanup()
        service.close()


async def test_web_host_does_not_see_pci(fleet: Fleet) -> None:
    status, _ = await fleet.get(fleet.web, "/v1/manifests/payments/api:v1")
    assert status == 404  # the same answer as for an image that does not exist
    status, body = await fleet.get(fleet.web, "/v1/manifests")
    assert status == 200 and [m["ref"] for m in body["manifests"]] == ["shop/front:v1"]
    assert body["manifests"][0]["group"] == "web"
    status, body = await fleet.get(fleet.web, "/v1/watch?since=0&timeout=0")
    assert status == 200 and [m["ref"] for m in body["manifests"]] == ["shop/front:v1"]

    status, envelope = await fleet.get(fleet.web, "/v1/manifests/shop/front:v1")
    assert status == 200 and envelope
    for token in (fleet.both, fleet.builder):
        status, body = await fleet.get(token, "/v1/manifests")
        assert sorted(m["ref"] for m in body["manifests"]) == ["payments/api:v1", "shop/front:v1"]
        assert (await fleet.get(token, "/v1/manifests/payments/api:v1"))[0] == 200


async def test_announce_scrape_and_handouts_follow_groups(fleet: Fleet) -> None:
    refused = await fleet.announce(fleet.web, fleet.pci_ih, 7001)
    assert refused.get(b"failure reason") == b"unknown torrent"
    scrape = await fleet.bt("scrape", fleet.web, f"info_hash={quote_from_bytes(fleet.pci_ih, safe='')}")
    assert scrape.get(b"failure reason") == b"unknown torrent"
    ok = await fleet.bt("scrape", fleet.both, f"info_hash={quote_from_bytes(fleet.pci_ih, safe='')}")
    assert b"files" in ok

    # a web torrent: both hosts swarm; the web-only host is handed the other and the builder
    await fleet.announce(fleet.builder, fleet.web_ih, 7000)
    await fleet.announce(fleet.both, fleet.web_ih, 7002, left=10)
    assert ports(await fleet.announce(fleet.web, fleet.web_ih, 7001, left=10)) == {7000, 7002}
    # the pci torrent: the pci host sees the builder only
    await fleet.announce(fleet.builder, fleet.pci_ih, 7000)
    assert ports(await fleet.announce(fleet.both, fleet.pci_ih, 7002, left=10)) == {7000}


async def test_leaving_a_group_is_refused_at_once(fleet: Fleet) -> None:
    await fleet.announce(fleet.builder, fleet.pci_ih, 7000)
    assert ports(await fleet.announce(fleet.both, fleet.pci_ih, 7002, left=10)) == {7000}
    assert ports(await fleet.announce(fleet.builder, fleet.pci_ih, 7000)) == {7002}

    # another process changes the membership; the running tracker follows on the next request
    out = run_swarm("tracker", "token", "groups", "both-01", "--remove", "pci", "--data", str(fleet.data))
    assert out.stdout.split() == ["web"]

    refused = await fleet.announce(fleet.both, fleet.pci_ih, 7002, left=10)
    assert refused.get(b"failure reason") == b"unknown torrent"
    assert (await fleet.get(fleet.both, "/v1/manifests/payments/api:v1"))[0] == 404
    # its peer entry is still in the store until it expires, but it is no longer handed out
    assert ports(await fleet.announce(fleet.builder, fleet.pci_ih, 7000)) == set()

    run_swarm("tracker", "token", "groups", "both-01", "--add", "pci", "--data", str(fleet.data))
    assert (await fleet.get(fleet.both, "/v1/manifests/payments/api:v1"))[0] == 200


async def test_builders_resolve_groups_hosts_do_not(fleet: Fleet) -> None:
    status, body = await fleet.get(fleet.builder, "/v1/groups/resolve?repository=payments/api")
    assert status == 200 and body["group"] == "pci" and body["id"].startswith("g") and len(body["id"]) == 25
    status, body = await fleet.get(fleet.builder, "/v1/groups/resolve?repository=other/thing")
    assert status == 200 and body["group"] == "default"
    status, body = await fleet.get(fleet.builder, "/v1/groups/resolve?repository=BAD")
    assert status == 400 and "invalid image name" in body["error"]
    assert (await fleet.get(fleet.web, "/v1/groups/resolve?repository=payments/api"))[0] == 403


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    for args, message in (
        (("group", "add", "Bad_Name"), "invalid group name"),
        (("group", "rm", "default"), "cannot be removed"),
        (("group", "map", "payments/*", "nope"), "no group named 'nope'"),
        (("token", "create", "h1", "--role", "host", "--group", "nope"), "no group named 'nope'"),
        (("token", "groups", "ghost", "--add", "default"), "no token named 'ghost'"),
        (("group", "unmap", "x/*"), "no group mapping"),
    ):
        out = run_swarm("tracker", *args, "--data", data, check=False)
        assert out.returncode == 1 and message in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_upgrade_from_previous_schema_keeps_tokens_in_default(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / "tracker.db")
    previous = [n for n in migrations.scripts("sqlite") if n < 7]
    for n in previous:
        conn.executescript(migrations.scripts("sqlite")[n])
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (max(previous),))
    key = SigningKey.generate()
    old = {name: JoinToken.new("0" * 64) for name in ("old-host", "b1")}
    for name, role, bound in (("old-host", "host", None), ("b1", "builder", key.public_raw)):
        conn.execute(
            "INSERT INTO tokens (name, role, secret_hash, created, builder_key) VALUES (?, ?, ?, 1, ?)",
            (name, role, hash_secret(old[name].secret), bound),
        )
    conn.execute("INSERT INTO publish_patterns (name, patterns) VALUES ('b1', '*')")
    conn.commit()
    conn.close()

    service = open_service(ServeOptions(data))  # migrates to the newest schema
    try:
        assert service.storage.generation().groups == 0
        assert service.token_groups("old-host") == {"default"} == service.token_groups("b1")
        assert service.authenticate(old["old-host"].secret).name == "old-host"
        signed = make_signed_manifest(tmp_path, service.ca.cert_pem, key)
        assert service.publish(old["b1"].secret, signed.to_bytes()).group == "default"
        assert [e.ref for e in service.list_manifests(old["old-host"].secret)] == ["demo/app:latest"]
        assert service.get_manifest(old["old-host"].secret, "demo/app:latest") == signed.to_bytes()
    finally:
        service.close()
    conn = sqlite3.connect(data / "tracker.db")
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == migrations.latest("sqlite")
    conn.close()


async def test_builder_publishes_only_into_groups_its_patterns_reach(fleet: Fleet, tmp_path: Path) -> None:
    key = SigningKey.generate()
    shop = fleet.service.create_token("b-shop", "builder", key.public_raw, ("shop/*",))
    into_pci = make_signed_manifest(
        tmp_path, fleet.service.ca.cert_pem, key, "payments/other", "v1", publisher="b-shop", group="pci"
    )
    with pytest.raises(Forbidden):
        fleet.service.publish(shop.secret, into_pci.to_bytes())
    into_web = make_signed_manifest(tmp_path, fleet.service.ca.cert_pem, key, "shop/cart", "v1", publisher="b-shop",
                                    group="web")
    assert fleet.service.publish(shop.secret, into_web.to_bytes()).group == "web"
    status, body = await fleet.get(fleet.web, "/v1/manifests")
    assert status == 200 and sorted(m["ref"] for m in body["manifests"]) == ["shop/cart:v1", "shop/front:v1"]


def test_postgres_upgrade_from_previous_schema_keeps_tokens_in_default() -> None:
    import psycopg

    from swarm.tracker.storage.postgres import PostgresStorage
    from tests.support.postgres import PostgresServer

    with PostgresServer.start() as pg:
        url = pg.create_database("groups_upgrade")
        with psycopg.connect(url, autocommit=True) as conn:
            previous = [n for n in migrations.scripts("postgresql") if n < 7]
            for n in previous:
                for statement in migrations.statements(migrations.scripts("postgresql")[n]):
                    conn.execute(statement.encode())
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (max(previous),))
            conn.execute(
                "INSERT INTO tokens (name, role, secret_hash, created) VALUES ('old-host', 'host', %s, 1)",
                (hash_secret("a" * 40),),
            )
        storage = PostgresStorage(url)
        try:
            assert storage.schema_version == migrations.latest("postgresql")
            assert storage.memberships() == {"old-host": frozenset({"default"})}
            record = storage.token_by_hash(hash_secret("a" * 40))
            assert record is not None and record.name == "old-host"
            assert [g.name for g in storage.group_records()] == ["default"]
        finally:
            storage.close()
