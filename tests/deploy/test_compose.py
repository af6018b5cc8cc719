"""docker-compose.yml for real: build the images, bring the fleet up, seed, pull
on three hosts, tear it down.

Everything runs on private engines: the compose project on a private dockerd
of this suite (DOCKER_HOST), the agents' four engines started by
deploy/compose/engines.sh. The Python base image is made from Debian
packages (tests/deploy/base_image.py: debootstrap once, cached in
$SWARM_TEST_CACHE, default /var/cache/swarm-test); the package's wheels come
from the package index during `docker-compose build` (build network: host).

Needs root and Debian's docker.io, docker-compose, debootstrap and
busybox-static. First run: about a minute more for debootstrap.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from swarm.images.synthetic import run_image
from tests.deploy.base_image import import_base_image, rootfs_tarball, tarball_path
from tests.support.dockerd import Dockerd, cannot_start_reason
from tests.support.procs import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.deploy, pytest.mark.docker, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
AGENTS = ("builder", "host1", "host2", "host3")
HOSTS = AGENTS[1:]
SERVICES = ("tracker", "init", *AGENTS)
IMAGE = "demo/hello:1"
KEY = "/etc/swarm/builder.key"


def _missing() -> list[str]:
    problems = []
    reason = cannot_start_reason()
    if reason:
        problems.append(reason)
    for tool, package in (("docker-compose", "docker-compose"), ("debootstrap", "debootstrap")):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            problems.append(f"{tool} is missing (apt-get install {package})")
    if not os.path.exists("/usr/bin/busybox"):
        problems.append("/usr/bin/busybox is missing (apt-get install busybox-static)")
    return problems


@dataclass
class Deployment:
    engine: Dockerd
    engines_dir: Path
    project: str
    env: dict[str, str]
    logs: Path
    timings: dict[str, float] = field(default_factory=dict)
    up: bool = False

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["docker-compose", "--no-ansi", "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout, cwd=ROOT)
        with open(self.logs / "compose.log", "a") as log:
            log.write(f"$ {' '.join(cmd)}\n{result.stdout}{result.stderr}\n")
        if check and result.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        return result

    def swarm(self, service: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.compose("exec", "-T", service, "swarm", *args, timeout=timeout)

    def engine_api(self, name: str) -> Any:
        return docker.APIClient(base_url=f"unix://{self.engines_dir}/{name}/socket/docker.sock", version="auto")

    def project_objects(self) -> dict[str, list[str]]:
        api = self.engine.api()
        label = f"com.docker.compose.project={self.project}"
        return {
            "containers": [c["Names"][0] for c in api.containers(all=True, filters={"label": label})],
            "networks": [n["Name"] for n in api.networks(filters={"label": label})],
            "volumes": [v["Name"] for v in (api.volumes(filters={"label": label}).get("Volumes") or [])],
        }

    def timed(self, what: str, started: float) -> None:
        self.timings[what] = time.monotonic() - started


def _engines(deployment: Deployment, *args: str) -> None:
    script = ROOT / "deploy" / "compose" / "engines.sh"
    result = subprocess.run(["bash", str(script), *args, str(deployment.engines_dir)], capture_output=True,
                            text=True, timeout=180, env=deployment.env)
    if result.returncode != 0:
        raise AssertionError(f"engines.sh {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    problems = _missing()
    if problems:
        pytest.fail("the deploy test cannot run here: " + "; ".join(problems), pytrace=False)
    logs = tmp_path_factory.mktemp("deploy")
    started = time.monotonic()
    engine = Dockerd().start()
    engines_dir = Path(tempfile.mkdtemp(prefix="swc-", dir="/tmp"))
    project = f"swarmdeploy{os.getpid()}"
    env = {**os.environ, "DOCKER_HOST": engine.host, "SWARM_ENGINES_DIR": str(engines_dir),
           "SWARM_BASE_IMAGE": "swarm-base:test", "SWARM_BUILD_NETWORK": "host",
           "COMPOSE_PROJECT_NAME": project, "SWARM_IMAGE_TAG": "test"}
    for var in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "COMPOSE_FILE"):
        env.pop(var, None)
    d = Deployment(engine, engines_dir, project, env, logs)
    d.timed("private dockerd", started)
    try:
        step = time.monotonic()
        cached = tarball_path().exists()
        tarball = rootfs_tarball(d.timings)
        import_base_image(engine.api(), tarball)
        d.timed("base image (cached rootfs)" if cached else "base image (debootstrap + import)", step)

        step = time.monotonic()
        d.compose("build", timeout=900)
        d.timed("docker-compose build", step)

        step = time.monotonic()
        _engines(d)
        d.timed("four agent engines", step)

        step = time.monotonic()
        d.compose("up", "-d", timeout=300)
        d.up = True
        for name in AGENTS:
            def ready(service: str = name) -> bool:
                return "agent ready" in d.compose("logs", "--no-color", service).stdout
            wait_for(ready, 120, f"{name} to be ready")
        d.timed("docker-compose up", step)
        yield d
    finally:
        if d.up:
            for service in SERVICES:
                (logs / f"{service}.log").write_text(d.compose("logs", "--no-color", service, check=False).stdout)
            d.compose("down", "-v", "--remove-orphans", check=False)
        _engines(d, "--stop")
        shutil.rmtree(engines_dir, ignore_errors=True)
        engine.stop()


@dataclass
class Seeded:
    image_id: str
    seed_stdout: str
    pull_stdout: dict[str, str]


@pytest.fixture(scope="module")
def seeded(deployment: Deployment) -> Seeded:
    step = time.monotonic()
    subprocess.run(["bash", str(ROOT / "deploy" / "compose" / "demo-image.sh"), IMAGE, "8"], check=True,
                   env=deployment.env, capture_output=True, timeout=120)
    image_id = deployment.engine_api("builder").inspect_image(IMAGE)["Id"]
    seed = deployment.swarm("builder", "seed", IMAGE, "--key", KEY)
    with concurrent.futures.ThreadPoolExecutor() as pool:
        pulls = dict(zip(HOSTS, pool.map(lambda h: deployment.swarm(h, "pull", IMAGE).stdout, HOSTS)))
    deployment.timed("seed + pull on three hosts", step)
    return Seeded(image_id, seed.stdout, pulls)


def test_every_host_loads_the_builders_image_into_its_own_engine(deployment: Deployment, seeded: Seeded) -> None:
    assert f"{IMAGE} {seeded.image_id}" in seeded.seed_stdout
    engine_ids = set()
    for host in HOSTS:
        assert f"{IMAGE} {seeded.image_id}" in seeded.pull_stdout[host]
        api = deployment.engine_api(host)
        assert api.inspect_image(IMAGE)["Id"] == seeded.image_id
        assert run_image(api, IMAGE).decode().startswith(f"hello from {IMAGE}")
        engine_ids.add(api.info()["DockerRootDir"])  # (engine "ID"s come from one key file)
    assert len(engine_ids) == len(HOSTS), "each host must have loaded into an engine of its own"
    with pytest.raises(docker.errors.ImageNotFound):
        deployment.engine.api().inspect_image(IMAGE)  # the compose engine never saw it


def test_peers_reach_each_other_on_the_internal_network(deployment: Deployment, seeded: Seeded) -> None:
    api = deployment.engine.api()
    (network,) = api.networks(filters={"label": f"com.docker.compose.project={deployment.project}"})
    details = api.inspect_network(network["Id"])
    assert details["Internal"] is True
    received: dict[str, int] = {}
    for host in HOSTS:
        status = json.loads(deployment.swarm(host, "status", "--json").stdout)
        assert status["tracker_reachable"] is True and status["role"] == "host"
        assert [img["ref"] for img in status["images"]] == [IMAGE]
        for torrent in status["torrents"]:
            for peer in torrent["peers"]:
                received[peer["name"]] = received.get(peer["name"], 0) + peer["downloaded"]
    # pieces came over TLS between containers, addressed as the tracker saw them
    assert received.get("builder", 0) > 0, received


def test_init_is_idempotent_and_secrets_stay_in_their_volumes(deployment: Deployment, seeded: Seeded) -> None:
    again = deployment.compose("run", "--rm", "init", timeout=120)
    assert "init: done" in again.stdout + again.stderr
    assert "token for" not in again.stdout + again.stderr  # nothing made twice
    listing = deployment.swarm("host1", "status", "--json")
    assert listing.returncode == 0
    # a host has its own token and the builder's public key, never the builder's private key
    files = deployment.compose("exec", "-T", "host1", "ls", "-A", "/var/lib/swarm", "/etc/swarm",
                               check=False)
    assert "join-token" in files.stdout and "trust.pub" in files.stdout
    assert "builder.key" not in files.stdout
    mode = deployment.compose("exec", "-T", "host1", "stat", "-c", "%a", "/var/lib/swarm/join-token").stdout
    assert mode.strip() == "600"


def test_down_leaves_nothing_behind(deployment: Deployment, seeded: Seeded) -> None:
    assert deployment.project_objects()["containers"], "the project should be up before `down`"
    step = time.monotonic()
    deployment.compose("down", "-v", timeout=180)
    deployment.up = False
    deployment.timed("docker-compose down -v", step)
    assert deployment.project_objects() == {"containers": [], "networks": [], "volumes": []}
    api = deployment.engine.api()
    assert api.containers(all=True) == []
    assert {n["Name"] for n in api.networks()} == {"host", "none"}  # the engine's own, nothing else
    assert (api.volumes().get("Volumes") or []) == []


def test_report_timings(deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print("\ncompose deployment timings:")
        for what, seconds in deployment.timings.items():
            print(f"  {what:<40} {seconds:6.1f}s")
        print(f"  (rootfs cache: {tarball_path()})")
