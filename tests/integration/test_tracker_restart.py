"""The tracker as a process: restarted in the middle of a distribution, and revocation from the CLI."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import pytest

from swarm.core import wire
from swarm.core.certs import make_csr, new_private_key, private_key_pem
from swarm.core.digest import file_digest
from swarm.core.signing import SignedManifest, SigningKey
from swarm.core.tokens import JoinToken
from swarm.engine.session import Engine
from tests.support.bt import bt
from tests.support.procs import SWARM, Proc, Tracker, run_swarm
from tests.support.manifests import make_signed_manifest


def auth(token: JoinToken) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.secret}"}


async def enroll(http: aiohttp.ClientSession, url: str, token: JoinToken, workdir: Path) -> tuple[Path, Path]:
    key = new_private_key()
    async with http.post(url + "/v1/enroll", headers=auth(token), data=wire.pack({"csr": make_csr(key, "x")})) as r:
        assert r.status == 200
        answer = wire.unpack_map(await r.read())
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "host.key").write_bytes(private_key_pem(key))
    (workdir / "host.pem").write_text(answer["certificate"])
    return workdir / "host.pem", workdir / "host.key"


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_restart_in_the_middle_of_a_distribution(tmp_path: Path) -> None:
    """Tokens, CA, certificates and manifests survive; peers re-announce to the restarted tracker; the
    download in flight completes, and a host that joins after the restart finds the swarm through it."""
    tracker = Tracker.start(tmp_path, "--announce-interval", "2", "--min-interval", "1")
    port = int(tracker.url.rsplit(":", 1)[1])
    key = SigningKey.generate()
    builder = JoinToken.parse(tracker.token("builder", "builder", "--key", key.public_text))
    tokens = {name: JoinToken.parse(tracker.token(name, "host")) for name in ("seeder", "leecher", "late")}
    loop = asyncio.get_running_loop()
    engines: list[Engine] = []
    restarted: Proc | None = None
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(tracker.url + "/v1/ca") as resp:
                ca_pem = await resp.text()
            seed_dir = tmp_path / "seed"
            seed_dir.mkdir()
            signed = make_signed_manifest(seed_dir, ca_pem, key, payloads=[os.urandom(4 * 1024 * 1024 + 99)],
                                          publisher="builder")
            async with http.post(tracker.url + "/v1/manifests", headers=auth(builder),
                                 data=signed.to_bytes()) as resp:
                assert resp.status == 200
            layer = signed.verify(None).layers[0]
            q_ih = f"info_hash={quote_from_bytes(layer.announce_hash, safe='')}"
            certs = {name: await enroll(http, tracker.url, tok, tmp_path / name) for name, tok in tokens.items()}

            def engine(name: str, **kw: Any) -> Engine:
                e = Engine("127.0.0.1:0", name, *certs[name], **kw)
                e.start(loop)
                engines.append(e)
                return e
            seeder = engine("seeder", upload_limit=1_000_000)
            leecher = engine("leecher")
            seeder.add(layer.torrent, seed_dir, f"{tracker.url}/announce/{tokens['seeder'].secret}", seed=True,
                       file_name=layer.blob[7:])
            down = tmp_path / "down"
            down.mkdir()
            ih = leecher.add(layer.torrent, down, f"{tracker.url}/announce/{tokens['leecher'].secret}", seed=False,
                             file_name=layer.blob[7:])

            async def midway() -> bool:
                st = leecher.status(ih)
                return 0 < st.done < st.total
            await wait_until(midway, 60, "the download to be under way")
            assert leecher.status(ih).done < leecher.status(ih).total

            # restart on the same port, mid-download
            assert tracker.proc.stop() == 0
            restarted = Proc("tracker2", [*SWARM, "tracker", "serve", "--data", str(tracker.data), "--listen",
                                          f"127.0.0.1:{port}", "--announce-interval", "2", "--min-interval", "1"],
                             tmp_path / "logs" / "tracker2.log").start()
            restarted.wait_line(r"tracker listening on")

            # the peers come back by themselves: the new process knows their tokens and the torrent
            async def both_announced() -> bool:
                d = await bt(http, tracker.url, "scrape", tokens["late"].secret, q_ih)
                f = d[b"files"][layer.announce_hash]
                return bool(f[b"complete"] + f[b"incomplete"] == 2)
            await wait_until(both_announced, 60, "both peers to re-announce")
            await asyncio.wait_for(leecher.wait_finished(ih), 60)
            assert file_digest(down / layer.blob[7:]) == layer.blob

            # a host joining now knows nobody but the restarted tracker, and completes
            late = engine("late")
            late_dir = tmp_path / "late-down"
            late_dir.mkdir()
            ih2 = late.add(layer.torrent, late_dir, f"{tracker.url}/announce/{tokens['late'].secret}", seed=False,
                           file_name=layer.blob[7:])
            await asyncio.wait_for(late.wait_finished(ih2), 60)
            assert file_digest(late_dir / layer.blob[7:]) == layer.blob
            # certificates issued before the restart are on record
            async with http.get(tracker.url + "/v1/manifests", headers=auth(tokens["late"])) as resp:
                assert resp.status == 200
                assert [m["ref"] for m in wire.unpack_map(await resp.read())["manifests"]] == ["demo/app:latest"]
    finally:
        await asyncio.gather(*(asyncio.to_thread(e.close) for e in engines))
        tracker.proc.stop()
        if restarted is not None:
            assert restarted.stop() == 0
            assert "Traceback" not in restarted.text()


async def test_revoke_from_the_cli_takes_effect_on_the_next_request(tmp_path: Path) -> None:
    tracker = Tracker.start(tmp_path)
    try:
        key = SigningKey.generate()
        builder = JoinToken.parse(tracker.token("b1", "builder", "--key", key.public_text))
        h1, h2 = (JoinToken.parse(tracker.token(n, "host")) for n in ("h1", "h2"))
        async with aiohttp.ClientSession() as http:
            async with http.get(tracker.url + "/v1/ca") as resp:
                ca_pem = await resp.text()
            signed = make_signed_manifest(tmp_path, ca_pem, key)
            async with http.post(tracker.url + "/v1/manifests", headers=auth(builder), data=signed.to_bytes()) as r:
                assert r.status == 200
            ih = SignedManifest.from_bytes(signed.to_bytes()).verify(None).layers[0].announce_hash

            def q(port: int, pid: bytes, event: str = "") -> str:
                return (f"info_hash={quote_from_bytes(ih, safe='')}&peer_id={quote_from_bytes(pid, safe='')}"
                        f"&port={port}&uploaded=0&downloaded=0&left=5&event={event}&compact=1")
            await bt(http, tracker.url, "announce", h2.secret, q(7002, b"2" * 20, "started"))
            d = await bt(http, tracker.url, "announce", h1.secret, q(7001, b"1" * 20, "started"))
            assert d[b"peers"] == bytes([127, 0, 0, 1]) + (7002).to_bytes(2, "big")
            await enroll(http, tracker.url, h2, tmp_path / "h2")  # works before

            run_swarm("tracker", "token", "revoke", "h2", "--data", str(tracker.data))
            # announce, enroll, renew (a second enroll), manifests: all refused on the next request
            d = await bt(http, tracker.url, "announce", h2.secret, q(7002, b"2" * 20))
            assert d == {b"failure reason": b"unauthorized"}
            for _ in range(2):
                async with http.post(tracker.url + "/v1/enroll", headers=auth(h2),
                                     data=wire.pack({"csr": make_csr(new_private_key(), "x")})) as resp:
                    assert resp.status == 401
            for path in ("/v1/manifests", "/v1/manifests/demo/app:latest", "/v1/watch?since=0&timeout=0"):
                async with http.get(tracker.url + path, headers=auth(h2)) as resp:
                    assert resp.status == 401, path
            # h2's address is gone from h1's list, even for a regular announce within min interval
            d = await bt(http, tracker.url, "announce", h1.secret, q(7001, b"1" * 20))
            assert d[b"peers"] == b"" and d[b"incomplete"] == 1
            async with http.get(tracker.url + "/metrics") as resp:
                assert "swarm_tracker_revoked_tokens 1.0" in await resp.text()
    finally:
        assert tracker.proc.stop() == 0
