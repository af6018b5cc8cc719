"""Pull and cache correctness, as an operator sees it: exit codes when the agent dies under a
waiting command, status that matches the disk, no re-download of what Docker already holds,
a cache budget that is kept without noise, and pull progress at a terminal, in a pipe, as JSON.

Real agent processes, a real tracker process, real dockerds (the bed of test_agent_production).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_agent_production import (  # noqa: F401  (bed: a module fixture)
    MIB, Bed, bed, big_torrent, builder_id, free_port, image_id, metric,
)
from swarm.cli.progress import PLAIN_EVERY
from tests.support.procs import SWARM, Agent, wait_for
from tests.support.terminal import DRAWING, run_in_pty

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _received_total(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(metric(text, f'swarm_agent_received_bytes_total{{source="{s}"}}') for s in ("builder", "host"))


def _metrics(port: int) -> str:
    return str(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_pull_exits_1_when_the_agent_dies_under_it(bed: Bed, dockerd_factory: Any, sig: int) -> None:
    host = bed.host(f"dying-{sig}", dockerd_factory(), "--download-limit", "1MB/s")
    pull = subprocess.Popen([*SWARM, "pull", "prod/big:1", "--data", str(host.data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (t := big_torrent(host, bed)) and t["done"] > 0, 60, "the download to start")
    host.proc.stop(sig)
    out, err = pull.communicate(timeout=60)
    assert pull.returncode == 1, (out, err)
    assert "error:" in err and "Traceback" not in err, err
    assert out == ""


def test_seed_exits_1_when_the_agent_dies_under_it(bed: Bed, tmp_path: Path) -> None:
    builder = Agent.start(tmp_path, "doomed-builder", bed.tracker.url, bed.tracker.token("doomed-builder", "builder"),
                          "--docker-host", bed.builder_engine.host)
    # the agent reads the archive from a pipe that stays empty: `seed` is surely waiting on the agent
    fifo = tmp_path / "archive.tar"
    os.mkfifo(fifo)
    held = os.open(fifo, os.O_RDWR)
    try:
        seed = subprocess.Popen([*SWARM, "seed", "prod/app:1", "--key", str(bed.key), "--from-archive", str(fifo),
                                 "--data", str(builder.data)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: _has_open(builder, fifo), 30, "the agent to open the archive")
        builder.proc.stop(signal.SIGKILL)
        out, err = seed.communicate(timeout=60)
    finally:
        os.close(held)
    assert seed.returncode == 1, (out, err)
    assert "error:" in err and "Traceback" not in err, err
    assert out == ""


def _has_open(agent: Agent, path: Path) -> bool:
    assert agent.proc.popen is not None
    fds = Path(f"/proc/{agent.proc.popen.pid}/fd")
    return any(os.readlink(fd) == str(path) for fd in fds.iterdir())


def _images(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {img["ref"]: img for img in status["images"]}


def _on_disk(agent: Agent) -> set[str]:
    return {"sha256:" + p.name for p in (agent.data / "blobs").iterdir() if len(p.name) == 64}


def _downloading(agent: Agent, blob: str) -> dict[str, Any] | None:
    """The agent's status while `blob` is part-way down, else None."""
    status = agent.status()
    for t in status["torrents"]:
        if t["blob"] == blob and 0 < t["done"] < t["total"]:
            return status
    return None


def test_evicted_image_still_in_docker_is_not_downloaded_again(bed: Bed, dockerd_factory: Any) -> None:
    port = free_port()
    engine = dockerd_factory()
    host = bed.host("evicting", engine, "--cache-size", "12MB", "--min-seed-time", "0",
                    "--download-limit", "2MB/s", "--metrics-listen", f"127.0.0.1:{port}")
    host.swarm("pull", "prod/app:1")
    app_only = set(bed.blobs["prod/app:1"]) - set(bed.blobs["prod/big:1"])
    shared = set(bed.blobs["prod/app:1"]) & set(bed.blobs["prod/big:1"])
    assert shared, "busybox is in both"

    # the download reserves its full size when it starts: room is made before it runs, not after
    pull = subprocess.Popen([*SWARM, "pull", "prod/big:1", "--data", str(host.data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = wait_for(lambda: _downloading(host, bed.blobs["prod/big:1"][1]), 60,
                       "the download of prod/big:1 to be under way")
    base = bed.blobs["prod/app:1"][1]
    assert base in app_only and base not in _on_disk(host), \
        "the 8 MiB base of prod/app:1 was evicted before the download could run the cache over budget"
    assert running["cache"]["bytes"] <= 12_000_000
    assert running["cache"]["reserved"] >= 10 * MIB and running["cache"]["over_budget"] == 0
    assert pull.wait(120) == 0

    # status matches the disk: prod/app:1 keeps only the blob it shares with prod/big:1
    images = _images(host.status())
    assert images["prod/big:1"]["cache"] == "cached"
    assert images["prod/big:1"]["cached_blobs"] == images["prod/big:1"]["blobs"] == len(set(bed.blobs["prod/big:1"]))
    app = images["prod/app:1"]
    assert (app["cache"], app["cached_blobs"], app["blobs"]) == ("partial", len(shared), len(set(bed.blobs["prod/app:1"])))
    human = host.swarm("status").stdout
    assert f"{len(shared)} of {app['blobs']} blobs" in human and "OVER BUDGET" not in human

    # Docker still holds prod/app:1 under the same image id: back at once, nothing fetched
    before = _received_total(port)
    again = host.swarm("pull", "prod/app:1")
    assert again.stdout == f"prod/app:1 {builder_id(bed, 'prod/app:1')}\n"
    assert "already in Docker" in again.stderr and "--seed" in again.stderr
    assert _received_total(port) == before
    assert _images(host.status())["prod/app:1"]["cache"] == "partial"

    # --seed fetches what is missing, so this host serves the image again
    seeded = host.swarm("pull", "--seed", "prod/app:1")
    assert "already in Docker" not in seeded.stderr
    assert _received_total(port) - before > 8 * MIB * 0.9
    assert _images(host.status())["prod/app:1"]["cache"] == "cached"
    assert app_only <= _on_disk(host)
    assert image_id(engine, "prod/app:1") == builder_id(bed, "prod/app:1")


def test_over_budget_is_logged_when_it_starts_and_ends_not_on_every_eviction(bed: Bed,
                                                                              dockerd_factory: Any) -> None:
    port = free_port()
    # recently pulled images are kept: over budget and nothing to evict, for as long as it lasts
    stuck = bed.host("stuck", dockerd_factory(), "--cache-size", "1MB", "--min-seed-time", "3600",
                     "--metrics-listen", f"127.0.0.1:{port}")
    stuck.swarm("pull", "prod/app:1")
    stuck.swarm("pull", "prod/app:2")     # four evictions so far: at each pull's start and end
    assert stuck.proc.text().count("cache: over budget by") == 1
    assert "back within budget" not in stuck.proc.text()
    assert metric(_metrics(port), "swarm_agent_cache_over_budget_bytes") > 0
    assert "OVER BUDGET by" in stuck.swarm("status").stdout
    assert stuck.status()["cache"]["over_budget"] > 0

    # a download larger than the budget: over budget while it runs, back within when it is evicted
    port = free_port()
    small = bed.host("small", dockerd_factory(), "--cache-size", "5MB", "--min-seed-time", "0",
                     "--metrics-listen", f"127.0.0.1:{port}")
    small.swarm("pull", "prod/big:1")
    small.swarm("pull", "--seed", "prod/big:1")
    log = small.proc.text()
    assert log.count("cache: over budget by") == 2, log
    assert log.count("cache: back within budget") == 2, log
    assert metric(_metrics(port), "swarm_agent_cache_over_budget_bytes") == 0
    assert metric(_metrics(port), "swarm_agent_cache_evicted_blobs_total") >= 2
    assert small.status()["cache"]["bytes"] <= 5_000_000


# -- progress, as a person at a terminal, a log file and a script see it ---------------------------


def _layer_ids(bed: Bed, ref: str) -> list[str]:
    return [blob[7:19] for blob in dict.fromkeys(bed.blobs[ref])]


def test_pull_progress_at_a_terminal(bed: Bed, dockerd_factory: Any) -> None:
    host = bed.host("watched", dockerd_factory(), "--download-limit", "2MB/s")
    code, screen = run_in_pty([*SWARM, "pull", "prod/big:1", "--data", str(host.data)])
    assert code == 0, screen
    assert "\x1b[" in screen, "drawn in place"
    for short in _layer_ids(bed, "prod/big:1"):
        assert short in screen
    assert "10.0 MiB" in screen                      # the big layer's size on its row
    assert re.search(r"downloading .* of .*MiB \(\d+%\), [0-9.]+ [KM]iB/s, ETA \d+:\d\d, 1 peer", screen), screen
    for stage in ("verifying sha256", "loading into Docker", "done"):
        assert stage in screen
    for word in ("checking-resume", "downloading-metadata", "seeding"):   # libtorrent's words stay inside
        assert word not in screen
    assert f"prod/big:1 {builder_id(bed, 'prod/big:1')}" in screen


def test_pull_progress_in_a_pipe_is_plain_lines(bed: Bed, dockerd_factory: Any) -> None:
    host = bed.host("logged", dockerd_factory(), "--download-limit", "2MB/s")
    started = time.monotonic()
    result = host.swarm("pull", "prod/big:1")
    elapsed = time.monotonic() - started
    err = result.stderr
    assert not DRAWING & set(err) and "\x1b" not in err, err
    lines = err.splitlines()
    assert all(line.startswith("prod/big:1: ") for line in lines), lines
    assert all(short in lines[0] for short in _layer_ids(bed, "prod/big:1")) and "10.0 MiB" in lines[0]
    downloading = [line for line in lines if re.search(r": downloading .* ETA .*, 1 peer$", line)]
    assert 1 <= len(downloading) <= elapsed / PLAIN_EVERY + 2, lines
    stages = [line.split(": ", 1)[1] for line in lines if line not in downloading][1:]
    assert stages == ["verifying sha256", "loading into Docker", "done"], lines
    assert result.stdout == f"prod/big:1 {builder_id(bed, 'prod/big:1')}\n"


def test_pull_json_progress_events(bed: Bed, dockerd_factory: Any) -> None:
    host = bed.host("scripted", dockerd_factory(), "--download-limit", "4MB/s")
    result = host.swarm("pull", "--json", "prod/big:1")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["stage"] for e in progress if e["stage"] != "downloading"][-3:] == ["verifying", "loading", "done"]
    assert any(e["stage"] == "downloading" and 0 < e["done"] < e["total"] and e["eta"] is not None
               for e in progress)
    assert {layer["id"] for layer in progress[-1]["layers"]} == set(_layer_ids(bed, "prod/big:1"))
    assert events[-1] == {"event": "pulled", "ref": "prod/big:1", "image_id": builder_id(bed, "prod/big:1"),
                          "outcome": "loaded", "seeding": True}
    assert result.stderr == ""
