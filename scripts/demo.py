"""The swarm demo: a tracker, a builder and two hosts on this machine.

Each agent has its own dockerd (own data root and socket). An image with a
few layers is generated on the spot FROM scratch on the builder, seeded, and
pulled on both hosts at once; the demo prints the image IDs, what `docker
run` prints on each host, and how many bytes each host got from its peer
versus from the builder.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402

from swarm.core.units import human_bytes  # noqa: E402
from swarm.images.synthetic import build_image, payload, run_image  # noqa: E402
from tests.support.dockerd import Dockerd  # noqa: E402
from tests.support.procs import Agent, Tracker, run_swarm  # noqa: E402

HELLO = "hello from a swarm-distributed image\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=48, help="size of the big layer (MiB)")
    parser.add_argument("--builder-upload", default="8MB/s", help="the builder's upload cap")
    parser.add_argument("--keep", action="store_true", help="keep the data dir (logs) afterwards")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="swarm-demo-"))
    print(f"demo data and logs in {root}")
    with ExitStack() as stack:
        engines = {}
        for name in ("builder1", "host1", "host2"):
            engines[name] = stack.enter_context(Dockerd(root / "docker" / name))
        print("three dockerds up:", ", ".join(f"{n} {d.host}" for n, d in engines.items()))

        tracker = Tracker.start(root)
        stack.callback(tracker.proc.stop)
        print(f"tracker at {tracker.url}")
        key = root / "builder.key"
        pubkey = run_swarm("keygen", str(key)).stdout.strip()
        print(f"builder key {pubkey}")

        builder_api = docker.APIClient(base_url=engines["builder1"].host)
        mib = 1024 * 1024
        build_image(builder_api, "demo/app:1",
                    [{"/data/base.bin": payload(args.size_mib * mib, seed=7)},
                     {"/data/libs.bin": payload(4 * mib, seed=8, compressible=True)},
                     {"/hello.txt": HELLO.encode()}], cmd=["/bin/busybox", "cat", "/hello.txt"])
        builder_id = builder_api.inspect_image("demo/app:1")["Id"]
        print(f"built demo/app:1 on the builder: {builder_id}")

        agents = {}
        agents["builder1"] = Agent.start(root, "builder1", tracker.url, tracker.token("builder1", "builder", "--key", pubkey),
                                         "--docker-host", engines["builder1"].host,
                                         "--upload-limit", args.builder_upload)
        stack.callback(agents["builder1"].stop)
        for name in ("host1", "host2"):
            agents[name] = Agent.start(root, name, tracker.url, tracker.token(name, "host"), "--trust", pubkey,
                                       "--docker-host", engines[name].host)
            stack.callback(agents[name].stop)

        started = time.monotonic()
        print(agents["builder1"].swarm("seed", "demo/app:1", "--key", str(key)).stdout.strip(), "(seeding)")
        with concurrent.futures.ThreadPoolExecutor() as pool:
            results = dict(zip(("host1", "host2"),
                               pool.map(lambda n: agents[n].swarm("pull", "demo/app:1", timeout=600),
                                        ("host1", "host2"))))
        elapsed = time.monotonic() - started
        print(f"\nseed + pull on two hosts took {elapsed:.1f}s\n")

        ok = True
        for name in ("host1", "host2"):
            host_id = docker.APIClient(base_url=engines[name].host).inspect_image("demo/app:1")["Id"]
            out = run_image(docker.APIClient(base_url=engines[name].host), "demo/app:1").decode()
            received: dict[str, int] = {}
            for torrent in agents[name].status()["torrents"]:
                for peer in torrent["peers"]:
                    received[peer["name"]] = received.get(peer["name"], 0) + peer["downloaded"]
            from_builder = received.pop("builder1", 0)
            from_peers = sum(received.values())
            same = host_id == builder_id
            ok = ok and same and out == HELLO
            print(f"{name}: image {host_id} ({'same as builder' if same else 'DIFFERENT'})")
            print(f"  docker run prints: {out.strip()!r}")
            print(f"  received {human_bytes(from_builder)} from the builder, {human_bytes(from_peers)} from peers")
            _ = results[name]
        print("\nOK: both hosts run the builder's image" if ok else "\nFAILED")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
