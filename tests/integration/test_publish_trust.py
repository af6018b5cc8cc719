"""Insiders with valid builder tokens, against the real tracker over real HTTP on 127.0.0.1.

Each test is an attack that must fail (with a clear reason and a 4xx) next to the honest path that
must still work: a replayed envelope, a tag takeover, a downgrade, a forged or older key document.
The operator's commands (token update, repo transfer, keys publish) run through `swarm`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from swarm.core import wire
from swarm.core.signing import SignedManifest, SigningKey
from swarm.core.tokens import JoinToken
from swarm.core.trust import DelegatedKey, KeyDocument, SignedKeyDocument
from swarm.tracker.options import ServeOptions
from swarm.tracker.server import open_service, start_tracker
from swarm.tracker.service import TrackerService
from tests.support.manifests import make_signed_manifest
from tests.support.procs import run_swarm


@dataclass
class Builder:
    name: str
    key: SigningKey
    token: JoinToken


@dataclass
class Rig:
    url: str
    service: TrackerService
    http: aiohttp.ClientSession
    work: Path
    alice: Builder  # publishes myapp/*
    mallory: Builder  # an insider: a valid builder token of its own, publishes anywhere nobody owns
    host: JoinToken

    def signed(self, builder: Builder, ref: str = "myapp/web:1", payload: bytes = b"layer one\n",
               publisher: str | None = None, key: SigningKey | None = None,
               created_ms: int | None = None) -> bytes:
        repository, tag = ref.split(":")
        return make_signed_manifest(self.work, self.service.ca.cert_pem, key or builder.key, repository, tag,
                                    [payload], publisher or builder.name, created_ms).to_bytes()

    async def post(self, token: JoinToken, envelope: bytes) -> tuple[int, str]:
        async with self.http.post(self.url + "/v1/manifests", data=envelope,
                                  headers={"Authorization": f"Bearer {token.secret}"}) as resp:
            answer = wire.unpack_map(await resp.read())
            return resp.status, str(answer.get("error", answer.get("ref", "")))

    async def get(self, path: str, token: JoinToken) -> tuple[int, bytes]:
        async with self.http.get(self.url + path, headers={"Authorization": f"Bearer {token.secret}"}) as resp:
            return resp.status, await resp.read()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with open_rig(tmp_path) as r:
        yield r


@asynccontextmanager
async def open_rig(tmp_path: Path, keep: int | None = None) -> AsyncIterator[Rig]:
    """A tracker on 127.0.0.1 with builders alice and mallory and host h1 (`keep`: retention)."""
    service = open_service(ServeOptions(tmp_path / "data", auth_failure_limit=1000, keep=keep))
    runner, port = await start_tracker(service, "127.0.0.1", 0)
    work = tmp_path / "work"
    work.mkdir()
    a_key, m_key = SigningKey.generate(), SigningKey.generate()
    alice = Builder("alice", a_key, service.create_token("alice", "builder", a_key.public_raw, ("myapp/*",)))
    mallory = Builder("mallory", m_key, service.create_token("mallory", "builder", m_key.public_raw))
    try:
        async with aiohttp.ClientSession() as http:
            yield Rig(f"http://127.0.0.1:{port}", service, http, work, alice, mallory,
                      service.create_token("h1", "host"))
    finally:
        await runner.cleanup()
        service.close()


async def test_replayed_envelope_from_another_builder_token_is_refused(rig: Rig) -> None:
    honest = rig.signed(rig.alice)
    assert await rig.post(rig.alice.token, honest) == (200, "myapp/web:1")
    # mallory saved alice's envelope from a GET and posts it with its own token
    status, saved = await rig.get("/v1/manifests/myapp/web:1", rig.host)
    assert status == 200 and saved == honest
    status, error = await rig.post(rig.mallory.token, saved)
    assert status == 403 and "bound to key" in error
    # even a token bound to the very same key cannot replay it: the manifest names its publisher
    twin = rig.service.create_token("twin", "builder", rig.alice.key.public_raw, ("myapp/*",))
    status, error = await rig.post(twin, rig.signed(rig.alice, "myapp/web:2"))
    assert status == 403 and "replayed" in error
    # mallory's token stays bound to mallory's key (no binding by first signature)
    assert rig.service.storage.token("mallory").builder_key == rig.mallory.key.public_raw  # type: ignore[union-attr]
    assert await rig.post(rig.mallory.token, rig.signed(rig.mallory, "tools/lint:1")) == (200, "tools/lint:1")


async def test_tag_takeover_is_refused_and_a_transfer_hands_the_repository_over(rig: Rig) -> None:
    assert (await rig.post(rig.alice.token, rig.signed(rig.alice, "myapp/web:1")))[0] == 200
    # mallory, with its own valid key, overwrites alice's tag
    status, error = await rig.post(rig.mallory.token, rig.signed(rig.mallory, "myapp/web:1", b"evil"))
    assert status == 403 and "belongs to builder 'alice'" in error
    status, error = await rig.post(rig.mallory.token, rig.signed(rig.mallory, "myapp/web:evil", b"evil"))
    assert status == 403 and "belongs to builder 'alice'" in error
    # alice publishes only into her patterns
    status, error = await rig.post(rig.alice.token, rig.signed(rig.alice, "base:1"))
    assert status == 403 and "only into myapp/*" in error
    status, body = await rig.get("/v1/manifests/myapp/web:1", rig.host)
    assert SignedManifest.from_bytes(body).public_key == rig.alice.key.public_raw
    # the operator hands the repository over (through the CLI on the data dir): now mallory may
    data = str(rig.service.data_dir)
    out = run_swarm("tracker", "repo", "transfer", "myapp/web", "--to", "mallory", "--data", data)
    assert "myapp/web now belongs to mallory" in out.stderr
    listed = [line.split() for line in run_swarm("tracker", "repo", "list", "--data", data).stdout.splitlines()]
    assert ["myapp/web", "mallory"] in listed
    assert (await rig.post(rig.mallory.token, rig.signed(rig.mallory, "myapp/web:2")))[0] == 200
    status, error = await rig.post(rig.alice.token, rig.signed(rig.alice, "myapp/web:3"))
    assert status == 403 and "belongs to builder 'mallory'" in error
    bad = run_swarm("tracker", "repo", "transfer", "myapp/web", "--to", "h1", "--data", data, check=False)
    assert bad.returncode == 1 and bad.stderr == "error: no builder token named 'h1'\n"


async def test_downgrade_is_refused_and_a_deliberate_rollback_is_a_new_publish(rig: Rig) -> None:
    old = rig.signed(rig.alice, "myapp/web:prod", b"version one")
    new = rig.signed(rig.alice, "myapp/web:prod", b"version two")
    assert (await rig.post(rig.alice.token, old))[0] == 200
    assert (await rig.post(rig.alice.token, new))[0] == 200
    # the owner's own older, validly signed envelope is replayed: refused, the tag keeps the new one
    status, error = await rig.post(rig.alice.token, old)
    assert status == 409 and "publish the old image anew" in error
    assert (await rig.get("/v1/manifests/myapp/web:prod", rig.host))[1] == new
    # a manifest made as old as the current one is not newer either
    held = SignedManifest.from_bytes(new).verify(None).created_ms
    status, _ = await rig.post(rig.alice.token, rig.signed(rig.alice, "myapp/web:prod", b"v3", created_ms=held))
    assert status == 409
    # the very same envelope again changes nothing and is not an error
    before = rig.service.list_manifests(rig.host.secret)
    assert (await rig.post(rig.alice.token, new))[0] == 200
    assert rig.service.list_manifests(rig.host.secret) == before
    # rolling back on purpose: the old image, signed afresh, is newer and gets a new seq
    again = rig.signed(rig.alice, "myapp/web:prod", b"version one")
    assert (await rig.post(rig.alice.token, again))[0] == 200
    [entry] = rig.service.list_manifests(rig.host.secret)
    assert entry.seq == 3 and (await rig.get("/v1/manifests/myapp/web:prod", rig.host))[1] == again


async def test_expired_manifest_is_refused(rig: Rig) -> None:
    status, error = await rig.post(rig.alice.token, rig.signed(rig.alice, created_ms=1_000))
    assert status == 200  # old but without expiry: accepted (it is the tag's first)
    key = rig.alice.key
    manifest = SignedManifest.from_bytes(rig.signed(rig.alice, "myapp/web:2")).verify(None)
    expired = key.sign(dataclasses.replace(manifest, expires_ms=manifest.created_ms - 1)).to_bytes()
    status, error = await rig.post(rig.alice.token, expired)
    assert status == 400 and "expired" in error


async def test_token_update_rebinds_the_key(rig: Rig) -> None:
    data = str(rig.service.data_dir)
    new_key = SigningKey.generate()
    run_swarm("tracker", "token", "update", "alice", "--key", new_key.public_text, "--data", data)
    shown = run_swarm("tracker", "token", "show", "alice", "--data", data).stdout
    assert new_key.public_text in shown and "myapp/*" in shown
    status, error = await rig.post(rig.alice.token, rig.signed(rig.alice))
    assert status == 403 and "bound to key" in error  # the retired key
    assert (await rig.post(rig.alice.token, rig.signed(rig.alice, key=new_key)))[0] == 200
    res = run_swarm("tracker", "token", "update", "h1", "--key", new_key.public_text, "--data", data, check=False)
    assert res.returncode == 1 and "only builder tokens" in res.stderr
    res = run_swarm("tracker", "token", "create", "h2", "--role", "host", "--key", new_key.public_text,
                    "--data", data, check=False)
    assert res.returncode == 1 and "only builder tokens" in res.stderr
    res = run_swarm("tracker", "token", "create", "b3", "--role", "builder", "--key", "ed25519:junk",
                    "--data", data, check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    res = run_swarm("tracker", "token", "create", "b3", "--role", "builder", "--key", new_key.public_text,
                    "--publish", "bad pattern", "--data", data, check=False)
    assert res.returncode == 1 and "invalid pattern" in res.stderr


async def test_key_document_is_served_only_newer_and_only_from_its_root(rig: Rig, tmp_path: Path) -> None:
    data = str(rig.service.data_dir)
    assert (await rig.get("/v1/keys", rig.host))[0] == 404
    root_key = tmp_path / "root.key"
    root_pub = run_swarm("keygen", str(root_key)).stdout.strip()
    spec = tmp_path / "keys.json"

    def sign(version: int, key: str = str(root_key)) -> Path:
        spec.write_text(json.dumps({"version": version, "keys": [
            {"key": rig.alice.key.public_text, "repositories": ["myapp/*"], "expires": "2099-01-01"}]}))
        out = tmp_path / f"keys-{version}.msgpack"
        signed = run_swarm("keys", "sign", str(spec), "--root-key", key, "--out", str(out)).stdout
        assert f"version {version}" in signed and "myapp/*" in signed
        return out

    v2 = sign(2)
    assert "published" in run_swarm("tracker", "keys", "publish", str(v2), "--data", data).stderr
    status, body = await rig.get("/v1/keys", rig.host)
    assert status == 200 and body == v2.read_bytes()
    document = SignedKeyDocument.from_bytes(body).verify(SigningKey.load(root_key).public_raw)
    assert document.version == 2 and document.keys[0].public_key == rig.alice.key.public_raw
    assert root_pub in run_swarm("keys", "show", str(v2)).stdout
    # an older or equal version is refused, and the served document stays
    for older in (sign(1), sign(2)):
        res = run_swarm("tracker", "keys", "publish", str(older), "--data", data, check=False)
        assert res.returncode == 1 and "higher version" in res.stderr
    # a document signed by another root is refused by the tracker (and by hosts, which pin the root)
    other_root = tmp_path / "other.key"
    run_swarm("keygen", str(other_root))
    res = run_swarm("tracker", "keys", "publish", str(sign(5, str(other_root))), "--data", data, check=False)
    assert res.returncode == 1 and "another root" in res.stderr
    # a forged one (the tracker's operator edits the bytes) does not verify
    forged = SignedKeyDocument.from_bytes(v2.read_bytes())
    doc = KeyDocument(9, (DelegatedKey(rig.mallory.key.public_raw, ("*",), 4_000_000_000),))
    tampered = tmp_path / "tampered.msgpack"
    tampered.write_bytes(SignedKeyDocument(doc.to_bytes(), forged.signature, forged.root).to_bytes())
    res = run_swarm("tracker", "keys", "publish", str(tampered), "--data", data, check=False)
    assert res.returncode == 1 and "does not verify" in res.stderr
    assert (await rig.get("/v1/keys", rig.host))[1] == v2.read_bytes()
    # unauthenticated: 401
    async with rig.http.get(rig.url + "/v1/keys") as resp:
        assert resp.status == 401
