"""The agent run unattended: crash-safe resume, graceful stop, layer dedupe,
cache budget, preheat, bandwidth limits, Docker outages, a full disk, metrics.

Real agent processes, a real tracker process, real dockerds.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from swarm.images.synthetic import build_image, payload, run_image
from tests.support.bt import free_port
from tests.support.dockerd import Dockerd, stop_all
from tests.support.procs import SWARM, Agent, Proc, Tracker, run_swarm, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MIB = 1024 * 1024
BASE = 8 * MIB
BIG = 10 * MIB


@dataclass
class Bed:
    root: Path
    tracker: Tracker
    key: Path
    pubkey: str
    builder: Agent
    builder_engine: Dockerd
    blobs: dict[str, list[str]]      # image -> blob digests

    def host(self, name: str, engine: Dockerd, *extra: str, wait: bool = True) -> Agent:
        return Agent.start(self.root, name, self.tracker.url, self.tracker.token(name, "host"),
                           "--trust", self.pubkey, "--docker-host", engine.host, *extra, wait=wait)

    def seed(self, image: str) -> None:
        self.builder.swarm("seed", image, "--key", str(self.key))
        self.blobs[image] = _blobs_of(self.tracker, image)


def _blobs_of(tracker: Tracker, image: str) -> list[str]:
    import sqlite3

    from swarm.core.signing import SignedManifest
    db = sqlite3.connect(tracker.data / "tracker.db")
    (raw,) = db.execute("SELECT envelope FROM manifests WHERE ref = ?", (image,)).fetchone()
    db.close()
    return [layer.blob for layer in SignedManifest.from_bytes(raw).verify(None).layers]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    root = tmp_path_factory.mktemp("prod")
    engine = Dockerd().start()
    tracker = Tracker.start(root)
    key = root / "builder.key"
    pubkey = run_swarm("keygen", str(key)).stdout.strip()
    api = engine.api()
    build_image(api, "prod/app:1", [{"/base.bin": payload(BASE, seed=11)}, {"/one.bin": payload(200_000, seed=12)},
                                    {"/hello.txt": b"one\n"}], cmd=["/bin/busybox", "cat", "/hello.txt"])
    build_image(api, "prod/app:2", [{"/base.bin": payload(BASE, seed=11)}, {"/two.bin": payload(200_000, seed=13)},
                                    {"/hello.txt": b"two\n"}], cmd=["/bin/busybox", "cat", "/hello.txt"])
    build_image(api, "prod/big:1", [{"/big.bin": payload(BIG, seed=21)}, {"/hello.txt": b"big\n"}],
                cmd=["/bin/busybox", "cat", "/hello.txt"])
    builder = Agent.start(root, "builder1", tracker.url, tracker.token("builder1", "builder"),
                          "--docker-host", engine.host)
    bed = Bed(root, tracker, key, pubkey, builder, engine, {})
    try:
        for image in ("prod/app:1", "prod/app:2", "prod/big:1"):
            bed.seed(image)
        yield bed
    finally:
        builder.stop()
        tracker.proc.stop()
        stop_all([engine])


def received(agent: Agent) -> int:
    return sum(p["downloaded"] for t in agent.status()["torrents"] for p in t["peers"])


def image_id(engine: Dockerd, ref: str) -> str | None:
    try:
        return str(engine.api().inspect_image(ref)["Id"])
    except docker.errors.ImageNotFound:
        return None


def builder_id(bed: Bed, ref: str) -> str:
    found = image_id(bed.builder_engine, ref)
    assert found
    return found


def big_torrent(agent: Agent, bed: Bed) -> dict[str, Any] | None:
    blob = bed.blobs["prod/big:1"][0]
    for t in agent.status()["torrents"]:
        if t["blob"] == blob:
            return t
    return None


def test_kill_9_mid_download_resumes_without_refetching_verified_pieces(bed: Bed, dockerd_factory: Any) -> None:
    engine = dockerd_factory()
    host = bed.host("crashy", engine, "--download-limit", "2MB/s")
    pull = Proc("pull", [*SWARM, "pull", "prod/big:1", "--data", str(host.data)], bed.root / "logs" / "pull.log")
    pull.start()
    torrent = wait_for(lambda: (t := big_torrent(host, bed)) and t["done"] > 0.4 * t["total"] and t,
                       60, "the download to pass 40%")
    host.proc.stop(signal.SIGKILL)
    pull.stop()
    done_before = torrent["done"]
    total = torrent["total"]

    restarted = Agent.start(bed.root / "again", "crashy", bed.tracker.url, "unused", wait=False)
    restarted.data, restarted.proc = host.data, Proc("crashy-2", host.args, bed.root / "logs" / "crashy-2.log")
    restarted.proc.start()
    restarted.proc.wait_line(r"agent ready")
    assert "did not stop cleanly" in restarted.proc.text()
    # nobody runs `swarm pull` again: the agent resumes the pull that was in flight
    wait_for(lambda: image_id(engine, "prod/big:1"), 120, "the resumed pull to load the image")
    assert image_id(engine, "prod/big:1") == builder_id(bed, "prod/big:1")
    after = big_torrent(restarted, bed)
    assert after is not None
    # this run downloaded only what was missing (pieces in flight at the kill may come again)
    assert after["downloaded"] <= total - done_before + 2 * MIB, (after["downloaded"], done_before, total)
    restarted.stop()


def test_sigterm_saves_resume_data_and_cleans_up(bed: Bed, dockerd_factory: Any) -> None:
    engine = dockerd_factory()
    host = bed.host("graceful", engine)
    host.swarm("pull", "prod/app:1")
    assert host.stop() == 0
    assert not (host.data / "agent.sock").exists()
    assert not (host.data / "agent.running").exists()
    assert list((host.data / "resume").glob("*.resume")), "resume data saved at shutdown"
    # started again, it knows what it holds and seeds it without re-downloading
    again = Proc("graceful-2", host.args, bed.root / "logs" / "graceful-2.log").start()
    again.wait_line(r"agent ready")
    assert "did not stop cleanly" not in again.text()
    restarted = Agent("graceful", host.data, again, host.args)
    status = restarted.status()
    assert {t["state"] for t in status["torrents"]} <= {"seeding", "finished"} and status["torrents"]
    assert restarted.stop() == 0


def test_second_signal_exits_at_once(bed: Bed, dockerd_factory: Any) -> None:
    host = bed.host("impatient", dockerd_factory())
    assert host.proc.popen is not None
    host.proc.popen.send_signal(signal.SIGTERM)
    host.proc.popen.send_signal(signal.SIGTERM)
    assert host.proc.popen.wait(10) in (0, 1)


def test_shared_layers_cross_the_network_once(bed: Bed, dockerd_factory: Any) -> None:
    engine = dockerd_factory()
    host = bed.host("dedupe", engine)
    host.swarm("pull", "prod/app:1")
    first = received(host)
    host.swarm("pull", "prod/app:2")
    second = received(host) - first
    shared = set(bed.blobs["prod/app:1"]) & set(bed.blobs["prod/app:2"])
    assert len(shared) >= 2                         # busybox and the 8 MiB base
    assert first > BASE * 0.9
    assert second < MIB, f"the second image fetched {second} bytes; only its own small layers were new"
    assert run_image(engine.api(), "prod/app:2") == b"two\n"
    blob_files = [p.name for p in (host.data / "blobs").iterdir() if len(p.name) == 64]
    assert len(blob_files) == len(set(bed.blobs["prod/app:1"]) | set(bed.blobs["prod/app:2"]))


def test_cache_budget_evicts_least_recently_used_and_survives_restart(bed: Bed, dockerd_factory: Any) -> None:
    engine = dockerd_factory()
    host = bed.host("tight", engine, "--cache-size", "12MB", "--min-seed-time", "0")
    host.swarm("pull", "prod/app:1")
    host.swarm("pull", "prod/big:1")
    app_blobs = set(bed.blobs["prod/app:1"]) - set(bed.blobs["prod/big:1"])
    on_disk = {"sha256:" + p.name for p in (host.data / "blobs").iterdir() if len(p.name) == 64}
    assert not (app_blobs & on_disk), "the older image's blobs were evicted"
    assert set(bed.blobs["prod/big:1"]) <= on_disk, "the newest image's blobs stay"
    status = host.status()
    assert status["cache"]["bytes"] <= 12_000_000
    assert {t["blob"] for t in status["torrents"]} == set(bed.blobs["prod/big:1"])
    host.stop()
    again = Agent("tight", host.data, Proc("tight-2", host.args, bed.root / "logs" / "tight-2.log").start(),
                  host.args)
    again.proc.wait_line(r"agent ready")
    assert again.status()["cache"]["bytes"] == status["cache"]["bytes"]
    again.stop()


def test_cache_never_evicts_recently_pulled_images(bed: Bed, dockerd_factory: Any) -> None:
    host = bed.host("protective", dockerd_factory(), "--cache-size", "1MB", "--min-seed-time", "3600")
    host.swarm("pull", "prod/app:1")
    status = host.status()
    assert status["cache"]["over_budget"] > 0
    assert {t["blob"] for t in status["torrents"]} == set(bed.blobs["prod/app:1"])


def test_preheat_pulls_tags_published_after_the_agent_started(bed: Bed, dockerd_factory: Any) -> None:
    engine = dockerd_factory()
    host = bed.host("preheated", engine, "--watch", "preheat/*")
    assert host.status()["images"] == []
    bed.builder_engine.api().tag("prod/app:1", "preheat/app", "7")
    bed.seed("preheat/app:7")
    wait_for(lambda: image_id(engine, "preheat/app:7"), 90, "the watched tag to be loaded")
    assert image_id(engine, "preheat/app:7") == builder_id(bed, "prod/app:1")
    assert image_id(engine, "prod/big:1") is None, "tags not matching the pattern are left alone"


def test_watch_after_a_restart_pulls_only_the_newest_tag_of_each_repository(bed: Bed, dockerd_factory: Any) -> None:
    for tag, source in (("1", "prod/app:1"), ("2", "prod/app:2")):
        bed.builder_engine.api().tag(source, "history/app", tag)
        bed.seed(f"history/app:{tag}")
    engine = dockerd_factory()
    host = bed.host("latecomer", engine, "--watch", "history/*")
    wait_for(lambda: image_id(engine, "history/app:2"), 90, "the newest tag to be loaded")
    assert host.proc.text().count("watch: history/app:") == 1, host.proc.text()
    assert image_id(engine, "history/app:1") is None, "an older tag of the same repository is not pulled"


def test_download_limit_is_honoured(bed: Bed, dockerd_factory: Any) -> None:
    host = bed.host("throttled", dockerd_factory(), "--download-limit", "2MB/s")
    started = time.monotonic()
    host.swarm("pull", "prod/big:1")
    elapsed = time.monotonic() - started
    got = received(host)
    assert got >= BIG * 0.9
    rate = got / elapsed
    assert rate <= 2_000_000 * 1.10, f"{rate / 1e6:.2f} MB/s over a 2 MB/s limit"
    assert rate >= 2_000_000 * 0.5, f"{rate / 1e6:.2f} MB/s: the transfer should run near its limit"

def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


def test_metrics_count_pulls_bytes_and_cache(bed: Bed, dockerd_factory: Any) -> None:
    port = free_port()
    host = bed.host("measured", dockerd_factory(), "--metrics-listen", f"127.0.0.1:{port}")
    host.swarm("pull", "prod/app:1")
    host.swarm("pull", "nosuch:1", check=False)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert metric(text, 'swarm_agent_pulls_total{outcome="started"}') == 2
    assert metric(text, 'swarm_agent_pulls_total{outcome="completed"}') == 1
    assert metric(text, 'swarm_agent_pulls_total{outcome="failed"}') == 1
    assert metric(text, "swarm_agent_pull_duration_seconds_count") == 1
    # other hosts of this module seed prod/app:1 too: bytes come from the builder and from them
    from_builder = metric(text, 'swarm_agent_received_bytes_total{source="builder"}')
    from_hosts = metric(text, 'swarm_agent_received_bytes_total{source="host"}')
    assert from_builder + from_hosts >= BASE * 0.9
    assert metric(text, "swarm_agent_cache_bytes") >= BASE * 0.9
    assert metric(text, "swarm_agent_pieces_failed_hash_total") == 0


def test_docker_down_during_pull_waits_and_loads_when_it_returns(bed: Bed, tmp_path: Path) -> None:
    engine = Dockerd(Path(f"/tmp/swd-restart-{os.getpid()}")).start()
    try:
        host = bed.host("patient", engine)
        engine.stop()
        pull = subprocess.Popen([*SWARM, "pull", "prod/app:1", "--data", str(host.data)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: any(p["stage"] == "waiting-for-docker" for p in host.status()["pulls"]), 60,
                 "the pull to wait for Docker")
        engine.start()
        out, err = pull.communicate(timeout=120)
        assert pull.returncode == 0, err
        assert image_id(engine, "prod/app:1") == builder_id(bed, "prod/app:1")
        host.stop()
    finally:
        engine.stop()
        shutil.rmtree(engine.dir, ignore_errors=True)


@pytest.mark.parametrize("when", ["before", "during"])
def test_disk_full_fails_the_pull_cleanly_and_the_agent_keeps_running(bed: Bed, dockerd_factory: Any,
                                                                       tmp_path: Path, when: str) -> None:
    """`before`: the blobs cannot fit, refused up front; `during`: the disk fills mid-download."""
    data = tmp_path / "full"
    data.mkdir()
    size = "6m" if when == "before" else "16m"
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(data)], check=True)
    try:
        limit = ("--download-limit", "3MB/s") if when == "during" else ()
        host = Agent.start(tmp_path, "full", bed.tracker.url, bed.tracker.token(f"full-{when}", "host"),
                           "--trust", bed.pubkey, "--docker-host", dockerd_factory().host, *limit)
        pull = subprocess.Popen([*SWARM, "pull", "prod/big:1", "--data", str(data)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if when == "during":
            wait_for(lambda: (t := big_torrent(host, bed)) and t["done"] > MIB, 60, "the download to start")
            with open(data / "filler", "wb") as filler:
                os.posix_fallocate(filler.fileno(), 0, shutil.disk_usage(data).free)
        _out, err = pull.communicate(timeout=120)
        assert pull.returncode == 1
        assert "no space left" in err.lower(), err
        status = host.status()                       # still answering
        assert status["torrents"] == []
        leftovers = [p.name for p in (data / "blobs").iterdir() if len(p.name) == 64]
        assert leftovers == [], "no partial blob is left behind"
        assert not list((data / "resume").iterdir())
        assert host.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)
