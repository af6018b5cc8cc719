"""Tags with a life cycle, against the real tracker over real HTTP on 127.0.0.1: removal (who may,
and that a removed tag cannot be replayed back), retention, and retired torrents on announce.
The operator's commands run through `swarm`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from swarm.core import wire
from swarm.core.signing import SignedManifest
from swarm.core.tokens import JoinToken
from tests.integration.test_publish_trust import Rig, open_rig
from tests.support.bt import announce_query, bt
from tests.support.procs import run_swarm


async def delete(r: Rig, ref: str, token: JoinToken) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token.secret}"}
    async with r.http.delete(r.url + f"/v1/manifests/{ref}", headers=headers) as resp:
        answer = wire.unpack_map(await resp.read())
        return resp.status, str(answer.get("error", answer.get("ref", "")))


def hashes(envelope: bytes) -> list[bytes]:
    return [layer.announce_hash for layer in SignedManifest.from_bytes(envelope).verify(None).layers]


async def announce(r: Rig, info_hash: bytes) -> bytes:
    d = await bt(r.http, r.url, "announce", r.host.secret, announce_query(info_hash, 7001, b"A" * 20))
    return bytes(d.get(b"failure reason", b""))


async def test_only_the_owner_builder_and_admins_remove_a_tag(rig: Rig) -> None:
    admin = rig.service.create_token("ops", "admin")
    for tag in ("1", "2", "3"):
        assert (await rig.post(rig.alice.token, rig.signed(rig.alice, f"myapp/web:{tag}", tag.encode())))[0] == 200
    assert await delete(rig, "myapp/web:1", rig.host) == (403, "token 'h1' has role host: only the owner "
                                                               "builder and admins remove tags")
    status, error = await delete(rig, "myapp/web:1", rig.mallory.token)
    assert status == 403 and "belongs to builder 'alice'" in error
    assert await delete(rig, "myapp/web:1", rig.alice.token) == (200, "myapp/web:1")
    assert await delete(rig, "myapp/web:2", admin) == (200, "myapp/web:2")
    assert (await delete(rig, "myapp/web:2", admin))[0] == 404
    assert (await delete(rig, "no such ref!", admin))[0] == 400
    assert (await rig.get("/v1/manifests/myapp/web:1", rig.host))[0] == 404
    assert [e.ref for e in rig.service.list_manifests(rig.host.secret)] == ["myapp/web:3"]
    # the operator, on the data dir
    out = run_swarm("tracker", "image", "rm", "myapp/web:3", "--data", str(rig.service.data_dir))
    assert out.stderr.startswith("removed myapp/web:3 (seq 3)")
    gone = run_swarm("tracker", "image", "rm", "myapp/web:3", "--data", str(rig.service.data_dir), check=False)
    assert gone.returncode == 1 and gone.stderr == "error: no manifest for myapp/web:3\n"


async def test_image_rm_over_the_api_with_a_builder_token(rig: Rig, tmp_path: Path) -> None:
    assert (await rig.post(rig.alice.token, rig.signed(rig.alice, "myapp/web:1")))[0] == 200
    (tmp_path / "alice.token").write_text(str(rig.alice.token))
    (tmp_path / "mallory.token").write_text(str(rig.mallory.token))
    # the tracker runs in this test's event loop: the CLI runs in a thread meanwhile
    refused = await asyncio.to_thread(run_swarm, "tracker", "image", "rm", "myapp/web:1", "--tracker", rig.url,
                                      "--token-file", str(tmp_path / "mallory.token"), check=False)
    assert refused.returncode == 1 and "belongs to builder 'alice'" in refused.stderr
    out = await asyncio.to_thread(run_swarm, "tracker", "image", "rm", "myapp/web:1", "--tracker", rig.url,
                                  "--token-file", str(tmp_path / "alice.token"))
    assert "removed myapp/web:1" in out.stderr


async def test_a_removed_tag_cannot_be_replayed_back(rig: Rig) -> None:
    old = rig.signed(rig.alice, "myapp/web:prod", b"version one")
    assert (await rig.post(rig.alice.token, old))[0] == 200
    assert (await delete(rig, "myapp/web:prod", rig.alice.token))[0] == 200
    status, error = await rig.post(rig.alice.token, old)
    assert status == 409 and "was removed" in error
    assert (await rig.get("/v1/manifests/myapp/web:prod", rig.host))[0] == 404
    # a newer manifest brings the tag back, with a seq past the removed one's
    newer = rig.signed(rig.alice, "myapp/web:prod", b"version two")
    assert (await rig.post(rig.alice.token, newer))[0] == 200
    assert [e.seq for e in rig.service.list_manifests(rig.host.secret)] == [2]


async def test_torrents_only_removed_manifests_named_are_retired(rig: Rig) -> None:
    shared, own = b"shared layer\n", b"own layer\n"
    first = rig.signed(rig.alice, "myapp/web:1", shared)
    second = rig.signed(rig.alice, "myapp/web:2", shared)
    third = rig.signed(rig.alice, "myapp/web:3", own)
    for envelope in (first, second, third):
        assert (await rig.post(rig.alice.token, envelope))[0] == 200
    [shared_hash], [own_hash] = hashes(first), hashes(third)
    assert hashes(second) == [shared_hash]
    assert (await delete(rig, "myapp/web:1", rig.alice.token))[0] == 200
    assert (await delete(rig, "myapp/web:3", rig.alice.token))[0] == 200
    assert await announce(rig, shared_hash) == b""  # still named by myapp/web:2
    assert await announce(rig, own_hash) == b"retired torrent"
    assert await announce(rig, bytes(20)) == b"unknown torrent"
    async with rig.http.get(rig.url + "/metrics") as resp:
        assert 'swarm_tracker_announces_total{result="retired_torrent"} 1.0' in await resp.text()
    # published again: live again
    assert (await rig.post(rig.alice.token, rig.signed(rig.alice, "myapp/web:4", own)))[0] == 200
    assert await announce(rig, own_hash) == b""


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with open_rig(tmp_path) as r:
        yield r


@pytest.fixture
async def keep2(tmp_path: Path) -> AsyncIterator[Rig]:
    async with open_rig(tmp_path, keep=2) as r:
        yield r


async def test_serve_keep_retains_the_newest_tags_of_each_repository(keep2: Rig) -> None:
    r = keep2
    for ref in ("myapp/web:1", "myapp/web:2", "myapp/db:1", "myapp/web:3", "myapp/web:4"):
        assert (await r.post(r.alice.token, r.signed(r.alice, ref, ref.encode())))[0] == 200
    assert [e.ref for e in r.service.list_manifests(r.host.secret)] == ["myapp/db:1", "myapp/web:3", "myapp/web:4"]
    # a pruned tag is removed like any other: no replay
    status, _ = await r.post(r.alice.token, r.signed(r.alice, "myapp/web:1", b"myapp/web:1", created_ms=1))
    assert status == 409


async def test_image_prune_on_the_data_dir(rig: Rig) -> None:
    for ref in ("myapp/web:1", "myapp/web:2", "myapp/web:3", "myapp/db:1"):
        assert (await rig.post(rig.alice.token, rig.signed(rig.alice, ref, ref.encode())))[0] == 200
    data = str(rig.service.data_dir)
    young = run_swarm("tracker", "image", "prune", "--keep", "1", "--older-than", "1h", "--data", data)
    assert young.stderr.endswith("pruned 0 tags\n")
    out = run_swarm("tracker", "image", "prune", "--keep", "1", "--data", data)
    assert "removed myapp/web:1 (seq 1)" in out.stderr and out.stderr.endswith("pruned 2 tags\n")
    assert [e.ref for e in rig.service.list_manifests(rig.host.secret)] == ["myapp/web:3", "myapp/db:1"]
    bad = run_swarm("tracker", "image", "prune", "--keep", "1", "--older-than", "soon", "--data", data, check=False)
    assert bad.returncode == 2 and "invalid duration 'soon'" in bad.stderr


def test_removal_tombstones_and_retirement_in_postgresql() -> None:
    from swarm.core.errors import Conflict
    from swarm.tracker.storage.postgres import PostgresStorage
    from tests.support.postgres import PostgresServer

    shared, own = b"s" * 20, b"o" * 20
    with PostgresServer.start() as pg:
        storage = PostgresStorage(pg.create_database("tag_lifecycle"))
        try:
            storage.publish("app:1", b"env1", "sha256:1", "alice", 10, [(shared, "sha256:s"), (own, "sha256:o")])
            storage.publish("app:2", b"env2", "sha256:2", "alice", 20, [(shared, "sha256:s")])
            removed = storage.remove_manifest("app:1")
            assert removed is not None and removed[0].seq == 1 and removed[1] == [own]
            assert storage.is_retired_hash(own) and not storage.is_retired_hash(shared)
            with pytest.raises(Conflict):
                storage.publish("app:1", b"env1", "sha256:1", "alice", 10, [(own, "sha256:o")])
            storage.publish("app:3", b"env3", "sha256:3", "alice", 30, [(own, "sha256:o")])
            assert not storage.is_retired_hash(own)
            assert [e.ref for e in storage.prune(1)] == ["app:2"]
            assert [e.ref for e in storage.manifests()] == ["app:3"] and storage.current_seq() == 3
            assert storage.generation().removals == 2
        finally:
            storage.close()
