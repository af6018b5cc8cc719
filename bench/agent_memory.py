"""Agent memory: RSS of a builder agent seeding many layers, and over publish/pull cycles.

    python bench/agent_memory.py [--layers 200] [--cycles 50] [--baseline REV] [--tracemalloc]

A real tracker, a real builder agent (with a private dockerd) and a real relay agent
(`--relay`, no Docker) on loopback. Phase 1: `--layers` small synthetic layers (10 per
image, 48 KiB of random data each) are built and `swarm seed`ed on the builder; its RSS is
read once every torrent is seeding. Phase 2: `--cycles` times, a new two-layer image is
built and seeded (publish), and the relay pulls it (pull); both agents' memory is read
after each cycle, so the curve shows what each torrent and each pull leaves behind.

Memory of a process: VmRSS and VmHWM from /proc/PID/status, and Pss, Pss_Anon, Pss_File,
Anonymous from /proc/PID/smaps_rollup (Anon is the heap: Python and libtorrent; File is
mapped files, such as blobs libtorrent reads through mmap).

`--baseline REV` runs the same workload against agents from `git archive REV` too (A = REV,
B = this tree), each with its own tracker, alternating A and B at every step of one run,
on one dockerd. `--tracemalloc` (this tree only) runs the builder under tracemalloc and
prints the Python allocations that grew between the end of phase 1 and the last cycle.

Writes bench/results/agent-memory.{md,json} (and .png when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swarm.images.synthetic import build_image, payload  # noqa: E402
from tests.support.dockerd import Dockerd  # noqa: E402
from tests.support.procs import SWARM, Agent, Tracker, wait_for  # noqa: E402

LAYERS_PER_IMAGE = 10
LAYER_BYTES = 48 * 1024
CYCLE_LAYERS = 2  # a big one (--cycle-mib) and a small one
MIB = 1024 * 1024

#: imported by the builder's interpreter with --tracemalloc: SIGUSR2 dumps a snapshot
SITECUSTOMIZE = textwrap.dedent(
    """
    import os, signal, tracemalloc
    _out = os.environ.get("SWARM_BENCH_TRACEMALLOC")
    if _out:
        tracemalloc.start(8)
        _n = [0]
        def _dump(_sig, _frame):
            _n[0] += 1
            path = f"{_out}.{_n[0]}"
            tracemalloc.take_snapshot().dump(path + ".tmp")
            os.rename(path + ".tmp", path)
        signal.signal(signal.SIGUSR2, _dump)
    """
)


def memory(pid: int) -> dict[str, float]:
    """MiB figures of one process."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if key in ("Pss", "Pss_Anon", "Pss_File", "Anonymous"):
            out[key] = int(value.split()[0]) / 1024
    out["threads"] = float(len(os.listdir(f"/proc/{pid}/task")))
    return out


@dataclass
class Variant:
    """One tree's tracker, builder and relay."""

    name: str
    tree: Path
    root: Path
    docker_host: str
    tracemalloc: Path | None = None
    agent_env: dict[str, str] = field(default_factory=dict)
    tracker: Tracker | None = None
    builder: Agent | None = None
    relay: Agent | None = None
    key: Path = field(default_factory=Path)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(self.tree))

    def prefix(self, extra: dict[str, str] | None = None) -> list[str]:
        pairs = {"PYTHONPATH": str(self.tree), **(extra or {})}
        return ["env", *(f"{k}={v}" for k, v in pairs.items())]

    def swarm(self, *args: str, timeout: float = 600) -> str:
        out = subprocess.run([*SWARM, *args], capture_output=True, text=True, env=self.env(), timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{self.name}: swarm {' '.join(args)} exited {out.returncode}: {out.stderr[-2000:]}")
        return out.stdout

    def start(self) -> None:
        self.tracker = Tracker.start(self.root, prefix=self.prefix())
        self.key = self.root / "builder.key"
        pubkey = self.swarm("keygen", str(self.key)).strip()

        def token(name: str, role: str, *extra: str) -> str:
            out = self.swarm("tracker", "token", "create", name, "--role", role, *extra, "--data",
                             str(self.root / "tracker"))
            return out.strip().splitlines()[-1]

        assert self.tracker is not None
        extra = dict(self.agent_env)
        if self.tracemalloc:
            extra |= {"SWARM_BENCH_TRACEMALLOC": str(self.tracemalloc),
                      "PYTHONPATH": f"{self.tracemalloc.parent}:{self.tree}"}
        self.builder = Agent.start(self.root, "builder", self.tracker.url, token("builder", "builder", "--key", pubkey),
                                   "--docker-host", self.docker_host, prefix=self.prefix(extra))
        self.relay = Agent.start(self.root, "relay", self.tracker.url, token("relay", "host"), "--trust", pubkey,
                                 "--relay", "--docker-host", "unix:///nonexistent/docker.sock",
                                 prefix=self.prefix(self.agent_env))

    def seed(self, refs: list[str]) -> None:
        assert self.builder is not None
        self.swarm("seed", *refs, "--key", str(self.key), "--data", str(self.builder.data))

    def pull(self, ref: str) -> None:
        assert self.relay is not None
        self.swarm("pull", ref, "--data", str(self.relay.data))

    def seeding(self) -> int:
        assert self.builder is not None
        status = json.loads(self.swarm("status", "--json", "--data", str(self.builder.data)))
        return sum(1 for t in status.get("torrents", []) if t.get("state") == "seeding")

    def record(self, phase: str, cycle: int, torrents: int) -> dict[str, Any]:
        assert self.builder is not None and self.relay is not None
        assert self.builder.proc.popen is not None and self.relay.proc.popen is not None
        row = {"phase": phase, "cycle": cycle, "torrents": torrents,
               "builder": memory(self.builder.proc.popen.pid), "relay": memory(self.relay.proc.popen.pid),
               "loadavg": os.getloadavg()[0]}
        self.rows.append(row)
        return row

    def snapshot(self) -> Path | None:
        """A tracemalloc snapshot of the builder (waits for the file)."""
        if self.tracemalloc is None or self.builder is None or self.builder.proc.popen is None:
            return None
        n = sum(1 for p in self.tracemalloc.parent.glob(self.tracemalloc.name + ".*") if not p.name.endswith(".tmp"))
        os.kill(self.builder.proc.popen.pid, signal.SIGUSR2)
        path = Path(f"{self.tracemalloc}.{n + 1}")
        wait_for(path.exists, 120, f"{path.name}")
        return path

    def stop(self) -> None:
        for agent in (self.relay, self.builder):
            if agent is not None:
                agent.stop()
        if self.tracker is not None:
            self.tracker.proc.stop()


def fmt(m: dict[str, float]) -> str:
    return f"{m['VmRSS']:.0f} / {m['Pss']:.0f} / {m['Anonymous']:.0f} / {m['Pss_File']:.0f}"


def tracemalloc_growth(first: Path, last: Path, top: int = 15) -> list[str]:
    import tracemalloc

    a = tracemalloc.Snapshot.load(str(first))
    b = tracemalloc.Snapshot.load(str(last))
    stats = b.compare_to(a, "lineno")
    total_a = sum(s.size for s in a.statistics("filename")) / MIB
    total_b = sum(s.size for s in b.statistics("filename")) / MIB
    lines = [f"Python heap traced: {total_a:.1f} MiB after phase 1, {total_b:.1f} MiB after the cycles"]
    for s in stats[:top]:
        frame = s.traceback[0]
        lines.append(f"  {s.size_diff / 1024:+9.1f} KiB  {s.count_diff:+7d} blocks  {frame.filename}:{frame.lineno}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--cycle-mib", type=int, default=16, help="size of each cycle's big layer (random data)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment of this tree's (B's) agents, e.g. to try an allocator setting")
    ap.add_argument("--baseline", help="git revision to compare with (A), this tree being B")
    ap.add_argument("--tracemalloc", action="store_true", help="trace the builder's Python heap (this tree only)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "agent-memory")
    args = ap.parse_args()
    started = time.time()
    load_before = os.getloadavg()
    print(f"loadavg before: {' '.join(f'{x:.2f}' for x in load_before)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="swarm-mem-") as tmp:
        work = Path(tmp)
        variants: list[Variant] = []
        docker = Dockerd().start()
        try:
            trees: list[tuple[str, Path]] = []
            if args.baseline:
                base = work / "baseline-tree"
                base.mkdir()
                archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], check=True,
                                         capture_output=True).stdout
                subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
                trees.append((f"A {args.baseline}", base))
            trees.append(("B this tree", ROOT))
            for i, (name, tree) in enumerate(trees):
                trace = None
                if args.tracemalloc and tree == ROOT:
                    site = work / "site"
                    site.mkdir()
                    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
                    trace = site / "snap"
                env = dict(e.split("=", 1) for e in args.env) if tree == ROOT else {}
                v = Variant(name, tree, work / f"v{i}", docker.host, trace, env)
                v.start()
                variants.append(v)
            api = docker.api()
            images = (args.layers + LAYERS_PER_IMAGE - 1) // LAYERS_PER_IMAGE
            print(f"building {images} images of {LAYERS_PER_IMAGE} layers ...", flush=True)
            for n in range(images):
                layers = [{f"/l{k}.bin": payload(LAYER_BYTES, seed=n * 1000 + k)} for k in range(LAYERS_PER_IMAGE)]
                image_id = build_image(api, f"seed{n}:1", layers, cmd=["/bin/busybox", "true"], with_busybox=False)
                for i in range(len(variants)):
                    api.tag(image_id, f"v{i}/seed{n}", "1")
            for i, v in enumerate(variants):
                t0 = time.monotonic()
                v.seed([f"v{i}/seed{n}:1" for n in range(images)])
                print(f"{v.name}: seeded {images} images in {time.monotonic() - t0:.0f} s", flush=True)
            expect = images * LAYERS_PER_IMAGE
            for v in variants:
                wait_for(lambda v=v: v.seeding() >= expect, 300, f"{v.name}: {expect} torrents seeding", interval=1)
            time.sleep(5)  # a settled reading: the seeds' first announces done
            for v in variants:
                row = v.record("seeded", 0, expect)
                print(f"{v.name}: {expect} layers seeding: builder RSS/Pss/Anon/File MiB {fmt(row['builder'])}",
                      flush=True)
            first = next((v.snapshot() for v in variants if v.tracemalloc), None)
            torrents = expect
            for c in range(1, args.cycles + 1):
                layers = [{"/big.bin": payload(args.cycle_mib * MIB, seed=10**6 + c)},
                          {"/small.bin": payload(LAYER_BYTES, seed=10**6 + c)}]
                image_id = build_image(api, f"cycle{c}:1", layers, cmd=["/bin/busybox", "true"], with_busybox=False)
                torrents += CYCLE_LAYERS
                for i, v in enumerate(variants):
                    api.tag(image_id, f"v{i}/cycle{c}", "1")
                    v.seed([f"v{i}/cycle{c}:1"])
                    v.pull(f"v{i}/cycle{c}:1")
                    row = v.record("cycle", c, torrents)
                    print(f"{v.name}: cycle {c:2d}: builder {fmt(row['builder'])}  relay {fmt(row['relay'])}  "
                          f"(RSS / Pss / Anon / File MiB)", flush=True)
            last = next((v.snapshot() for v in variants if v.tracemalloc), None)
            growth = tracemalloc_growth(first, last) if first and last else []
            for line in growth:
                print(line)
        finally:
            for v in variants:
                v.stop()
            docker.stop()
    load_after = os.getloadavg()
    print(f"loadavg after: {' '.join(f'{x:.2f}' for x in load_after)}")
    write_report(args, variants, growth, load_before, load_after, time.time() - started)


def write_report(args: argparse.Namespace, variants: list[Variant], growth: list[str],
                 load_before: tuple[float, ...], load_after: tuple[float, ...], seconds: float) -> None:
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/agent_memory.py " + " ".join(sys.argv[1:])
    summary = []
    for v in variants:
        seeded = next(r for r in v.rows if r["phase"] == "seeded")
        cycles = [r for r in v.rows if r["phase"] == "cycle"]
        rss = [r["builder"]["VmRSS"] for r in cycles]
        relay = [r["relay"]["VmRSS"] for r in cycles]
        summary.append({
            "variant": v.name, "seeded_rss": seeded["builder"]["VmRSS"], "seeded_pss": seeded["builder"]["Pss"],
            "seeded_anon": seeded["builder"]["Anonymous"],
            "cycle_first": rss[0] if rss else None, "cycle_last": rss[-1] if rss else None,
            "cycle_max": max(rss) if rss else None, "cycle_min": min(rss) if rss else None,
            "relay_first": relay[0] if relay else None, "relay_last": relay[-1] if relay else None,
        })
    lines = [
        "# Agent memory",
        "",
        f"Run {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.node()}: "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {seconds / 60:.1f} min; `{command}`. "
        f"Load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in load_after)}.",
        "",
        f"Builder agent seeding {args.layers} layers ({LAYER_BYTES // 1024} KiB each), then {args.cycles} cycles of "
        f"publish (a new image on the builder: a {args.cycle_mib} MiB layer of random data and a "
        f"{LAYER_BYTES // 1024} KiB one) and pull (by a relay agent). MiB from /proc "
        "(RSS = VmRSS; Pss, Anon = smaps_rollup Anonymous, File = Pss_File).",
        "",
        "| variant | seeding: RSS | Pss | Anon | cycles: first RSS | last RSS | min–max | growth "
        "| relay first → last |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summary:
        growth_pct = (s["cycle_last"] / s["cycle_first"] - 1) * 100 if s["cycle_first"] else float("nan")
        lines.append(
            f"| {s['variant']} | {s['seeded_rss']:.0f} | {s['seeded_pss']:.0f} | {s['seeded_anon']:.0f} | "
            f"{s['cycle_first'] or 0:.0f} | {s['cycle_last'] or 0:.0f} | "
            f"{s['cycle_min'] or 0:.0f}–{s['cycle_max'] or 0:.0f} | {growth_pct:+.1f}% | "
            f"{s['relay_first'] or 0:.0f} → {s['relay_last'] or 0:.0f} |"
        )
    lines += ["", "Builder per cycle (RSS / Pss / Anon / File MiB):", "", "| cycle | torrents | "
              + " | ".join(v.name for v in variants) + " | load |", "| ---: | ---: |" + " ---: |" * len(variants)
              + " ---: |"]
    by_cycle: dict[int, list[dict[str, Any]]] = {}
    for v in variants:
        for r in v.rows:
            by_cycle.setdefault(r["cycle"], []).append(r)
    for c, rows in sorted(by_cycle.items()):
        lines.append(f"| {c} | {rows[0]['torrents']} | " + " | ".join(fmt(r["builder"]) for r in rows)
                     + f" | {rows[-1]['loadavg']:.2f} |")
    if growth:
        lines += ["", "tracemalloc, builder (largest growth between the end of phase 1 and the last cycle):", "",
                  "```", *growth, "```"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "rows": {v.name: v.rows for v in variants},
                                                    "command": command}, indent=1))
    print(f"wrote {out.with_suffix('.md')}")
    plot(out.with_suffix(".png"), variants)


def plot(path: Path, variants: list[Variant]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for v in variants:
        cycles = [r for r in v.rows if r["phase"] == "cycle"]
        ax.plot([r["cycle"] for r in cycles], [r["builder"]["VmRSS"] for r in cycles], label=f"{v.name} builder RSS")
        ax.plot([r["cycle"] for r in cycles], [r["builder"]["Anonymous"] for r in cycles], "--",
                label=f"{v.name} builder Anon")
    ax.axhline(150, color="grey", linestyle=":", label="target 150 MiB")
    ax.set_xlabel("publish/pull cycle")
    ax.set_ylabel("MiB")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
