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
    builder = Agent.start(root, "builder1", tracker.url, tracker.token("builder1", "builder", "--key", pubkey),
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
