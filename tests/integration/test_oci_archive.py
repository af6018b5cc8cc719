"""An image read from archives a real tool wrote (skopeo: OCI and docker-archive
layouts) is distributed end to end: `swarm seed --from-archive`."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarm.images.synthetic import build_image, payload, run_image
from tests.support.dockerd import Dockerd, stop_all
from tests.support.procs import Agent, Tracker, run_swarm

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def skopeo() -> str:
    path = shutil.which("skopeo")
    if path is None:
        pytest.fail("skopeo is missing: apt-get install skopeo (scripts/setup.sh does)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Tracker, Path, str, Agent, Dockerd]]:
    root = tmp_path_factory.mktemp("oci")
    engine = Dockerd().start()
    tracker = Tracker.start(root)
    key = root / "builder.key"
    pubkey = run_swarm("keygen", str(key)).stdout.strip()
    build_image(engine.api(), "oci/app:1", [{"/data.bin": payload(2_000_000, seed=5)}, {"/hello.txt": b"oci\n"}],
                cmd=["/bin/busybox", "cat", "/hello.txt"])
    builder = Agent.start(root, "builder1", tracker.url, tracker.token("builder1", "builder"),
                          "--docker-host", engine.host)
    try:
        yield root, tracker, key, pubkey, builder, engine
    finally:
        builder.stop()
        tracker.proc.stop()
        stop_all([engine])


@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_seed_from_a_skopeo_archive_and_pull(fleet: Any, skopeo: str, dockerd_factory: Any, tmp_path: Path,
                                             transport: str) -> None:
    root, tracker, key, pubkey, builder, engine = fleet
    archive = tmp_path / f"app.{transport}.tar"
    subprocess.run([skopeo, "copy", "--src-daemon-host", engine.host, "docker-daemon:oci/app:1",
                    f"{transport}:{archive}:oci/app:1"], check=True, capture_output=True, timeout=120)
    tag = f"oci/app:{transport}"
    seeded = builder.swarm("seed", tag, "--key", str(key), "--from-archive", str(archive))
    original_id = engine.api().inspect_image("oci/app:1")["Id"]
    host_engine = dockerd_factory()
    host = Agent.start(root / transport, "host", tracker.url, tracker.token(f"host-{transport}", "host"),
                       "--trust", pubkey, "--docker-host", host_engine.host)
    try:
        pulled = host.swarm("pull", tag)
        loaded = host_engine.api().inspect_image(tag)["Id"]
        assert loaded in seeded.stdout and loaded in pulled.stdout
        assert run_image(host_engine.api(), tag) == b"oci\n"
        if transport == "docker-archive":
            # the config travels byte for byte (skopeo rewrites it as an OCI config
            # for oci-archive, so there the ID is that new config's)
            assert loaded == original_id
    finally:
        host.stop()


def test_seed_picks_the_named_image_of_a_docker_save_bundle(fleet: Any, dockerd_factory: Any, tmp_path: Path) -> None:
    root, tracker, key, pubkey, builder, engine = fleet
    # a name with a registry port: Docker's grammar, end to end
    web = "localhost:5000/team/web-app:1.2.3-rc.1"
    build_image(engine.api(), web, [{"/hello.txt": b"web\n"}], cmd=["/bin/busybox", "cat", "/hello.txt"])
    bundle = tmp_path / "bundle.tar"
    subprocess.run(["docker", "-H", engine.host, "save", "-o", str(bundle), "oci/app:1", web],
                   check=True, capture_output=True, timeout=120)
    web_id, app_id = (engine.api().inspect_image(name)["Id"] for name in (web, "oci/app:1"))

    seeded = builder.swarm("seed", web, "--key", str(key), "--from-archive", str(bundle))
    assert web_id in seeded.stdout and app_id not in seeded.stdout
    missing = builder.swarm("seed", "oci/other:1", "--key", str(key), "--from-archive", str(bundle), check=False)
    assert missing.returncode == 1 and "holds no image oci/other:1" in missing.stderr
    assert "Traceback" not in missing.stderr

    host_engine = dockerd_factory()
    host = Agent.start(root / "bundle", "host", tracker.url, tracker.token("host-bundle", "host"),
                       "--trust", pubkey, "--docker-host", host_engine.host)
    try:
        host.swarm("pull", f"{web}@{web_id}")
        assert host_engine.api().inspect_image(web)["Id"] == web_id
        assert run_image(host_engine.api(), web) == b"web\n"
        stale = host.swarm("pull", f"{web}@{app_id}", check=False)
        assert stale.returncode == 1 and f"not the pinned {app_id}" in stale.stderr
    finally:
        host.stop()
