"""A host that trusts only a root key, against a tampered tracker and through a builder key rotation.

Real tracker process, real agents (libtorrent), real dockerds. The tracker's database is edited
directly to play a compromised tracker that serves an older, validly signed manifest.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from swarm.images.synthetic import build_image
from tests.support.dockerd import Dockerd, stop_all
from tests.support.procs import Agent, Tracker, run_swarm, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@dataclass
class Bed:
    root: Path
    tracker: Tracker
    root_key: Path
    keys: dict[str, tuple[Path, str]]  # name -> (private key file, public key)
    builder: Agent
    host: Agent
    host_token: str
    host_args: list[str]
    engines: dict[str, str]

    def api(self, name: str) -> docker.APIClient:
        return docker.APIClient(base_url=self.engines[name])

    def publish_keys(self, version: int, *names: str) -> None:
        spec = self.root / f"keys-{version}.json"
        spec.write_text(json.dumps({"version": version, "keys": [
            {"key": self.keys[n][1], "repositories": ["myapp"], "expires": "2099-01-01"} for n in names]}))
        out = self.root / f"keys-{version}.msgpack"
        run_swarm("keys", "sign", str(spec), "--root-key", str(self.root_key), "--out", str(out))
        run_swarm("tracker", "keys", "publish", str(out), "--data", str(self.tracker.data))

    def seed(self, ref: str, key: str, content: bytes) -> str:
        build_image(self.api("builder"), ref, [{"/v.txt": content}], cmd=["/bin/busybox", "cat", "/v.txt"])
        self.builder.swarm("seed", ref, "--key", str(self.keys[key][0]))
        return str(self.api("builder").inspect_image(ref)["Id"])

    def host_id(self, ref: str) -> str:
        return str(self.api("host").inspect_image(ref)["Id"])


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    root = tmp_path_factory.mktemp("trust")
    dockerds = [Dockerd().start() for _ in range(2)]
    engines = {"builder": dockerds[0].host, "host": dockerds[1].host}
    tracker = Tracker.start(root)
    root_key = root / "root.key"
    root_pub = run_swarm("keygen", str(root_key)).stdout.strip()
    keys = {}
    for name in ("old", "new"):
        path = root / f"{name}.key"
        keys[name] = (path, run_swarm("keygen", str(path)).stdout.strip())
    agents: list[Agent] = []
    try:
        builder = Agent.start(root, "builder1", tracker.url,
                              tracker.token("builder1", "builder", "--key", keys["old"][1], "--publish", "myapp"),
                              "--docker-host", engines["builder"])
        agents.append(builder)
        host_args = ["--trust-root", root_pub, "--watch", "myapp:prod", "--docker-host", engines["host"]]
        host_token = tracker.token("host1", "host")
        host = Agent.start(root, "host1", tracker.url, host_token, *host_args)
        agents.append(host)
        b = Bed(root, tracker, root_key, keys, builder, host, host_token, host_args, engines)
        b.publish_keys(1, "old")
        yield b
    finally:
        for agent in [*agents, b.host] if "b" in locals() else agents:
            agent.stop()
        tracker.proc.stop()
        stop_all(dockerds)


def test_hosts_follow_a_builder_key_rotation_without_restart(bed: Bed) -> None:
    # signed with the old key before the rotation, not pulled yet
    bed.seed("myapp:before", "old", b"signed by the old key\n")
    pid = bed.host.proc.popen.pid if bed.host.proc.popen else None
    # rotation: the operator rebinds the builder token and the root signs a document without the old key
    run_swarm("tracker", "token", "update", "builder1", "--key", bed.keys["new"][1], "--data",
              str(bed.tracker.data))
    bed.publish_keys(2, "new")
    after = bed.seed("myapp:after", "new", b"signed by the new key\n")
    assert bed.host.swarm("pull", "myapp:after", timeout=240).returncode == 0
    assert bed.host_id("myapp:after") == after
    result = bed.host.swarm("pull", "myapp:before", check=False)
    assert result.returncode == 1 and "untrusted key" in result.stderr
    with pytest.raises(docker.errors.ImageNotFound):
        bed.api("host").inspect_image("myapp:before")
    assert (bed.host.proc.popen.pid if bed.host.proc.popen else None) == pid  # the same process throughout
    # the builder's old key is refused by the tracker too
    bed.api("builder").tag("myapp:after", "myapp", "late")
    res = bed.builder.swarm("seed", "myapp:late", "--key", str(bed.keys["old"][0]), check=False)
    assert res.returncode == 1 and "bound to key" in res.stderr


def test_downgrade_by_a_tampered_tracker_is_refused_by_the_host_even_after_restart(bed: Bed) -> None:
    """Runs after the rotation (the new key signs); last, as it restarts the host."""
    first = bed.seed("myapp:prod", "new", b"version one\n")
    db = sqlite3.connect(bed.tracker.data / "tracker.db")
    (old_envelope,) = db.execute("SELECT envelope FROM manifests WHERE ref = 'myapp:prod'").fetchone()
    wait_for(lambda: _has(bed, "myapp:prod", first), 120, "the watch to load version one")
    second = bed.seed("myapp:prod", "new", b"version two\n")
    wait_for(lambda: _has(bed, "myapp:prod", second), 120, "the watch to load version two")

    # the tracker turns hostile: it serves the older, validly signed envelope as the newest publication
    with db:
        db.execute("UPDATE manifests SET envelope = ?, seq = (SELECT max(seq) + 1 FROM manifests) "
                   "WHERE ref = 'myapp:prod'", (old_envelope,))
    db.close()
    wait_for(lambda: "refusing an older manifest for myapp:prod" in bed.host.proc.text(), 60,
             "the watch to refuse the older manifest")
    result = bed.host.swarm("pull", "myapp:prod", check=False)
    assert result.returncode == 1 and "refusing an older manifest" in result.stderr
    assert bed.host_id("myapp:prod") == second
    # what the host accepted survives a restart
    bed.host.stop()
    bed.host = Agent.start(bed.root, "host1", bed.tracker.url, bed.host_token, *bed.host_args)
    result = bed.host.swarm("pull", "myapp:prod", check=False)
    assert result.returncode == 1 and "refusing an older manifest" in result.stderr
    assert bed.host_id("myapp:prod") == second


def _has(bed: Bed, ref: str, image_id: str) -> bool:
    try:
        return bed.host_id(ref) == image_id
    except docker.errors.ImageNotFound:
        return False

