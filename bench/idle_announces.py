"""Announces per second of an idle host that seeds many layers, per peer store.

A real tracker (in this process, over HTTP on loopback) and a real libtorrent
engine seeding `--layers` torrents nobody downloads. After the first announce
of every torrent, the tracker's announce counter is read over `--window`
seconds. The interval is scaled down (`--interval`, default 5 s) so a round of
seed announces fits in a short run; the rate at the default 30 s interval is
the measured one times interval/30.

    python3 bench/idle_announces.py --layers 200 --window 240
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import time
from pathlib import Path

import aiohttp

from swarm.core.certs import make_csr, new_private_key, private_key_pem
from swarm.core.signing import SigningKey
from swarm.engine.session import Engine
from swarm.tracker.options import DEFAULT_INTERVAL, ServeOptions
from swarm.tracker.server import open_service, start_tracker
from tests.support.manifests import make_signed_manifest
from tests.support.redis import RedisServer


async def announces(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=30)) as resp:
        text = await resp.text()
    return sum(float(n) for n in re.findall(r"^swarm_tracker_announces_total\{[^}]*\} (\S+)$", text, re.M))


async def measure(
    workdir: Path, layers: int, interval: int, window: float, redis_url: str | None, store: str
) -> float:
    service = open_service(ServeOptions(workdir / "data", interval=interval, min_interval=1, redis=redis_url))
    runner, port = await start_tracker(service, "127.0.0.1", 0, client_timeout=5.0)
    url = f"http://127.0.0.1:{port}"
    engine: Engine | None = None
    try:
        key = SigningKey.generate()
        builder = service.create_token("b1", "builder", key.public_raw)
        signed = make_signed_manifest(
            workdir,
            service.ca.cert_pem,
            key,
            payloads=[os.urandom(64 * 1024 + i) for i in range(layers)],
        )
        service.publish(builder.secret, signed.to_bytes())
        host = service.create_token("idle", "host")
        tls_key = new_private_key()
        issued = service.enroll(host.secret, make_csr(tls_key, "x"))
        (workdir / "host.key").write_bytes(private_key_pem(tls_key))
        (workdir / "host.pem").write_text(issued.certificate)
        engine = Engine("127.0.0.1:0", "idle", workdir / "host.pem", workdir / "host.key")
        engine.start(asyncio.get_running_loop())
        for layer in signed.verify(None).layers:
            engine.add(layer.torrent, workdir, f"{url}/announce/{host.secret}", seed=True, file_name=layer.blob[7:])
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 120
            while await announces(http, url) < layers:  # every torrent's first announce
                if time.monotonic() > deadline:
                    raise RuntimeError("the first announces did not all arrive in 120 s")
                await asyncio.sleep(0.2)
            start, t0 = await announces(http, url), time.monotonic()
            while (left := t0 + window - time.monotonic()) > 0:  # a line every 30 s: the schedule as it goes
                await asyncio.sleep(min(30.0, left))
                n = await announces(http, url) - start
                print(f"  {store}: {time.monotonic() - t0:4.0f} s, {n:.0f} announces since the first round", flush=True)
            rate = (await announces(http, url) - start) / (time.monotonic() - t0)
            print(f"  {store}: {rate:.2f} announces/s over the window", flush=True)
            return rate
    finally:
        # bounded: a teardown step that hangs (seen once after a long window) must not eat the figures
        steps = [("engine", asyncio.to_thread(engine.close) if engine is not None else asyncio.sleep(0)),
                 ("http server", runner.cleanup()), ("service", service.aclose())]
        for name, step in steps:
            try:
                await asyncio.wait_for(step, 60)
            except TimeoutError:
                print(f"  {store}: closing the {name} took over 60 s: left behind", flush=True)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=200)
    p.add_argument("--interval", type=int, default=5, help="at least 5: the engine's min_announce_interval")
    p.add_argument("--window", type=float, default=240.0)
    a = p.parse_args()
    print(f"loadavg before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with RedisServer.start(root / "redis-server") as redis:
            stores = {"memory": None, "redis": redis.url}
            for store in stores:
                (root / store).mkdir()
            # both at once, under the same load
            rates = await asyncio.gather(
                *(measure(root / s, a.layers, a.interval, a.window, url, s) for s, url in stores.items())
            )
            for store, rate in zip(stores, rates, strict=True):
                scaled = rate * a.interval / DEFAULT_INTERVAL
                print(
                    f"{store}: {rate:.2f} announces/s at interval {a.interval} s; "
                    f"{scaled:.3f}/s at the default {DEFAULT_INTERVAL} s "
                    f"({a.layers} idle layers, {a.window:.0f} s window)"
                )
    print(f"loadavg after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())
