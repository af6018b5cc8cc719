"""Three agents on loopback, each with its own dockerd: the secure path end to end.

Real tracker process over HTTP, real agents with real libtorrent sessions,
real dockerds. The builder's upload is capped so that peer-to-peer transfer
between the hosts is visible in the per-peer byte counts.
"""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from swarm.core.manifest import Manifest
from swarm.core.signing import SignedManifest
from swarm.core.tokens import JoinToken
from swarm.images.synthetic import build_image, payload, run_image
from tests.support.dockerd import Dockerd, stop_all
from tests.support.outsider import steal
from tests.support.procs import Agent, Tracker, run_swarm

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HELLO = "hello from the swarm\n"
BIG = 8 * 1024 * 1024


@dataclass
class Fleet:
    root: Path
    tracker: Tracker
    key: Path
    pubkey: str
    builder: Agent
    hosts: list[Agent]
    docker_hosts: dict[str, str]

    def api(self, name: str) -> docker.APIClient:
        return docker.APIClient(base_url=self.docker_hosts[name])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    umask = os.umask(0o022)  # the agents start under the usual umask: their files must be 0600 anyway
    engines = [Dockerd().start() for _ in range(3)]
    docker_hosts = {name: d.host for name, d in zip(("builder1", "host1", "host2"), engines)}
    tracker = Tracker.start(root)
    key = root / "builder.key"
    pubkey = run_swarm("keygen", str(key)).stdout.strip()
    build_image(docker.APIClient(base_url=docker_hosts["builder1"]), "myapp:1",
                [{"/data/big.bin": payload(BIG, seed=1)}, {"/data/small.bin": payload(300_000, seed=2)},
                 {"/hello.txt": HELLO.encode()}], cmd=["/bin/busybox", "cat", "/hello.txt"])
    agents: list[Agent] = []
    try:
        builder = Agent.start(root, "builder1", tracker.url, tracker.token("builder1", "builder"),
                              "--docker-host", docker_hosts["builder1"], "--upload-limit", "1MB/s")
        agents.append(builder)
        hosts = []
        for name in ("host1", "host2"):
            hosts.append(Agent.start(root, name, tracker.url, tracker.token(name, "host"),
                                     "--trust", pubkey, "--docker-host", docker_hosts[name]))
        agents.extend(hosts)
        yield Fleet(root, tracker, key, pubkey, builder, hosts, docker_hosts)
    finally:
        for agent in agents:
            agent.stop()
        tracker.proc.stop()
        stop_all(engines)
        os.umask(umask)


@dataclass
class Pulled:
    builder_id: str
    seed_stdout: str
    pull_stdout: dict[str, str]


@pytest.fixture(scope="module")
def pulled(fleet: Fleet) -> Pulled:
    """Seed myapp:1 on the builder, then pull it on both hosts at once."""
    seeded = fleet.builder.swarm("seed", "myapp:1", "--key", str(fleet.key))
    builder_id = fleet.api("builder1").inspect_image("myapp:1")["Id"]
    with concurrent.futures.ThreadPoolExecutor() as pool:
        pulls = list(pool.map(lambda h: h.swarm("pull", "myapp:1", timeout=240), fleet.hosts))
    return Pulled(builder_id, seeded.stdout, {h.name: r.stdout for h, r in zip(fleet.hosts, pulls)})


def test_seed_then_pull_on_two_hosts_loads_the_same_image(fleet: Fleet, pulled: Pulled) -> None:
    assert f"myapp:1 {pulled.builder_id}" in pulled.seed_stdout
    for host in fleet.hosts:
        assert f"myapp:1 {pulled.builder_id}" in pulled.pull_stdout[host.name]
        assert fleet.api(host.name).inspect_image("myapp:1")["Id"] == pulled.builder_id
        assert run_image(fleet.api(host.name), "myapp:1").decode() == HELLO


def _received(agent: Agent) -> dict[str, int]:
    by_peer: dict[str, int] = {}
    for torrent in agent.status()["torrents"]:
        for peer in torrent["peers"]:
            by_peer[peer["name"]] = by_peer.get(peer["name"], 0) + peer["downloaded"]
    return by_peer


def test_hosts_exchange_pieces_peer_to_peer(fleet: Fleet, pulled: Pulled) -> None:
    """With the builder capped at 1 MB/s, the hosts must have fed each other."""
    got = {h.name: _received(h) for h in fleet.hosts}
    total = sum(sum(v.values()) for v in got.values())
    from_hosts = got["host1"].get("host2", 0) + got["host2"].get("host1", 0)
    assert total >= 2 * BIG * 0.9, got          # both hosts downloaded the image (compressed blobs)
    assert from_hosts >= 0.1 * total, got       # a measurable share came from the other host


def test_host_status_reports_seeding_and_tracker(fleet: Fleet, pulled: Pulled) -> None:
    status = fleet.hosts[0].status()
    assert status["tracker_reachable"] is True
    assert status["role"] == "host"
    assert {t["state"] for t in status["torrents"]} <= {"seeding", "finished"}
    assert [img["ref"] for img in status["images"]] == ["myapp:1"]
    table = fleet.hosts[0].swarm("status").stdout
    assert "host1 (host)" in table and "myapp:1" in table and "reachable" in table


def test_pull_of_unknown_image_fails_cleanly(fleet: Fleet) -> None:
    result = fleet.hosts[0].swarm("pull", "nosuch:1", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown image nosuch:1")
    assert "Traceback" not in result.stderr


def _tag_on_builder(fleet: Fleet, tag: str) -> None:
    fleet.api("builder1").tag("myapp:1", "myapp", tag)


def test_manifest_tampered_on_the_tracker_is_refused_before_download(fleet: Fleet) -> None:
    _tag_on_builder(fleet, "tampered")
    fleet.builder.swarm("seed", "myapp:tampered", "--key", str(fleet.key))
    db = sqlite3.connect(fleet.tracker.data / "tracker.db")
    (raw,) = db.execute("SELECT envelope FROM manifests WHERE ref = ?", ("myapp:tampered",)).fetchone()
    envelope = SignedManifest.from_bytes(raw)
    manifest = Manifest.from_bytes(envelope.manifest)
    evil = Manifest(manifest.repository, manifest.tag, manifest.config.replace(b"busybox", b"evilbox")
                    if b"busybox" in manifest.config else manifest.config + b" ", manifest.layers,
                    manifest.key_id, manifest.created)
    forged = SignedManifest(evil.to_bytes(), envelope.signature, envelope.public_key)
    with db:
        db.execute("UPDATE manifests SET envelope = ? WHERE ref = ?", (forged.to_bytes(), "myapp:tampered"))
    db.close()

    host = fleet.hosts[1]
    before = {t["info_hash"] for t in host.status()["torrents"]}
    result = host.swarm("pull", "myapp:tampered", check=False)
    assert result.returncode == 1
    assert "signature does not verify" in result.stderr
    assert {t["info_hash"] for t in host.status()["torrents"]} == before
    with pytest.raises(docker.errors.ImageNotFound):
        fleet.api(host.name).inspect_image("myapp:tampered")


def test_manifest_signed_by_an_untrusted_key_is_refused(fleet: Fleet) -> None:
    rogue_key = fleet.root / "rogue.key"
    rogue_pub = run_swarm("keygen", str(rogue_key)).stdout.strip()
    root = fleet.root / "untrusting"
    host = Agent.start(root, "host3", fleet.tracker.url, fleet.tracker.token("host3", "host"),
                       "--trust", rogue_pub, "--docker-host", fleet.docker_hosts["host2"])
    try:
        result = host.swarm("pull", "myapp:1", check=False)
        assert result.returncode == 1
        assert "untrusted key" in result.stderr
        status = host.status()
        assert status["torrents"] == [] and status["images"] == []
    finally:
        host.stop()


def test_host_token_cannot_publish(fleet: Fleet, pulled: Pulled) -> None:
    host = fleet.hosts[0]
    result = host.swarm("seed", "myapp:1", "--key", str(fleet.key), check=False)
    assert result.returncode == 1
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert "builder" in result.stderr.lower() or "forbidden" in result.stderr.lower()


def test_agent_with_an_unknown_token_is_refused(fleet: Fleet) -> None:
    good = fleet.tracker.token("victim", "host")
    forged = "swarm1." + "0" * 40 + good[len("swarm1.") + 40:]
    result = run_swarm("agent", "--tracker", fleet.tracker.url, "--token", forged,
                       "--data", str(fleet.root / "forged"), "--listen", "127.0.0.1:0", check=False, timeout=60)
    assert result.returncode == 1
    assert "error:" in result.stderr and "refused the join token" in result.stderr
    assert not (fleet.root / "forged" / "identity" / "host.pem").exists()


def test_agent_with_unreachable_tracker_or_docker_fails_cleanly(fleet: Fleet, tmp_path: Path) -> None:
    token = fleet.tracker.token("lonely", "host")
    result = run_swarm("agent", "--tracker", "http://127.0.0.1:9", "--token", token, "--tracker-wait", "1",
                       "--data", str(tmp_path / "a"), "--listen", "127.0.0.1:0", check=False, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: tracker unreachable at http://127.0.0.1:9")
    result = run_swarm("agent", "--tracker", fleet.tracker.url, "--token", token, "--data", str(tmp_path / "b"),
                       "--listen", "127.0.0.1:0", "--docker-host", f"unix://{tmp_path}/no.sock",
                       check=False, timeout=60)
    assert result.returncode == 1
    assert "error:" in result.stderr.splitlines()[-1] and "Docker" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("with_cert", [False, True], ids=["no-certificate", "foreign-ca-certificate"])
def test_outsider_with_stolen_torrent_gets_zero_bytes(fleet: Fleet, pulled: Pulled, tmp_path: Path,
                                                      with_cert: bool) -> None:
    envelope = next((fleet.builder.data / "manifests").glob("*.msgpack")).read_bytes()
    manifest = SignedManifest.from_bytes(envelope).verify(None)
    biggest = max(manifest.layers, key=lambda layer: layer.blob_size)
    peers = [("127.0.0.1", a.peer_port) for a in (fleet.builder, *fleet.hosts)]
    downloaded, pieces, refused = steal(biggest.torrent, peers, tmp_path, with_cert)
    assert refused == len(peers), "every peer must have dropped the outsider"
    assert downloaded == 0 and pieces == 0


def test_no_secret_at_rest_or_in_any_log_and_owner_only_modes(fleet: Fleet, pulled: Pulled) -> None:
    """Attack: a local user reads the agents' data dirs and every log after a real pull (resume files included)."""
    host = fleet.hosts[1]
    assert host.stop() == 0  # a clean stop writes resume data
    assert list((host.data / "resume").glob("*.resume"))
    agents = [fleet.builder, *fleet.hosts]
    secrets = [JoinToken.parse(a.args[a.args.index("--token") + 1]).secret.encode() for a in agents]
    files = [p for a in agents for p in a.data.rglob("*")] + list((fleet.root / "logs").glob("*"))
    assert len(files) > 10
    for path in files:
        if path.is_file() and not path.is_symlink():
            body = path.read_bytes()
            assert not any(s in body for s in secrets), path
    for agent in agents:
        for path in [agent.data, *agent.data.rglob("*")]:
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode):
                assert stat.S_IMODE(mode) & 0o077 == 0, (path, oct(mode))
