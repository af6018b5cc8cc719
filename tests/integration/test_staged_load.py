"""Loading while downloading, as Docker sees it: layers arrive in image order and the bottom of the
image is in Docker before the top has arrived; a layer that fails its diff_id check, below or at
the top, fails the pull in one line and leaves Docker with no image and no layer; the pull can
then be made again.

Real agent processes, a real tracker process, real dockerds (the bed of test_agent_production).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import subprocess
import time
from typing import Any

import pytest

from swarm.agent.client import AgentClient
from swarm.core.signing import SignedManifest, SigningKey
from swarm.images.synthetic import build_image, payload, run_image
from tests.integration.test_agent_production import (  # noqa: F401  (bed: a module fixture)
    MIB,
    Bed,
    bed,
    builder_id,
    image_id,
)
from tests.support.dockerd import Dockerd
from tests.support.procs import SWARM, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TALL = "prod/tall:1"
DATA_LAYERS = 4


@pytest.fixture(scope="module")
def tall(bed: Bed) -> str:
    """An image of busybox and four 3 MiB random layers, seeded by the builder."""
    build_image(bed.builder_engine.api(), TALL,
                [{f"/part{i}.bin": payload(3 * MIB, seed=40 + i)} for i in range(DATA_LAYERS)],
                cmd=["/bin/busybox", "sha256sum", f"/part{DATA_LAYERS - 1}.bin"])
    bed.seed(TALL)
    return TALL


def _manifest(bed: Bed, ref: str) -> Any:
    db = sqlite3.connect(bed.tracker.data / "tracker.db")
    (raw,) = db.execute("SELECT envelope FROM manifests WHERE ref = ?", (ref,)).fetchone()
    db.close()
    return SignedManifest.from_bytes(raw).verify(None)


def _publish_with_a_wrong_diff_id(bed: Bed, tag: str, index: int) -> str:
    """TALL's layers under a new tag, signed by the builder's key, with layer `index` claiming
    another diff_id (in the config too): its blob and torrent are sound, its content is not that layer."""
    good = _manifest(bed, TALL)
    wrong = "sha256:" + hashlib.sha256(b"not this layer").hexdigest()
    config = json.loads(good.config)
    config["rootfs"]["diff_ids"][index] = wrong
    layers = list(good.layers)
    layers[index] = dataclasses.replace(layers[index], diff_id=wrong)
    bad = dataclasses.replace(good, tag=tag, config=json.dumps(config).encode(), layers=tuple(layers),
                              created_ms=int(time.time() * 1000))
    envelope = SigningKey.load(bed.key).sign(bad).to_bytes()
    AgentClient(bed.builder.data / "agent.sock").publish([envelope])
    return f"prod/tall:{tag}"


def _layers_in_docker(engine: Dockerd) -> list[str]:
    layerdb = engine.data_root / "image" / "overlay2" / "layerdb" / "sha256"
    return sorted(p.name for p in layerdb.iterdir()) if layerdb.exists() else []


def test_lower_layers_are_in_docker_while_the_upper_ones_download(bed: Bed, tall: str,
                                                                  dockerd_factory: Any) -> None:
    engine = dockerd_factory()
    host = bed.host("stager", engine, "--download-limit", "2MB/s", "--load-window", "4MiB")
    blobs = [layer.blob for layer in _manifest(bed, tall).layers]
    pull = subprocess.Popen([*SWARM, "pull", tall, "--data", str(host.data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[dict[str, dict[str, Any]]] = []
    partial_images: set[str] = set()

    def sample() -> bool:
        for p in host.status()["pulls"]:
            if p["ref"] == tall and p["stage"] == "downloading":
                seen.append({layer["blob"]: layer for layer in p["layers"]})
                partial_images.update(i["Id"] for i in engine.api().images(all=True))
        return pull.poll() is not None

    wait_for(sample, 120, "the pull to end")
    _out, err = pull.communicate(timeout=10)
    assert pull.returncode == 0, err
    top = blobs[-1]
    # the top layer waits for the lower ones: queued (nothing fetched) while the first data layer downloads
    assert any(s[top]["state"] == "queued" and s[top]["done"] == 0 and s[blobs[1]]["done"] < s[blobs[1]]["total"]
               for s in seen), seen
    # and the bottom of the image was in Docker while the top was still on its way
    assert any(s[blobs[0]]["state"] == "in-docker" and s[top]["done"] < s[top]["total"] for s in seen), seen
    assert partial_images, "Docker held a partial image during the download"
    final = builder_id(bed, tall)
    assert image_id(engine, tall) == final
    assert [i["Id"] for i in engine.api().images(all=True)] == [final], "the partial images are gone"
    top_file = hashlib.sha256(payload(3 * MIB, seed=40 + DATA_LAYERS - 1)).hexdigest()
    assert run_image(engine.api(), tall).split()[0].decode() == top_file
    host.stop()


@pytest.mark.parametrize("where", ["middle", "top"])
def test_a_layer_failing_its_diff_id_leaves_docker_without_the_image(bed: Bed, tall: str, dockerd_factory: Any,
                                                                     where: str) -> None:
    index = 2 if where == "middle" else DATA_LAYERS  # layer 0 is busybox
    bad = _publish_with_a_wrong_diff_id(bed, f"bad-{where}", index)
    engine = dockerd_factory()
    host = bed.host(f"refuser-{where}", engine, "--download-limit", "4MB/s", "--load-window", "4MiB")
    res = subprocess.run([*SWARM, "pull", bad, "--data", str(host.data)], capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 1, res
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "decompresses to" in errors[0] and "Traceback" not in res.stderr, res.stderr
    assert engine.api().images(all=True) == []
    assert _layers_in_docker(engine) == [], "Docker dropped every layer the pull had loaded"
    # the same host pulls the sound image afterwards
    res = subprocess.run([*SWARM, "pull", tall, "--data", str(host.data)], capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr
    assert image_id(engine, tall) == builder_id(bed, tall)
    host.stop()


def test_load_after_download_still_loads(bed: Bed, tall: str, dockerd_factory: Any) -> None:
    """`--load-after-download`: every layer at once, one load at the end (the path before staging)."""
    engine = dockerd_factory()
    host = bed.host("whole", engine, "--load-after-download")
    res = subprocess.run([*SWARM, "pull", tall, "--data", str(host.data)], capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr
    assert [i["Id"] for i in engine.api().images(all=True)] == [builder_id(bed, tall)]
    host.stop()
