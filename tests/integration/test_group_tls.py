"""Host groups in TLS: each layer torrent is named after its group, each certificate names its holder's
groups, so libtorrent itself keeps a host out of another group's swarms.

Real tracker process, real agents (the builder with a private dockerd to build and export from, the
two-group host with one to load into; the other hosts are relays, which verify and seed without
Docker), and real libtorrent sessions (tests/e2e/peertools.py `steal`: a plain client holding a
torrent, the seed's address and whatever CA-signed certificate it was given).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import docker
import libtorrent as lt
import pytest

from swarm.agent.paths import AgentPaths
from swarm.agent.store import ManifestStore
from swarm.core.certs import dns_names, load_cert, make_csr, new_private_key, private_key_pem
from swarm.core.errors import InvalidInput
from swarm.core.groups import group_id
from swarm.core.manifest import Layer, Manifest
from swarm.core.tokens import JoinToken
from swarm.core.torrent import inspect_torrent
from swarm.images.synthetic import build_image, payload, run_image
from swarm.tracker.ca import CertificateAuthority
from tests.support.dockerd import Dockerd, stop_all
from tests.support.procs import Agent, Tracker, run_swarm, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
WEB, PCI = "shop/front:1", "payments/api:1"
WEB_ID, PCI_ID = group_id("web"), group_id("pci")
MIB = 1024 * 1024
SHARED = payload(3 * MIB, seed=21)  # a layer both images hold


@dataclass
class Bed:
    root: Path
    tracker: Tracker
    pubkey: str
    builder: Agent
    engines: dict[str, Dockerd]
    tokens: dict[str, str]
    agents: list[Agent]

    def manifest(self, ref: str) -> Manifest:
        (found,) = [m for _e, m in ManifestStore(AgentPaths(self.builder.data)).all() if str(m.ref) == ref]
        return found

    def host(self, name: str, groups: tuple[str, ...], *extra: str) -> Agent:
        args = [a for g in groups for a in ("--group", g)]
        self.tokens[name] = self.tracker.token(name, "host", *args)
        agent = Agent.start(self.root, name, self.tracker.url, self.tokens[name], "--trust", self.pubkey, *extra)
        self.agents.append(agent)
        return agent

    def relay(self, name: str, groups: tuple[str, ...]) -> Agent:
        return self.host(name, groups, "--relay", "--docker-host", "unix:///nonexistent/docker.sock")

    def get(self, name: str, path: str) -> int:
        headers = {"Authorization": f"Bearer {self.secret(name)}"}
        request = urllib.request.Request(self.tracker.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def announce(self, name: str, layer: Layer) -> dict[bytes, Any]:
        query = (f"info_hash={quote_from_bytes(layer.announce_hash, safe='')}"
                 f"&peer_id={quote_from_bytes(b'-XX0100-groups-00000', safe='')}&port=7000"
                 "&uploaded=0&downloaded=0&left=10&event=started&compact=1")
        with urllib.request.urlopen(f"{self.tracker.url}/announce/{self.secret(name)}?{query}", timeout=30) as resp:
            answer = lt.bdecode(resp.read())
        assert isinstance(answer, dict)
        return answer

    def secret(self, name: str) -> str:
        return JoinToken.parse(self.tokens[name]).secret


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    root = tmp_path_factory.mktemp("groups")
    engines = {name: Dockerd().start() for name in ("builder1", "both1")}
    # certificates of 60 s (the shortest allowed): renewed every 40 s, so a membership change shows soon
    tracker = Tracker.start(root, "--cert-lifetime", "60")
    agents: list[Agent] = []
    try:
        data = str(tracker.data)
        for group in ("web", "pci"):
            run_swarm("tracker", "group", "add", group, "--data", data)
        run_swarm("tracker", "group", "map", "shop/*", "web", "--data", data)
        run_swarm("tracker", "group", "map", "payments/*", "pci", "--data", data)
        key = root / "builder.key"
        pubkey = run_swarm("keygen", str(key)).stdout.strip()
        api = docker.APIClient(base_url=engines["builder1"].host)
        build_image(api, WEB, [{"/shared.bin": SHARED}, {"/hello.txt": b"web\n"}],
                    cmd=["/bin/busybox", "cat", "/hello.txt"])
        build_image(api, PCI, [{"/shared.bin": SHARED}, {"/cards.bin": payload(2 * MIB, seed=22)}],
                    cmd=["/bin/busybox", "wc", "-c", "/cards.bin"])
        builder = Agent.start(root, "builder1", tracker.url, tracker.token("builder1", "builder", "--key", pubkey),
                              "--docker-host", engines["builder1"].host)
        agents.append(builder)
        builder.swarm("seed", WEB, PCI, "--key", str(key))
        yield Bed(root, tracker, pubkey, builder, engines, {}, agents)
    finally:
        for agent in agents:
            agent.stop()
        tracker.proc.stop()
        stop_all(list(engines.values()))


def steal(torrent: bytes, port: int, cert: Path, key: Path, workdir: Path, until: int = 0) -> dict[str, Any]:
    """A plain libtorrent session with `torrent` and this certificate dials the seed at `port`."""
    workdir.mkdir(parents=True)
    (workdir / "layer.torrent").write_bytes(torrent)
    args = [sys.executable, "-m", "tests.e2e.peertools", "steal", "--torrent", str(workdir / "layer.torrent"),
            "--peer", f"127.0.0.1:{port}", "--listen", "127.0.0.1", "--workdir", str(workdir / "down"),
            "--cert", str(cert), "--key", str(key), "--timeout", "20", "--until-bytes", str(until)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(args, capture_output=True, text=True, timeout=90, cwd=REPO, env=env, check=True).stdout
    answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return answer


def ca_signed(bed: Bed, where: Path, cn: str, sans: list[str]) -> tuple[Path, Path]:
    """A certificate from the swarm CA itself (read from the tracker's data dir) with these SAN names."""
    ca = CertificateAuthority.load_or_create(bed.tracker.data)
    key = new_private_key()
    where.mkdir(parents=True)
    (where / "host.key").write_bytes(private_key_pem(key))
    (where / "host.pem").write_text(ca.sign_csr(make_csr(key, cn), cn, 600, sans).pem)
    return where / "host.pem", where / "host.key"


def enrolled(bed: Bed, name: str, groups: tuple[str, ...], where: Path) -> tuple[Path, Path]:
    """A certificate the tracker issued to host token `name` (made here), as an agent would get it."""
    args = [a for g in groups for a in ("--group", g)]
    bed.tokens[name] = bed.tracker.token(name, "host", *args)
    out = subprocess.run([sys.executable, "-m", "tests.e2e.peertools", "enroll", "--tracker", bed.tracker.url,
                          "--token", bed.tokens[name], "--data", str(where)], capture_output=True, text=True,
                         timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), check=True).stdout
    answer = json.loads(out.strip().splitlines()[-1])
    return Path(answer["cert"]), Path(answer["key"])


def biggest(manifest: Manifest) -> Layer:
    return max(manifest.layers, key=lambda layer: layer.blob_size)


def test_layer_torrents_are_named_after_their_group(bed: Bed) -> None:
    for ref, gid in ((WEB, WEB_ID), (PCI, PCI_ID)):
        for layer in bed.manifest(ref).layers:
            assert lt.torrent_info(layer.torrent).name() == gid
    names = dns_names((bed.builder.data / "identity" / "host.pem").read_bytes())
    assert names == {WEB_ID, PCI_ID, group_id("default")}  # the builder publishes anywhere (`*`)
    assert sorted(os.listdir(bed.builder.data / "blobs")) == sorted(  # blobs stay under their digests
        {layer.blob[7:] for ref in (WEB, PCI) for layer in bed.manifest(ref).layers})


def test_a_web_certificate_gets_zero_bytes_from_a_pci_seed(bed: Bed, tmp_path: Path) -> None:
    cert, key = enrolled(bed, "web-thief", ("web",), tmp_path / "thief")
    assert dns_names(cert.read_bytes()) == {WEB_ID}
    pci_layer, web_layer = biggest(bed.manifest(PCI)), biggest(bed.manifest(WEB))
    # the same certificate and seed, for a torrent of its own group: bytes flow (the setup works)
    ok = steal(web_layer.torrent, bed.builder.peer_port, cert, key, tmp_path / "web", until=256 * 1024)
    assert ok["downloaded"] >= 256 * 1024, ok
    # the pci torrent, the seed's address and a CA-signed certificate: no TLS handshake, zero bytes
    refused = steal(pci_layer.torrent, bed.builder.peer_port, cert, key, tmp_path / "pci")
    assert refused["downloaded"] == 0 and refused["pieces"] == 0, refused
    assert refused["refused"] == 1, refused


def test_names_match_exactly_not_by_prefix(bed: Bed, tmp_path: Path) -> None:
    """libtorrent before 2.0.13 accepted a SAN that is a prefix of the torrent name: ours must not."""
    layer = biggest(bed.manifest(PCI))
    cert, key = ca_signed(bed, tmp_path / "exact", "exact-host", [PCI_ID])
    assert steal(layer.torrent, bed.builder.peer_port, cert, key, tmp_path / "e", until=1)["downloaded"] > 0
    for i, sans in enumerate(([PCI_ID[:13]], ["g"], [PCI_ID + "0"], [])):
        cert, key = ca_signed(bed, tmp_path / f"near{i}", "near-host", sans)
        got = steal(layer.torrent, bed.builder.peer_port, cert, key, tmp_path / f"n{i}")
        assert got["downloaded"] == 0 and got["refused"] == 1, (sans, got)


def test_a_host_removed_from_pci(bed: Bed, tmp_path: Path) -> None:
    mover = bed.relay("mover1", ("web", "pci"))
    mover.swarm("pull", PCI, timeout=240)
    pci_layer, web_layer = biggest(bed.manifest(PCI)), biggest(bed.manifest(WEB))
    cert_file, key_file = mover.data / "identity" / "host.pem", mover.data / "identity" / "host.key"
    assert dns_names(cert_file.read_bytes()) == {WEB_ID, PCI_ID}
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(cert_file, old / "host.pem")
    shutil.copy(key_file, old / "host.key")
    got = steal(pci_layer.torrent, bed.builder.peer_port, old / "host.pem", old / "host.key", tmp_path / "s1",
                until=1)
    assert got["downloaded"] > 0, got  # while a member, its certificate opens the pci swarm
    old_serial = load_cert(cert_file.read_bytes()).serial_number

    run_swarm("tracker", "token", "groups", "mover1", "--remove", "pci", "--data", str(bed.tracker.data))
    # the tracker refuses at once: no manifest, no peers
    assert bed.get("mover1", f"/v1/manifests/{PCI}") == 404
    assert b"failure reason" in bed.announce("mover1", pci_layer)
    assert bed.get("mover1", f"/v1/manifests/{WEB}") == 200

    # the next certificate (renewed on schedule) lacks the pci SAN
    def renewed() -> bool:
        try:
            cert = load_cert(cert_file.read_bytes())
        except Exception:
            return False  # being replaced
        return cert.serial_number != old_serial
    wait_for(renewed, 90, "mover1 to renew its certificate")
    assert dns_names(cert_file.read_bytes()) == {WEB_ID}
    mover.proc.wait_line(r"stopped \d+ torrent\(s\) of groups this host's new certificate no longer names")
    # and with it, connections to pci peers fail, while the web swarm still takes it
    cut = steal(pci_layer.torrent, bed.builder.peer_port, cert_file, key_file, tmp_path / "s2")
    assert cut["downloaded"] == 0 and cut["refused"] == 1, cut
    web = steal(web_layer.torrent, bed.builder.peer_port, cert_file, key_file, tmp_path / "s3", until=1)
    assert web["downloaded"] > 0, web


def test_an_image_published_before_groups_fails_in_one_line(bed: Bed, tmp_path: Path) -> None:
    """Upgrade: a tracker keeps manifests published before host groups, their torrents named by digest.
    No certificate names such a torrent, so no peer would serve it: a pull says so (re-seed it) at once,
    and a new publication of one is refused."""
    from swarm.core.signing import SignedManifest, SigningKey
    from swarm.engine.metainfo import make_torrent
    from swarm.tracker.options import ServeOptions
    from swarm.tracker.server import open_service
    from tests.support.manifests import created_now_ms, make_signed_manifest

    data = b"a layer from before groups\n"
    blob_hex = hashlib.sha256(data).hexdigest()
    (tmp_path / blob_hex).write_bytes(data)
    key = SigningKey.load(bed.root / "builder.key")
    service = open_service(ServeOptions(bed.tracker.data))

    def legacy(repository: str, publisher: str) -> tuple[Manifest, SignedManifest]:
        torrent = make_torrent(tmp_path / blob_hex, service.ca.cert_pem, blob_hex)  # the old naming: by digest
        layer = Layer(diff_id="sha256:" + blob_hex, size=len(data), blob="sha256:" + blob_hex, blob_size=len(data),
                      compression="none", info_hash=inspect_torrent(torrent).info_hash, torrent=torrent)
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}).encode()
        manifest = Manifest(repository=repository, tag="1", config=config, layers=(layer,), key_id=key.key_id,
                            created_ms=created_now_ms(), publisher=publisher)
        return manifest, key.sign(manifest)

    try:
        old, signed = legacy("legacy/app", "builder1")
        # what the database of an upgraded tracker holds (publish refuses such a manifest now, see below)
        service.storage.publish("legacy/app:1", signed.to_bytes(), old.image_id, "builder1", old.created_ms,
                                [(la.announce_hash, la.blob) for la in old.layers])
        builder2 = JoinToken.parse(bed.tracker.token("builder2", "builder", "--key", key.public_text))
        with pytest.raises(InvalidInput, match=r"must be named after its group .default.*not by digest"):
            service.publish(builder2.secret, legacy("legacy/other", "builder2")[1].to_bytes())
        wrong = make_signed_manifest(tmp_path, service.ca.cert_pem, key, "legacy/new", publisher="builder2",
                                     group="web")
        with pytest.raises(InvalidInput, match="not after its repository's group"):
            service.publish(builder2.secret, wrong.to_bytes())
    finally:
        service.close()
    host = bed.relay("default1", ("default",))
    pulled = host.swarm("pull", "legacy/app:1", check=False)
    assert pulled.returncode == 1 and "Traceback" not in pulled.stderr
    assert "published before host groups" in pulled.stderr and "seeded again" in pulled.stderr, pulled.stderr
    assert len([line for line in pulled.stderr.splitlines() if line.startswith("error:")]) == 1, pulled.stderr


def _received(agent: Agent) -> dict[str, dict[str, int]]:
    """blob -> peer name -> payload bytes received, over every torrent of the agent."""
    out: dict[str, dict[str, int]] = {}
    for torrent in agent.status()["torrents"]:
        by_peer = out.setdefault(torrent["blob"], {})
        for peer in torrent["peers"]:
            by_peer[peer["name"]] = by_peer.get(peer["name"], 0) + peer["downloaded"]
    return out


def test_two_pulls_at_once_fetch_a_shared_layer_once(bed: Bed) -> None:
    """A host in both groups pulling both images at once (one `swarm pull`, two pulls in flight):
    each shared blob crosses the network through one group's torrent; the other's seeds the file."""
    host = bed.relay("both2", ("web", "pci"))
    host.swarm("pull", WEB, PCI, timeout=240)
    web_m, pci_m = bed.manifest(WEB), bed.manifest(PCI)
    shared = {la.blob: la.blob_size for la in web_m.layers if la.blob in {p.blob for p in pci_m.layers}}
    assert shared
    torrents = host.status()["torrents"]
    for blob, size in shared.items():
        mine = [t for t in torrents if t["blob"] == blob]
        assert len(mine) == 2 and {t["state"] for t in mine} == {"seeding"}, mine
        got = sorted(sum(p["downloaded"] for p in t["peers"]) for t in mine)
        assert got == [0, size], (blob, got)


def test_a_two_group_host_stores_a_shared_layer_once_and_serves_both_swarms(bed: Bed) -> None:
    both = bed.host("both1", ("web", "pci"), "--docker-host", bed.engines["both1"].host)
    for ref in (WEB, PCI):
        both.swarm("pull", ref, timeout=240)
    api = docker.APIClient(base_url=bed.engines["both1"].host)
    assert run_image(api, WEB).decode() == "web\n"
    web_m, pci_m = bed.manifest(WEB), bed.manifest(PCI)
    shared = {la.blob for la in web_m.layers} & {la.blob for la in pci_m.layers}
    assert shared, "the two images share their busybox and /shared.bin layers"
    big_shared = max((la for la in web_m.layers if la.blob in shared), key=lambda la: la.blob_size)
    assert big_shared.blob_size > 2 * MIB

    # one file per shared blob (no copy, no link), seeded by two torrents: one per group
    blobs = both.data / "blobs"
    for blob in shared:
        assert (blobs / blob[7:]).stat().st_nlink == 1
    assert len(os.listdir(blobs)) == len({la.blob for la in (*web_m.layers, *pci_m.layers)})
    torrents = both.status()["torrents"]
    for blob in shared:
        mine = [t for t in torrents if t["blob"] == blob]
        assert len(mine) == 2 and {t["state"] for t in mine} == {"seeding"}, mine
    images = {i["ref"]: i for i in both.status()["images"]}
    assert (images[WEB]["group"], images[PCI]["group"]) == ("web", "pci")
    assert images[PCI]["group_id"] == PCI_ID
    assert "pci" in both.swarm("status").stdout

    # with the builder gone, every byte a one-group host gets comes from the two-group host
    bed.builder.stop()
    web_host, pci_host = bed.relay("web1", ("web",)), bed.relay("pci1", ("pci",))
    web_host.swarm("pull", WEB, timeout=240)
    pci_host.swarm("pull", PCI, timeout=240)
    for host, manifest in ((web_host, web_m), (pci_host, pci_m)):
        got = _received(host)
        for layer in manifest.layers:
            assert got[layer.blob].get("both1", 0) == layer.blob_size, (host.name, got)
        assert {t["blob"] for t in host.status()["torrents"]} == {la.blob for la in manifest.layers}
    # the shared layer went out in both swarms from the one file
    assert _received(web_host)[big_shared.blob]["both1"] == _received(pci_host)[big_shared.blob]["both1"]
    assert bed.get("web1", f"/v1/manifests/{PCI}") == 404
