"""Announces per second a fleet sends the tracker while it rolls out an image, from the tracker's intervals.

    python bench/fleet_announces.py [--hosts 10000] [--layers 10] [--download 60] [--spread 0,300]

A model, not a measurement: every host adds the image's `--layers` torrents when its pull
starts (spread evenly over `--spread` seconds), downloads for `--download` seconds, then
seeds. libtorrent announces each torrent `started` when it is added, regularly at the
tracker's interval while downloading (DEFAULT_INTERVAL; an announce sooner than the min
interval is answered from the tracker's memory and costs no store work), `completed`
when it finishes, then at the interval the tracker tells seeds (announce.seed_interval:
40x longer where the peer store outlives the process, Redis; the same interval with the
in-memory store, which forgets every peer on restart). The rates are compared with the
capacity `bench/tracker_load.py` measured (its latest report, `--capacity` to override).
Writes bench/results/fleet-announces.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swarm.tracker.announce import seed_interval  # noqa: E402
from swarm.tracker.options import DEFAULT_INTERVAL  # noqa: E402


@dataclass
class Rollout:
    hosts: int
    layers: int
    download: float  # seconds each host downloads
    spread: float  # seconds over which the hosts start
    interval: int
    seed_every: int

    @property
    def torrents(self) -> int:
        return self.hosts * self.layers

    def events(self) -> int:
        """started + completed, one each per torrent."""
        return 2 * self.torrents

    def regulars(self) -> int:
        """Regular announces while downloading (at the interval, after `started`)."""
        return self.torrents * max(0, math.ceil(self.download / self.interval) - 1)

    def seeding(self) -> float:
        """Announces of the hosts already done, while the others still pull: their number grows
        evenly from none (at `download`) to all (at `spread + download`)."""
        return self.torrents / self.seed_every * self.spread / 2

    def total(self) -> float:
        return self.events() + self.regulars() + self.seeding()

    @property
    def duration(self) -> float:
        return self.spread + self.download

    def average(self) -> float:
        return self.total() / self.duration

    def peak(self) -> float:
        """Most announces per second: hosts starting, plus those downloading re-announcing."""
        if self.spread <= 0:
            return math.inf  # every `started` at once: a burst, see burst_seconds
        starting = self.torrents / self.spread
        downloading = min(self.hosts, self.hosts * self.download / self.spread) * self.layers / self.interval
        completing = starting if self.download < self.spread else 0.0  # hosts finish while others start
        seeds = self.hosts * max(0.0, self.spread - self.download) / self.spread  # done when the last starts
        return max(starting + downloading + completing + seeds * self.layers / self.seed_every, self.idle())

    def idle(self) -> float:
        return self.torrents / self.seed_every


def measured_capacity(report: Path) -> dict[str, float]:
    """announces/s per target at the largest peer count of tracker_load.py's report."""
    out: dict[str, tuple[int, float]] = {}
    if not report.exists():
        return {}
    for line in report.read_text().splitlines():
        m = re.match(r"\| (\S+) \| ([\d,]+) \| ([\d,]+) \|", line)
        if m and "@" not in m.group(1):
            peers, rate = int(m.group(2).replace(",", "")), float(m.group(3).replace(",", ""))
            if m.group(1) not in out or peers >= out[m.group(1)][0]:
                out[m.group(1)] = (peers, rate)
    return {target: rate for target, (_p, rate) in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--download", type=float, default=60.0, help="seconds each host downloads the image")
    ap.add_argument("--spread", default="0,300,1800", help="seconds over which the pulls start (comma list)")
    ap.add_argument("--interval", type=int, default=DEFAULT_INTERVAL)
    ap.add_argument("--capacity", type=float, help="announces/s of one tracker process (default: the report's)")
    ap.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "tracker-load.md")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fleet-announces.md")
    a = ap.parse_args()
    capacity = measured_capacity(a.report)
    one = a.capacity or capacity.get("swarm-1", float("nan"))
    lines = [
        "# Announces of a fleet rolling out an image",
        "",
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; `python bench/fleet_announces.py "
        f"{' '.join(sys.argv[1:])}`: {a.hosts:,} hosts, a {a.layers}-layer image, {a.download:g} s download per "
        f"host, interval {a.interval} s. A model from the tracker's intervals (see the script); capacity of one "
        f"tracker process from `{a.report.relative_to(ROOT) if a.report.is_relative_to(ROOT) else a.report}`: "
        + ", ".join(f"{t} {r:,.0f}/s" for t, r in capacity.items())
        + ".",
        "",
        "| peer store | seeds announce every | pulls start over | announces in the rollout | average /s "
        "| peak /s | peak / capacity | afterwards, idle /s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for store, durable in (("memory", False), ("redis", True)):
        every = seed_interval(a.interval, durable)
        for spread in (float(s) for s in a.spread.split(",")):
            r = Rollout(a.hosts, a.layers, a.download, spread, a.interval, every)
            total = r.total()
            peak = r.peak()
            if math.isinf(peak):
                burst = r.torrents / one
                peak_text, ratio = f"{r.torrents:,} at once", f"{burst:.0f} s to drain"
            else:
                peak_text, ratio = f"{peak:,.0f}", f"{peak / one:.2f}"
            lines.append(
                f"| {store} | {every} s | {spread:g} s | {total:,.0f} | {r.average():,.0f} | {peak_text} | {ratio} "
                f"| {r.idle():,.1f} |"
            )
    lines += [
        "",
        "'at once': every host starting the same second sends its torrents' `started` together; one process "
        "drains that queue at its capacity (libtorrent retries an announce that times out, so none is lost, "
        "but the first peers arrive that much later). Peak: when the last host starts (hosts starting, downloading, "
        "completing and the seeds' announces), or afterwards if the idle fleet's seeds announce more. "
        "Idle: the whole fleet seeding the image, nobody downloading; per host that is the layers / the seed interval.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    a.out.write_text(text)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
