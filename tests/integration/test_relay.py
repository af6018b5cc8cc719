"""A relay (`swarm agent --relay`): a Docker-free seeder that preheats and then serves a host alone.

Real tracker over HTTP, a real builder agent with its own dockerd, a relay agent with no dockerd at
all (its --docker-host points at nothing), and a host with its own dockerd. The relay pulls the
image through --watch; the builder is then stopped, so every byte the host gets comes from the relay.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from swarm.images.synthetic import build_image, payload, run_image
from tests.support.dockerd import Dockerd, stop_all
from tests.support.procs import Agent, Tracker, run_swarm, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HELLO = "served by the relay\n"
BIG = 4 * 1024 * 1024
NO_DOCKER = "unix:///nonexistent/docker.sock"


@dataclass
class Bed:
    root: Path
    tracker: Tracker
    admin: str
    engines: dict[str, Dockerd]
    builder: Agent
    relay: Agent
    builder_id: str
    pubkey: str

    def rollout(self, ref: str) -> dict[str, Any]:
        out = run_swarm("rollout", "status", ref, "--json", "--tracker", self.tracker.url, "--token", self.admin)
        view: dict[str, Any] = json.loads(out.stdout)
        return view


def _relay_cached(relay: Agent, ref: str) -> bool:
    status = relay.status()
    return not status["pulls"] and any(i["ref"] == ref and i["cache"] == "cached" for i in status["images"])


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    root = tmp_path_factory.mktemp("relay")
    engines = {name: Dockerd().start() for name in ("builder1", "host1")}
    tracker = Tracker.start(root)
    agents: list[Agent] = []
    try:
        key = root / "builder.key"
        pubkey = run_swarm("keygen", str(key)).stdout.strip()
        api = docker.APIClient(base_url=engines["builder1"].host)
        build_image(api, "myapp:1", [{"/data/big.bin": payload(BIG, seed=7)}, {"/hello.txt": HELLO.encode()}],
                    cmd=["/bin/busybox", "cat", "/hello.txt"])
        builder = Agent.start(root, "builder1", tracker.url, tracker.token("builder1", "builder", "--key", pubkey),
                              "--docker-host", engines["builder1"].host)
        agents.append(builder)
        relay = Agent.start(root, "relay1", tracker.url, tracker.token("relay1", "host"), "--trust", pubkey,
                            "--relay", "--watch", "myapp:*", "--docker-host", NO_DOCKER)
        agents.append(relay)
        builder.swarm("seed", "myapp:1", "--key", str(key))
        wait_for(lambda: _relay_cached(relay, "myapp:1"), 120, "the relay to cache myapp:1 through --watch")
        yield Bed(root, tracker, tracker.token("ops", "admin"), engines, builder, relay,
                  api.inspect_image("myapp:1")["Id"], pubkey)
    finally:
        for agent in agents:
            agent.stop()
        tracker.proc.stop()
        stop_all(list(engines.values()))


def test_relay_caches_verifies_and_seeds_without_docker(bed: Bed) -> None:
    status = bed.relay.status()
    assert status["relay"] is True
    assert [(i["ref"], i["image_id"], i["cache"]) for i in status["images"]] == [("myapp:1", bed.builder_id, "cached")]
    assert status["torrents"] and {t["state"] for t in status["torrents"]} == {"seeding"}
    assert "relay1 (host, relay)" in bed.relay.swarm("status").stdout
    log = bed.relay.proc.text()
    assert "myapp:1 cached as" in log and "waiting-for-docker" not in log, log
    again = bed.relay.swarm("pull", "myapp:1")  # pulling on a relay again: cached, nothing loaded
    assert f"myapp:1 {bed.builder_id}" in again.stdout
    assert "cached and seeding (relay, not loaded into Docker)" in again.stderr


def test_seed_on_a_relay_fails_in_one_line(bed: Bed) -> None:
    key = bed.root / "other.key"
    run_swarm("keygen", str(key))
    result = bed.relay.swarm("seed", "myapp:1", "--key", str(key), check=False)
    assert result.returncode != 0
    assert "this agent is a relay" in result.stderr and "Traceback" not in result.stderr


def _received(agent: Agent) -> dict[str, int]:
    by_peer: dict[str, int] = {}
    for torrent in agent.status()["torrents"]:
        for peer in torrent["peers"]:
            by_peer[peer["name"]] = by_peer.get(peer["name"], 0) + peer["downloaded"]
    return by_peer


def test_host_gets_every_byte_from_the_relay_once_the_builder_is_gone(bed: Bed) -> None:
    view = wait_for(lambda: (v := bed.rollout("myapp:1"))["hosts"] and v, 60, "the relay's report")
    (relay_row,) = view["hosts"]
    assert (relay_row["host"], relay_row["state"], relay_row["current"]) == ("relay1", "cached", True)
    assert relay_row["receipt"] is False
    assert (view["loaded"], view["total"], view["missing"]) == (0, 0, [])  # a relay is not a host to wait for

    bed.builder.stop()
    host = Agent.start(bed.root, "host1", bed.tracker.url, bed.tracker.token("host1", "host"),
                       "--trust", bed.pubkey, "--docker-host", bed.engines["host1"].host)
    try:
        pulled = host.swarm("pull", "myapp:1", timeout=240)
        assert f"myapp:1 {bed.builder_id}" in pulled.stdout
        api = docker.APIClient(base_url=bed.engines["host1"].host)
        assert api.inspect_image("myapp:1")["Id"] == bed.builder_id
        assert run_image(api, "myapp:1").decode() == HELLO
        got = _received(host)
        assert got.get("relay1", 0) >= BIG * 0.9 and got.get("builder1", 0) == 0, got

        def host_loaded() -> dict[str, Any] | None:
            v = bed.rollout("myapp:1")
            return v if v["loaded"] == 1 else None

        view = wait_for(host_loaded, 60, "host1's loaded report")
        assert (view["loaded"], view["total"], view["missing"]) == (1, 1, [])
        states = {h["host"]: h["state"] for h in view["hosts"]}
        assert states == {"relay1": "cached", "host1": "loaded"}
        waited = run_swarm("rollout", "wait", "myapp:1", "--percent", "100", "--timeout", "30s",
                           "--tracker", bed.tracker.url, "--token", bed.admin)
        assert waited.returncode == 0
    finally:
        host.stop()

