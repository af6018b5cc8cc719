"""Clients no one here wrote against the tracker: aria2c announces and downloads, transmission-show
scrapes. They only speak v1, so the test registers a plain v1 torrent's info-hash in the tracker's
database itself (`tests.support.manifests.register_announce_hash`, a test-only path).

Needs Debian's `aria2` and `transmission-cli`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import libtorrent as lt
import pytest

from tests.support.redis import free_port
from swarm.tracker.options import ServeOptions
from swarm.tracker.server import open_service, start_tracker
from swarm.tracker.service import TrackerService
from tests.support.manifests import register_announce_hash


def need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is missing: install the Debian package `{package}`", pytrace=False)
    return path


@dataclass
class V1:
    url: str
    service: TrackerService
    payload: Path
    info: dict[bytes, object]
    info_hash: bytes
    workdir: Path

    def torrent(self, announce: str, name: str) -> Path:
        path = self.workdir / name
        path.write_bytes(lt.bencode({b"announce": announce.encode(), b"info": self.info}))
        return path


@pytest.fixture
async def v1(tmp_path: Path) -> AsyncIterator[V1]:
    service = open_service(ServeOptions(tmp_path / "data", interval=5, min_interval=1))
    runner, port = await start_tracker(service, "127.0.0.1", 0)
    seed = tmp_path / "seed"
    seed.mkdir()
    payload = seed / "payload.bin"
    payload.write_bytes(os.urandom(2 * 1024 * 1024 + 7))
    ct = lt.create_torrent(lt.list_files(str(payload)), 64 * 1024, lt.create_torrent.v1_only)
    ct.set_priv(True)
    lt.set_piece_hashes(ct, str(seed))
    info = ct.generate()[b"info"]
    ih = lt.torrent_info(lt.bencode({b"info": info})).info_hashes().v1.to_bytes()
    register_announce_hash(service.storage.path, ih)  # type: ignore[attr-defined]
    try:
        yield V1(f"http://127.0.0.1:{port}", service, payload, info, ih, tmp_path)
    finally:
        await runner.cleanup()
        service.close()


@pytest.mark.slow
async def test_aria2c_downloads_through_the_tracker_and_transmission_scrapes(v1: V1) -> None:
    aria2c = need("aria2c", "aria2")
    show = need("transmission-show", "transmission-cli")
    seeder_token = v1.service.create_token("seeder", "host")
    aria_token = v1.service.create_token("aria", "host")
    # a plain (non-SSL) libtorrent seed announcing to the tracker
    ses = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
                      "enable_upnp": False, "enable_natpmp": False, "enable_outgoing_utp": False,
                      "enable_incoming_utp": False, "allow_multiple_connections_per_ip": True,
                      "alert_mask": lt.alert_category.tracker | lt.alert_category.error})
    atp = lt.add_torrent_params()
    # (libtorrent's SSRF mitigation wants a localhost tracker's path to start with /announce)
    atp.ti = lt.torrent_info(str(v1.torrent(f"{v1.url}/announce/{seeder_token.secret}", "seed.torrent")))
    atp.save_path = str(v1.payload.parent)
    atp.flags |= lt.torrent_flags.seed_mode
    ses.add_torrent(atp)
    try:
        async with asyncio.timeout(20):
            while v1.service.peers.counts(v1.info_hash).complete == 0:  # type: ignore[attr-defined]
                await asyncio.sleep(0.05)
        # aria2c, with its own valid token, gets the seed from the tracker and downloads
        down = v1.workdir / "aria"
        log = v1.workdir / "aria2.log"
        proc = await asyncio.create_subprocess_exec(
            aria2c, "--dir", str(down), "--log", str(log), "--log-level=info", "--seed-time=0",
            "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
            f"--listen-port={free_port()}", "--bt-stop-timeout=30", "--console-log-level=warn", "--summary-interval=0",
            str(v1.torrent(f"{v1.url}/t/{aria_token.secret}/announce", "aria.torrent")),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, out.decode(errors="replace") + log.read_text(errors="replace")[-3000:]
        assert (down / "payload.bin").read_bytes() == v1.payload.read_bytes()
        text = log.read_text(errors="replace")
        assert "/t/<secret>/" not in text  # (aria2c logs the real URL; the tracker never does)
        # aria2c was told about the seed by the tracker: its announce answer listed the seed's port
        seed_port = ses.listen_port()
        assert f"Connecting to 127.0.0.1:{seed_port}" in text, text[-3000:]
        assert v1.service.metrics.announces.labels("ok")._value.get() >= 2

        # a scrape by BEP 48's URL convention, from transmission
        torrent = v1.torrent(f"{v1.url}/t/{aria_token.secret}/announce", "show.torrent")
        result = await asyncio.create_subprocess_exec(show, "--scrape", str(torrent), stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT)
        shown, _ = await asyncio.wait_for(result.communicate(), 30)
        text = shown.decode(errors="replace")
        assert re.search(r"1 seeders?, 0 leechers?", text), text

        # a bad token: aria2c shows the tracker's failure reason and gets nothing
        bad = v1.workdir / "bad"
        bad_log = v1.workdir / "aria2-bad.log"
        proc = await asyncio.create_subprocess_exec(
            aria2c, "--dir", str(bad), "--log", str(bad_log), "--log-level=info", "--seed-time=0",
            "--enable-dht=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
            f"--listen-port={free_port()}", "--bt-stop-timeout=3", "--console-log-level=warn",
            str(v1.torrent(f"{v1.url}/t/{'0' * 40}/announce", "bad.torrent")),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        await asyncio.wait_for(proc.communicate(), 60)
        assert "Tracker returned failure reason: unauthorized" in bad_log.read_text(errors="replace")
        assert not (bad / "payload.bin").exists() or (bad / "payload.bin").read_bytes() != v1.payload.read_bytes()
        result = await asyncio.create_subprocess_exec(show, "--scrape", str(v1.torrent(
            f"{v1.url}/t/{'0' * 40}/announce", "bad-show.torrent")), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        shown, _ = await asyncio.wait_for(result.communicate(), 30)
        # transmission shows no counts for it (the answer is a bencoded failure, no `files`)
        assert "seeders" not in shown.decode(errors="replace") and "no match" in shown.decode(errors="replace")
    finally:
        sessions = [ses]
        del ses
        await asyncio.to_thread(sessions.clear)
