#!/usr/bin/env python3
"""What is left of `docker load` once the top layer has arrived: one archive held open vs stages.

    python bench/load_stages.py [--layers 4] [--layer-mib 32] [--repeats 2]

On a private dockerd (tests/support/dockerd.py), an image of busybox plus --layers random layers
is exported into zstd blobs (as `swarm seed` does), then loaded three ways, --repeats times each:

- whole: one streamed archive of every layer (the agent's load after the download);
- one stream: the same archive, its upload held for 3 s before the top layer's file, as if that
  layer were still downloading; timed from the moment the top layer is sent;
- stages: the bottom k layers loaded as partial images for k = 1..N-1 (only the new layer's file
  each time, swarm/agent/staged_load.py), then the image itself with the top layer's file; the
  last load is what is left after the top layer arrives.

Prints and writes bench/results/load-stages.txt with the load average. No CPU share (the
fleet bench measures under shares); the ratios are what matter here.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from swarm.core.digest import digest_hex  # noqa: E402
from swarm.core.layer_order import prefix_config  # noqa: E402
from swarm.images import load as docker_load  # noqa: E402
from swarm.images.export import export_image  # noqa: E402
from swarm.images.synthetic import build_image, payload  # noqa: E402
from tests.support.dockerd import Dockerd  # noqa: E402

MiB = 1024 * 1024
REF = "bench/stages:1"
HOLD_S = 3.0


def remove_all(api: Any) -> None:
    import docker.errors
    for _ in range(20):
        images = api.images(all=True)
        if not images:
            return
        for image in images:
            try:
                api.remove_image(image["Id"], force=True)
            except docker.errors.APIError:
                pass  # a parent of another one: next round
    raise RuntimeError("images left after removal")


def held(stream: Iterator[bytes], top_hex: str, sent: dict[str, float]) -> Iterator[bytes]:
    """`stream`, paused before the top layer's file header; records when it goes on."""
    for chunk in stream:
        if "t" not in sent and top_hex.encode() + b"/layer.tar" in chunk[:1024]:
            time.sleep(HOLD_S)
            sent["t"] = time.monotonic()
        yield chunk


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--layer-mib", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    load0 = os.getloadavg()
    lines = [f"load_stages: {a.layers} x {a.layer_mib} MiB random layers + busybox, dockerd "
             f"{os.popen('dockerd --version').read().strip()}; load average before {load0[0]:.2f} {load0[1]:.2f}"]
    with Dockerd() as d:
        api = d.api(timeout=600)
        build_image(api, REF, [{f"/l{i}.bin": payload(a.layer_mib * MiB, seed=700 + i)} for i in range(a.layers)],
                    ["/bin/busybox", "true"])
        blobs = Path(d.dir) / "blobs"
        image = export_image(api, REF, blobs)
        sources = [(x.diff_id, x.size, blobs / digest_hex(x.blob), x.compression) for x in image.layers]
        diff_ids = [x.diff_id for x in image.layers]
        top_hex = digest_hex(diff_ids[-1])
        for _ in range(a.repeats):
            remove_all(api)
            t = time.monotonic()
            docker_load.load_image(api, docker_load.image_tar_stream(REF, image.config, sources))
            whole = time.monotonic() - t
            remove_all(api)
            sent: dict[str, float] = {}
            docker_load.load_image(api, held(docker_load.image_tar_stream(REF, image.config, sources), top_hex, sent))
            one_stream = time.monotonic() - sent["t"]
            remove_all(api)
            stages = []
            for k in range(1, len(sources)):
                config = prefix_config(image.config, k, REF)
                t = time.monotonic()
                docker_load.load_image(api, docker_load.image_tar_stream(
                    "", config, sources[:k], frozenset(diff_ids[: k - 1])))
                stages.append(time.monotonic() - t)
            t = time.monotonic()
            docker_load.load_image(api, docker_load.image_tar_stream(
                REF, image.config, sources, frozenset(diff_ids[:-1])))
            last = time.monotonic() - t
            loaded = docker_load.image_id(api, REF)
            if loaded != "sha256:" + hashlib.sha256(image.config).hexdigest():
                raise RuntimeError(f"staged load gave {loaded}")
            lines.append(f"whole {whole:.2f} s | one stream, after the top layer: {one_stream:.2f} s "
                         f"({one_stream / whole:.2f}) | stages {[round(s, 2) for s in stages]} s, "
                         f"last {last:.2f} s ({last / whole:.2f})")
    load1 = os.getloadavg()
    lines.append(f"load average after {load1[0]:.2f} {load1[1]:.2f}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (REPO / "bench" / "results" / "load-stages.txt").write_text(text)


if __name__ == "__main__":
    main()
