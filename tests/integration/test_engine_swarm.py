"""The libtorrent engine against the real tracker over HTTP: SSL torrents move
between CA-certified peers, bytes are attributed to the peer that sent them,
and rate limits apply on loopback."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from swarm.core.certs import make_csr, new_private_key, private_key_pem
from swarm.core.digest import file_digest
from swarm.core.groups import group_id
from swarm.core.manifest import Manifest
from swarm.engine.session import Engine, peer_name, peer_tag
from swarm.core.signing import SigningKey
from swarm.tracker.options import ServeOptions
from swarm.tracker.server import open_service, start_tracker
from swarm.tracker.service import TrackerService
from tests.support.manifests import make_signed_manifest


@dataclass
class Swarm:
    url: str
    service: TrackerService
    manifest: Manifest
    seed_dir: Path


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[Swarm]:
    service = open_service(ServeOptions(tmp_path / "tracker"))
    runner, port = await start_tracker(service, "127.0.0.1", 0)
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    payload = os.urandom(3 * 1024 * 1024 + 12345)
    key = SigningKey.generate()
    builder = service.create_token("builder", "builder", key.public_raw)
    envelope = make_signed_manifest(seed_dir, service.ca.cert_pem, key, payloads=[payload], publisher="builder")
    service.publish(builder.secret, envelope.to_bytes())
    try:
        yield Swarm(f"http://127.0.0.1:{port}", service, Manifest.from_bytes(envelope.manifest), seed_dir)
    finally:
        await runner.cleanup()
        service.close()


def enrolled(swarm: Swarm, name: str, workdir: Path, role: str = "host") -> tuple[str, Path, Path]:
    key = SigningKey.generate().public_raw if role == "builder" else None
    token = swarm.service.create_token(name, role, key)
    key = new_private_key()
    answer = swarm.service.enroll(token.secret, make_csr(key, name))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "host.key").write_bytes(private_key_pem(key))
    (workdir / "host.pem").write_text(answer.certificate)
    return f"{swarm.url}/announce/{token.secret}", workdir / "host.pem", workdir / "host.key"


def test_peer_ids_carry_the_host_name() -> None:
    tag = peer_tag("host1")
    assert peer_name((tag + "abcdefghijkl").encode()[:20]) == "host1"
    assert peer_name(b"-LT2110-abcdefghijkl") == "?"


async def test_download_from_a_certified_seed_is_attributed_and_rate_limited(swarm: Swarm, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    layer = swarm.manifest.layers[0]
    seed_url, seed_cert, seed_key = enrolled(swarm, "seeder", tmp_path / "a")
    leech_url, leech_cert, leech_key = enrolled(swarm, "leecher", tmp_path / "b")
    seeder = Engine("127.0.0.1:0", "seeder", seed_cert, seed_key, upload_limit=1_000_000)
    leecher = Engine("127.0.0.1:0", "leecher", leech_cert, leech_key)
    seeder.start(loop)
    leecher.start(loop)
    try:
        seeder.add(layer.torrent, swarm.seed_dir, seed_url, seed=True, file_name=layer.blob[7:])
        down = tmp_path / "down"
        down.mkdir()
        started = time.monotonic()
        ih = leecher.add(layer.torrent, down, leech_url, seed=False, file_name=layer.blob[7:])
        await asyncio.wait_for(leecher.wait_finished(ih), timeout=60)
        elapsed = time.monotonic() - started
        assert file_digest(down / layer.blob[7:]) == layer.blob
        status = leecher.status(ih)
        by_name = {p.name: p.downloaded for p in status.peers}
        assert by_name.get("seeder") == layer.blob_size
        # 3.0 MiB at 1 MB/s: well above 2 s; the cap holds on loopback peers
        assert elapsed > 2.5
    finally:
        # closing announces `stopped` to the tracker, which runs on this same loop
        await asyncio.gather(asyncio.to_thread(leecher.close), asyncio.to_thread(seeder.close))


async def test_one_blob_two_groups_one_file_and_eviction_stops_both(tmp_path: Path) -> None:
    """The same blob in a web and a pci image: two torrents over one file in a real session; the
    cache's eviction of the blob stops both torrents and deletes the one file."""
    from swarm.agent.cache import CacheKeeper
    from swarm.agent.metrics import AgentMetrics
    from swarm.agent.paths import AgentPaths
    from swarm.agent.store import BlobStore, ManifestStore
    from tests.support.outsider import self_signed

    paths = AgentPaths(tmp_path / "agent")
    paths.create()
    key = SigningKey.generate()
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    shared = os.urandom(300 * 1024)
    envelopes = [make_signed_manifest(paths.blobs_dir, ca, key, f"{g}/app", payloads=[shared], group=g)
                 for g in ("web", "pci")]
    blobs, manifests = BlobStore(paths), ManifestStore(paths)
    for envelope in envelopes:
        manifests.save(envelope)
    (layer_web,), (layer_pci,) = (Manifest.from_bytes(e.manifest).layers for e in envelopes)
    assert layer_web.blob == layer_pci.blob and layer_web.info_hash != layer_pci.info_hash
    blobs.mark_verified(layer_web.blob)
    (tmp_path / "cert").mkdir()
    cert, cert_key = self_signed(tmp_path / "cert")
    engine = Engine("127.0.0.1:0", "both", cert, cert_key)
    engine.start(asyncio.get_running_loop())
    try:
        for layer in (layer_web, layer_pci):
            engine.add(layer.torrent, paths.blobs_dir, "http://127.0.0.1:9/announce", seed=True,
                       file_name=layer.blob[7:])
        assert os.listdir(paths.blobs_dir) == [layer_web.blob[7:]]
        statuses = [engine.status(la.info_hash) for la in (layer_web, layer_pci)]
        assert {s.name for s in statuses} == {layer_web.blob[7:]}  # the file on disk, for `swarm status`
        assert {s.group for s in statuses} == {group_id("web"), group_id("pci")}
        cache = CacheKeeper(1, 0, blobs, manifests, engine, AgentMetrics())
        assert cache.evict() == [layer_web.blob]
        assert not engine.has(layer_web.info_hash) and not engine.has(layer_pci.info_hash)
        assert os.listdir(paths.blobs_dir) == []
    finally:
        await asyncio.to_thread(engine.close)


class FirstBlockFrom:
    """An engine observer that notes when the first block from a given role arrives."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.seen = threading.Event()

    def block_received(self, source_role: str, nbytes: int) -> None:
        if source_role == self.role:
            self.seen.set()

    def piece_failed(self) -> None:
        pass


async def test_a_connection_that_closes_early_is_counted_and_every_byte_is_attributed(
    swarm: Swarm, tmp_path: Path
) -> None:
    """A host seed leaves right after its first block, then the builder sends the rest at full
    speed: with the session's real settings every byte is attributed, none twice, none lost
    (a fast tail is where libtorrent stops posting block alerts if the piece picker goes)."""
    loop = asyncio.get_running_loop()
    layer = swarm.manifest.layers[0]
    first_from_host = FirstBlockFrom("host")
    engines: dict[str, Engine] = {}
    urls: dict[str, str] = {}
    for name, role in (("origin", "builder"), ("hostseed", "host"), ("leecher", "host")):
        urls[name], cert, key = enrolled(swarm, name, tmp_path / name, role)
        if name == "leecher":
            engines[name] = Engine("127.0.0.1:0", name, cert, key, role=role, observer=first_from_host)
        else:
            engines[name] = Engine("127.0.0.1:0", name, cert, key, upload_limit=500_000, role=role)
        engines[name].start(loop)
    try:
        for name in ("origin", "hostseed"):
            engines[name].add(layer.torrent, swarm.seed_dir, urls[name], seed=True, file_name=layer.blob[7:])
        down = tmp_path / "down"
        down.mkdir()
        ih = engines["leecher"].add(layer.torrent, down, urls["leecher"], seed=False, file_name=layer.blob[7:])
        assert await asyncio.to_thread(first_from_host.seen.wait, 60), "no block came from the host seed"
        engines["hostseed"].remove(ih)  # its connection closes now, long before the download ends
        engines["origin"].set_rate_limits(0, 0)
        await asyncio.wait_for(engines["leecher"].wait_finished(ih), timeout=60)
        assert file_digest(down / layer.blob[7:]) == layer.blob
        status = engines["leecher"].status(ih)
        by_name = {p.name: p.downloaded for p in status.peers}
        assert by_name.get("hostseed", 0) > 0, by_name
        assert by_name.get("origin", 0) > 0, by_name
        assert sum(by_name.values()) == layer.blob_size, by_name
        assert status.received_by_role == {"builder": by_name["origin"], "host": by_name["hostseed"]}
    finally:
        await asyncio.gather(*(asyncio.to_thread(e.close) for e in engines.values()))


async def test_a_builder_that_downloads_attributes_every_byte(swarm: Swarm, tmp_path: Path) -> None:
    """The builder's session makes no piece suggestions, which would silence block alerts of a
    download; its first download turns suggestions back on, so its bytes are counted like a host's."""
    loop = asyncio.get_running_loop()
    layer = swarm.manifest.layers[0]
    seed_url, seed_cert, seed_key = enrolled(swarm, "hostseed", tmp_path / "a")
    down_url, down_cert, down_key = enrolled(swarm, "origin", tmp_path / "b", "builder")
    seeder = Engine("127.0.0.1:0", "hostseed", seed_cert, seed_key, upload_limit=1_000_000)
    builder = Engine("127.0.0.1:0", "origin", down_cert, down_key, role="builder")
    seeder.start(loop)
    builder.start(loop)
    try:
        seeder.add(layer.torrent, swarm.seed_dir, seed_url, seed=True, file_name=layer.blob[7:])
        down = tmp_path / "down"
        down.mkdir()
        ih = builder.add(layer.torrent, down, down_url, seed=False, file_name=layer.blob[7:])
        await asyncio.wait_for(builder.wait_finished(ih), timeout=60)
        status = builder.status(ih)
        assert {p.name: p.downloaded for p in status.peers if p.downloaded} == {"hostseed": layer.blob_size}
        assert status.received_by_role == {"host": layer.blob_size}
    finally:
        await asyncio.gather(asyncio.to_thread(builder.close), asyncio.to_thread(seeder.close))
