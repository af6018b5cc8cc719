#!/usr/bin/env python3
"""What naming peers by the tracker's word costs per received block, A/B in one run.

    python bench/peer_labels.py [--blocks 200000] [--rounds 6]

A: `ClaimedNames` (believes the peer id: what the engine did before), B:
`TrackerPeerNames` with its list fetched once (what an agent does for a known
peer), both called as the alert thread calls them for every block_finished_alert,
over 50 connections. Rounds alternate A and B; prints and appends to
bench/results/peer-labels.txt the median ns per block of each, with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

from swarm.agent.peer_names import TrackerPeerNames
from swarm.core.api import PeerEntry
from swarm.core.peerid import peer_tag
from swarm.engine.session import ClaimedNames, PeerResolver
from tests.support.threadloop import loop_in_thread

RESULTS = Path(__file__).parent / "results" / "peer-labels.txt"
IH = bytes(range(32))


def pid_of(name: str) -> bytes:
    tag = peer_tag(name).encode()
    return tag + b"r" * (20 - len(tag))


ENTRIES = [PeerEntry(f"10.0.1.{i}", 6881, pid_of(f"h{i}"), f"h{i}", "host") for i in range(50)]


class Tracker:
    async def peers(self, announce_hash: bytes, timeout: float = 10.0) -> list[PeerEntry]:
        return list(ENTRIES)


def run(names: PeerResolver, blocks: int) -> float:
    """ns per block over `blocks` calls, round-robin over the 50 connections."""
    conns = [(e.ip, e.port, e.peer_id) for e in ENTRIES]
    seen = time.time()
    started = time.perf_counter_ns()
    for i in range(blocks):
        ip, port, pid = conns[i % 50]
        names.identify(IH, ip, port, pid, seen)
    return (time.perf_counter_ns() - started) / blocks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    with loop_in_thread() as loop:
        tracker_names = TrackerPeerNames(Tracker(), loop)
        run(tracker_names, 100)  # the one fetch, before timing
        assert tracker_names.fetches == 1
        a: list[float] = []
        b: list[float] = []
        for _ in range(args.rounds):
            a.append(run(ClaimedNames(), args.blocks))
            b.append(run(tracker_names, args.blocks))
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
        assert tracker_names.fetches == 1, "a known peer must cost no fetch"
    load = os.getloadavg()
    line = (
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC  blocks={args.blocks} rounds={args.rounds}  "
        f"A claimed-peer-id {statistics.median(a):.0f} ns/block  B tracker-attested {statistics.median(b):.0f} "
        f"ns/block  tracker fetches 1  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(line)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
