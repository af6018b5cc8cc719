"""The real tracker app over real HTTP on 127.0.0.1 (port 0), with aiohttp's client."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
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
from swarm.core.api import MAX_BODY, MSGPACK, EnrollResponse, ManifestEntry
from swarm.core.certs import load_cert, make_csr, new_private_key
from swarm.core.signing import SignedManifest, SigningKey
from swarm.core.tokens import JoinToken
from swarm.tracker.options import ServeOptions
from swarm.tracker.peers.base import Peer
from swarm.tracker.server import open_service, start_tracker
from swarm.tracker.service import TrackerService
from tests.support.bt import announce_query
from tests.support.manifests import make_signed_manifest
from tests.support.procs import run_swarm

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Tracker:
    url: str
    service: TrackerService
    http: aiohttp.ClientSession
    builder: JoinToken
    host: JoinToken
    workdir: Path
    key: SigningKey  # the key the builder token is bound to

    def auth(self, token: JoinToken | str | None) -> dict[str, str]:
        if token is None:
            return {}
        return {"Authorization": f"Bearer {token.secret if isinstance(token, JoinToken) else token}"}

    async def call(self, method: str, path: str, token: JoinToken | str | None = None,
                   body: bytes | None = None) -> tuple[int, bytes]:
        async with self.http.request(method, self.url + path, data=body, headers=self.auth(token)) as resp:
            return resp.status, await resp.read()

    async def bt(self, kind: str, secret: str, query: str) -> dict[bytes, Any]:
        url = URL(f"{self.url}/{kind}/{secret}?{query}", encoded=True)
        async with self.http.get(url) as resp:
            assert resp.status == 200
            decoded = lt.bdecode(await resp.read())
        assert isinstance(decoded, dict)
        return decoded

    def signed(self, tag: str = "v1", key: SigningKey | None = None, payload: bytes = b"layer one\n") -> bytes:
        return make_signed_manifest(self.workdir, self.service.ca.cert_pem, key or self.key,
                                    "demo/app", tag, [payload]).to_bytes()


@pytest.fixture
async def tracker_server(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Tracker]:
    caplog.set_level(logging.INFO)
    # many deliberate auth failures from 127.0.0.1 below: the limit has its own tests
    service = open_service(ServeOptions(tmp_path / "data", cert_lifetime=600, interval=30, auth_failure_limit=1000))
    runner, port = await start_tracker(service, "127.0.0.1", 0)
    work = tmp_path / "work"
    work.mkdir()
    async with aiohttp.ClientSession() as http:
        key = SigningKey.generate()
        t = Tracker(f"http://127.0.0.1:{port}", service, http, service.create_token("b1", "builder", key.public_raw),
                    service.create_token("h1", "host"), work, key)
        yield t
    await runner.cleanup()
    service.close()
    # no unexpected error, and no secret in any log line
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert t.builder.secret not in caplog.text and t.host.secret not in caplog.text

def error_of(body: bytes) -> str:
    return str(wire.unpack_map(body)["error"])


async def test_health_and_ca(tracker_server: Tracker) -> None:
    t = tracker_server
    assert await t.call("GET", "/v1/health") == (200, wire.pack({"ok": True}))
    status, pem = await t.call("GET", "/v1/ca")
    assert status == 200 and pem.decode() == t.service.ca.cert_pem


async def test_no_or_bad_token_is_401(tracker_server: Tracker) -> None:
    t = tracker_server
    csr = wire.pack({"csr": make_csr(new_private_key(), "x")})
    revoked = t.service.create_token("gone", "host")
    t.service.revoke_token("gone")
    for token in (None, "0" * 40, "not-a-secret", str(t.host), revoked):
        for method, path, body in (("POST", "/v1/enroll", csr), ("POST", "/v1/manifests", t.signed()),
                                   ("GET", "/v1/manifests", None), ("GET", "/v1/manifests/demo/app:v1", None),
                                   ("GET", "/v1/watch?since=0&timeout=0", None)):
            status, data = await t.call(method, path, token, body)
            assert status == 401, (method, path, token)
            assert error_of(data) == "missing, unknown or revoked token"
    for secret in ("0" * 40, "junk", revoked.secret):
        d = await t.bt("announce", secret, announce_query(bytes(20), 7001, b"p" * 20))
        assert d == {b"failure reason": b"unauthorized"}
        d = await t.bt("scrape", secret, f"info_hash={quote_from_bytes(bytes(20))}")
        assert d == {b"failure reason": b"unauthorized"}


async def test_enroll(tracker_server: Tracker) -> None:
    t = tracker_server
    status, data = await t.call("POST", "/v1/enroll", t.host, wire.pack({"csr": make_csr(new_private_key(), "x")}))
    assert status == 200
    resp = EnrollResponse.from_map(wire.unpack_map(data))
    assert (resp.name, resp.role, resp.ca) == ("h1", "host", t.service.ca.cert_pem)
    load_cert(resp.certificate).verify_directly_issued_by(t.service.ca.cert)


async def test_publish_get_list_and_roles(tracker_server: Tracker) -> None:
    t = tracker_server
    envelope = t.signed("v1")
    status, data = await t.call("POST", "/v1/manifests", t.host, envelope)
    assert status == 403 and "builder" in error_of(data)
    status, data = await t.call("POST", "/v1/manifests", t.builder, envelope)
    assert status == 200
    entry = ManifestEntry.from_map(wire.unpack_map(data))
    assert (entry.ref, entry.seq, entry.publisher) == ("demo/app:v1", 1, "b1")
    async with t.http.get(t.url + "/v1/manifests/demo/app:v1", headers=t.auth(t.host)) as resp:
        assert resp.status == 200 and resp.content_type == MSGPACK
        assert await resp.read() == envelope
    status, data = await t.call("GET", "/v1/manifests", t.host)
    assert status == 200
    assert [ManifestEntry.from_map(m) for m in wire.unpack_map(data)["manifests"]] == [entry]
    status, data = await t.call("GET", "/v1/manifests/demo/app:nope", t.host)
    assert status == 404 and "demo/app:nope" in error_of(data)
    # another key on the same builder token
    status, data = await t.call("POST", "/v1/manifests", t.builder, t.signed("v2", SigningKey.generate()))
    assert status == 403 and "bound" in error_of(data)


async def test_watch_wakes_on_publish(tracker_server: Tracker) -> None:
    t = tracker_server
    status, data = await t.call("GET", "/v1/watch?since=0&timeout=0", t.host)
    assert status == 200 and wire.unpack_map(data) == {"seq": 0, "manifests": []}
    watch = asyncio.create_task(t.call("GET", "/v1/watch?since=0&timeout=30", t.host))
    async with asyncio.timeout(10):
        while t.service.watching == 0:   # the long-poll is parked in the tracker
            await asyncio.sleep(0.01)
    assert not watch.done()
    status, data = await t.call("POST", "/v1/manifests", t.builder, t.signed())
    assert status == 200
    published = ManifestEntry.from_map(wire.unpack_map(data))
    status, data = await asyncio.wait_for(watch, 10)
    assert status == 200
    answer = wire.unpack_map(data)
    assert answer["seq"] == 1
    assert [ManifestEntry.from_map(m) for m in answer["manifests"]] == [published]
    # since=1: nothing newer, a short timeout gives an empty answer
    status, data = await t.call("GET", "/v1/watch?since=1&timeout=0.05", t.host)
    assert wire.unpack_map(data) == {"seq": 1, "manifests": []}


async def test_announce_two_peers_and_scrape(tracker_server: Tracker) -> None:
    t = tracker_server
    envelope = t.signed()
    ih = SignedManifest.from_bytes(envelope).verify(None).layers[0].announce_hash
    d = await t.bt("announce", t.host.secret, announce_query(ih, 7001, b"A" * 20))
    assert d == {b"failure reason": b"unknown torrent"}
    assert (await t.call("POST", "/v1/manifests", t.builder, envelope))[0] == 200
    other_host = t.service.create_token("h2", "host")
    d = await t.bt("announce", t.host.secret, announce_query(ih, 7001, b"A" * 20))
    assert d[b"peers"] == b"" and d[b"interval"] == 30 and d[b"min interval"] == 15
    d = await t.bt("announce", other_host.secret, announce_query(ih, 7002, b"B" * 20))
    assert d[b"peers"] == bytes([127, 0, 0, 1]) + (7001).to_bytes(2, "big")
    assert (d[b"complete"], d[b"incomplete"]) == (0, 2)
    # a regular announce sooner than min interval: the previous answer again, no new work
    d = await t.bt("announce", t.host.secret, announce_query(ih, 7001, b"A" * 20, event=""))
    assert d[b"peers"] == b""
    d = await t.bt("announce", t.host.secret, announce_query(ih, 7001, b"A" * 20, event="started"))
    assert d[b"peers"] == bytes([127, 0, 0, 1]) + (7002).to_bytes(2, "big")
    d = await t.bt("announce", t.host.secret,
                   announce_query(ih, 7001, b"A" * 20, left=0, event="completed"))
    d = await t.bt("scrape", t.host.secret, f"info_hash={quote_from_bytes(ih, safe='')}")
    assert d == {b"files": {ih: {b"complete": 1, b"downloaded": 1, b"incomplete": 1}}}
    d = await t.bt("announce", other_host.secret,
                   announce_query(ih, 7002, b"B" * 20, event="stopped"))
    d = await t.bt("scrape", t.host.secret, f"info_hash={quote_from_bytes(ih, safe='')}")
    assert d[b"files"][ih][b"incomplete"] == 0
    # a bad query is a bencoded failure with 200
    d = await t.bt("announce", t.host.secret, "info_hash=%01&port=1")
    assert b"failure reason" in d
    d = await t.bt("announce", t.host.secret, announce_query(bytes(20), 7001, b"A" * 20))
    assert d == {b"failure reason": b"unknown torrent"}
    d = await t.bt("scrape", t.host.secret, f"info_hash={quote_from_bytes(bytes(20), safe='')}")
    assert d == {b"failure reason": b"unknown torrent"}


async def test_garbage_is_400_never_500(tracker_server: Tracker) -> None:
    t = tracker_server
    csr_garbage = [b"", b"\xc1", b"\x93\x01\x02\x03", wire.pack([1, 2]), wire.pack({"csr": 5}),
                   wire.pack({"nope": "x"}), wire.pack({"csr": "not a pem"}), os.urandom(4096)]
    for body in csr_garbage:
        status, data = await t.call("POST", "/v1/enroll", t.host, body)
        assert status == 400, body
        assert error_of(data)
    envelope_garbage = [b"", b"\xc1", wire.pack({"manifest": b"x", "signature": b"y", "key": b"z"}),
                        wire.pack({"manifest": b"x", "signature": bytes(64), "key": bytes(32)}),
                        wire.pack("string"), os.urandom(4096)]
    for body in envelope_garbage:
        status, data = await t.call("POST", "/v1/manifests", t.builder, body)
        assert status == 400, body
    for path in ("/v1/watch?since=abc", "/v1/watch?timeout=x", "/v1/watch?since=-1",
                 "/v1/watch?timeout=nan", "/v1/manifests/UPPER:case"):
        status, _ = await t.call("GET", path, t.host)
        assert status == 400, path
    status, data = await t.call("GET", "/v1/nothing", t.host)
    assert status == 404 and error_of(data)
    status, _ = await t.call("PUT", "/v1/manifests", t.builder, b"x")
    assert status == 405


async def test_oversize_body_is_413(tracker_server: Tracker) -> None:
    t = tracker_server
    status, data = await t.call("POST", "/v1/manifests", t.builder, b"\0" * (MAX_BODY + 1))
    assert status == 413 and error_of(data)


async def test_access_log_hides_secrets(tracker_server: Tracker, caplog: pytest.LogCaptureFixture) -> None:
    t = tracker_server
    await t.bt("announce", t.host.secret, announce_query(bytes(20), 7001, b"A" * 20))
    await t.bt("scrape", t.host.secret, "info_hash=x")
    await t.call("GET", "/v1/manifests", t.host)
    # answered announces and scrapes are counted in /metrics, not logged one by one; anything else is
    for path in (f"/announce/{t.host.secret}/x", f"/scrape/{t.host.secret}/x", f"/t/{t.host.secret}/x"):
        assert (await t.call("GET", path))[0] == 404
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert not any(" 200 " in line and "announce" in line for line in access)
    assert any("/announce/<secret>/x 404" in line for line in access)
    assert any("/scrape/<secret>/x 404" in line for line in access)
    assert any("/t/<secret>/x 404" in line for line in access)
    assert t.host.secret not in caplog.text
    # a decoded %0A in a path cannot forge a log line
    assert (await t.call("GET", "/v1/nothing%0A2099 forged line"))[0] == 404
    assert not any("\n" in r.getMessage() for r in caplog.records if r.name == "aiohttp.access")


async def test_real_libtorrent_announce(tracker_server: Tracker, tmp_path: Path) -> None:
    """libtorrent's own announce (raw info_hash, its query fields) is understood and answered."""
    t = tracker_server
    envelope = t.signed()
    layer = SignedManifest.from_bytes(envelope).verify(None).layers[0]
    assert (await t.call("POST", "/v1/manifests", t.builder, envelope))[0] == 200
    ses = lt.session({"listen_interfaces": "127.0.0.1:0,127.0.0.1:0s", "enable_dht": False, "enable_lsd": False,
                      "enable_upnp": False, "enable_natpmp": False,
                      "alert_mask": lt.alert_category.tracker | lt.alert_category.error})
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(layer.torrent)
    atp.save_path = str(t.workdir)
    atp.renamed_files = {0: layer.blob[7:]}  # named after its group, stored under its digest
    atp.flags |= lt.torrent_flags.seed_mode
    atp.trackers = [f"{t.url}/announce/{t.host.secret}"]
    handle = ses.add_torrent(atp)
    reply = None
    async with asyncio.timeout(20):
        while reply is None:
            for a in ses.pop_alerts():
                if isinstance(a, lt.tracker_error_alert):
                    pytest.fail(f"tracker error: {a.message()}")
                if isinstance(a, lt.tracker_reply_alert):
                    reply = a
            await asyncio.sleep(0.05)
    d = await t.bt("scrape", t.host.secret, f"info_hash={quote_from_bytes(layer.announce_hash, safe='')}")
    assert d[b"files"][layer.announce_hash][b"complete"] == 1
    # the peer is handed out with libtorrent's SSL listen port, under the token's name
    someone = Peer("127.0.0.2", 1, bytes(20), 10, "other")
    [seed] = t.service.peers.peers(layer.announce_hash, someone, 50)
    assert (seed.ip, seed.port, seed.host) == ("127.0.0.1", ses.ssl_listen_port(), "h1")
    # removing the torrent announces event=stopped, which drops the peer
    ses.remove_torrent(handle)
    async with asyncio.timeout(20):
        while t.service.peers.counts(layer.announce_hash).complete:
            await asyncio.sleep(0.02)
    sessions = [ses]
    del ses
    await asyncio.to_thread(sessions.clear)  # the session's destructor may block: not in the loop
    d = await t.bt("scrape", t.host.secret, f"info_hash={quote_from_bytes(layer.announce_hash, safe='')}")
    assert d[b"files"][layer.announce_hash][b"complete"] == 0


def test_cli_tokens(tmp_path: Path) -> None:
    """Through `swarm` (main() maps errors to one line and an exit code)."""
    data = str(tmp_path / "data")
    res = run_swarm("tracker", "token", "create", "b1", "--role", "builder", "--data", data, check=False)
    assert res.returncode == 1 and "--key" in res.stderr  # a builder token is bound to its key at creation
    res = run_swarm("tracker", "token", "create", "b1", "--role", "builder", "--key",
                    SigningKey.generate().public_text, "--data", data, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    token = JoinToken.parse(res.stdout.strip())
    res = run_swarm("tracker", "token", "create", "h1", "--role", "host", env={"SWARM_DATA": data}, check=False)
    assert res.returncode == 0
    res = run_swarm("tracker", "token", "create", "h1", "--role", "host", "--data", data, check=False)
    assert res.returncode == 1 and res.stderr.startswith("error: ") and "Traceback" not in res.stdout + res.stderr
    res = run_swarm("tracker", "token", "revoke", "h1", "--data", data, check=False)
    assert res.returncode == 0
    res = run_swarm("tracker", "token", "revoke", "nobody", "--data", data, check=False)
    assert res.returncode == 1 and res.stderr == "error: no token named 'nobody'\n"
    res = run_swarm("tracker", "token", "list", "--data", data, check=False)
    assert res.returncode == 0
    assert "b1" in res.stdout and "h1" in res.stdout and "builder" in res.stdout
    assert token.secret not in res.stdout
    service = open_service(ServeOptions(Path(data)))
    assert token.ca_fingerprint == service.ca.fingerprint
    assert service.authenticate(token.secret).name == "b1"
    assert [t.revoked for t in service.list_tokens()] == [False, True]
    service.close()
    res = run_swarm("tracker", "token", "create", "x", "--role", "root", "--data", data, check=False)
    assert res.returncode == 2


def test_token_commands_do_not_load_libtorrent(tmp_path: Path) -> None:
    res = run_swarm("tracker", "token", "create", "h1", "--role", "host", "--data", str(tmp_path), env={
        "PYTHONPROFILEIMPORTTIME": "1"})
    JoinToken.parse(res.stdout.strip())
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "swarm.tracker.service" in imported and "fastbencode" in imported
    assert "libtorrent" not in imported


async def test_cli_serve_subprocess(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarm.cli.main", "tracker", "serve", "--data", str(tmp_path / "data"),
        "--listen", "127.0.0.1:0",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("tracker listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        async with aiohttp.ClientSession() as http, http.get(url + "/v1/health") as resp:
            assert resp.status == 200 and wire.unpack_map(await resp.read()) == {"ok": True}
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert proc.stderr is not None
        assert b"Traceback" not in await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
