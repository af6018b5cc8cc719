"""The rollout view, pure: from what agents reported to who has an image, who is stuck, how fast.

No I/O here: swarm/tracker/fleet.py reads storage, checks tokens and calls these.

- The fleet of a rollout: every host (a `host` token, not revoked) that has sent a heartbeat,
  plus any host that reported a pull of that image, minus relays: a host whose latest report for
  the tag is "cached" (`swarm agent --relay`) seeds the image and never runs it.
- A host has the image when its latest report for the tag says "loaded" with the image id of the
  manifest published now (a host that loaded an older push of the tag has not).
- Time to loaded: from the start of the host's pull to its "loaded" report, by the host's clock.
- A host is stale when its last report is older than STALE_AFTER.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from swarm.core.api import PULL_STATES, Heartbeat, PullReport
from swarm.core.errors import InvalidInput, SwarmError
from swarm.core.refs import ImageRef
from swarm.tracker.storage.base import TokenRecord
from swarm.tracker.storage.rollout import HostRecord

#: agents beat every HEARTBEAT_EVERY s (swarm/agent/reporter.py); three missed beats: stale
STALE_AFTER = 60.0
#: roles that may read the whole fleet
FLEET_READERS = ("admin",)


@dataclass(frozen=True)
class HostPull:
    """One host's latest state in one rollout."""

    host: str
    report: PullReport
    current: bool  # its image id is the one published now
    stale: bool

    @property
    def loaded(self) -> bool:
        return self.current and self.report.state == "loaded"

    @property
    def seconds(self) -> float | None:
        """Time from the start of the pull to loaded."""
        if not self.loaded or not self.report.started:
            return None
        return max(0.0, self.report.updated - self.report.started)

    def to_map(self) -> dict[str, Any]:
        r = self.report
        return {
            "host": self.host,
            "state": r.state,
            "image_id": r.image_id,
            "current": self.current,
            "done": r.done,
            "total": r.total,
            "from_peers": r.from_peers,
            "from_builder": r.from_builder,
            "stages": [s.to_map() for s in r.stages],
            "error": r.error,
            "started": r.started,
            "updated": r.updated,
            "seconds": self.seconds,
            "receipt": r.receipt is not None,
            "stale": self.stale,
        }


@dataclass(frozen=True)
class RolloutView:
    ref: str
    image_id: str  # published now ("" if the tag is not published)
    publisher: str
    fleet: tuple[str, ...]  # hosts counted in the total
    hosts: tuple[HostPull, ...]  # hosts that reported a pull of this tag

    @property
    def loaded(self) -> tuple[str, ...]:
        return tuple(h.host for h in self.hosts if h.loaded)

    @property
    def missing(self) -> tuple[str, ...]:
        done = set(self.loaded)
        return tuple(name for name in self.fleet if name not in done)

    @property
    def seconds(self) -> list[float]:
        """Times to loaded, sorted: the completion CDF."""
        return sorted(s for h in self.hosts if (s := h.seconds) is not None)

    def summary(self) -> dict[str, Any]:
        secs = self.seconds
        counts = {state: 0 for state in PULL_STATES}
        for h in self.hosts:
            if h.current or h.report.state == "failed":
                counts[h.report.state] += 1
        counts["loaded"] = len(self.loaded)
        return {
            "loaded": len(self.loaded),
            "total": len(self.fleet),
            "p50": percentile(secs, 50),
            "p99": percentile(secs, 99),
            "states": counts,
        }

    def summary_line(self) -> str:
        s = self.summary()
        states = s["states"]
        busy = sum(states[x] for x in ("resolving", "downloading", "verifying", "loading", "waiting-for-docker"))
        return (
            f"{s['loaded']}/{s['total']} loaded, p50 {_secs(s['p50'])}, p99 {_secs(s['p99'])}, "
            f"{busy} downloading, {states['failed']} failed"
        )

    def to_map(self, with_hosts: bool = True) -> dict[str, Any]:
        m: dict[str, Any] = {
            "ref": self.ref,
            "image_id": self.image_id,
            "publisher": self.publisher,
            **self.summary(),
            "missing": list(self.missing),
            "seconds": self.seconds,
            "summary": self.summary_line(),
        }
        if with_hosts:
            m["hosts"] = [h.to_map() for h in self.hosts]
        return m


@dataclass(frozen=True)
class HostView:
    name: str
    role: str
    address: str
    last_seen: float | None
    heartbeat: Heartbeat | None
    images_loaded: int
    stale: bool
    failing: int  # pulls whose latest state is "failed"

    def to_map(self) -> dict[str, Any]:
        hb = self.heartbeat
        return {
            "name": self.name,
            "role": self.role,
            "groups": [],
            "address": self.address,
            "last_seen": self.last_seen,
            "version": hb.version if hb else "",
            "cert_not_after": hb.cert_not_after if hb else None,
            "cache_bytes": hb.cache_bytes if hb else None,
            "cache_budget": hb.cache_budget if hb else None,
            "images_loaded": self.images_loaded,
            "stale": self.stale,
            "failing": self.failing,
        }


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank percentile of sorted `values` (None if empty)."""
    if not values:
        return None
    rank = max(1, math.ceil(p / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f} s" if v < 10 else f"{v:.0f} s"


def is_stale(last_seen: float | None, now: float) -> bool:
    return last_seen is None or now - last_seen > STALE_AFTER


def fleet_hosts(tokens: Iterable[TokenRecord], records: Iterable[HostRecord]) -> set[str]:
    """Hosts that count in every rollout's total: host tokens, not revoked, that have reported."""
    hosts = {t.name for t in tokens if t.role == "host" and not t.revoked}
    return {r.name for r in records if r.name in hosts}


def rollout_view(
    ref: str,
    image_id: str,
    publisher: str,
    reports: Iterable[tuple[str, PullReport]],
    fleet: set[str],
    last_seen: dict[str, float],
    revoked: set[str],
    now: float,
) -> RolloutView:
    pulls = tuple(
        HostPull(host, r, bool(image_id) and r.image_id == image_id, is_stale(last_seen.get(host), now))
        for host, r in sorted(reports)
        if host not in revoked
    )
    # a relay (its pull ends "cached") seeds the image but runs nothing: not a host to wait for
    relays = {p.host for p in pulls if p.report.state == "cached"}
    names = tuple(sorted((fleet | {p.host for p in pulls}) - relays))
    return RolloutView(ref, image_id, publisher, names, pulls)


def host_views(
    tokens: Iterable[TokenRecord], records: Iterable[HostRecord], reports: Iterable[tuple[str, PullReport]], now: float
) -> list[HostView]:
    """Every token that is not revoked and can run an agent, with what it last reported."""
    by_name = {r.name: r for r in records}
    loaded: dict[str, int] = {}
    failing: dict[str, int] = {}
    for host, r in reports:
        if r.state == "loaded":
            loaded[host] = loaded.get(host, 0) + 1
        elif r.state == "failed":
            failing[host] = failing.get(host, 0) + 1
    views = []
    for t in tokens:
        if t.revoked or t.role not in ("host", "builder"):
            continue
        rec = by_name.get(t.name)
        views.append(
            HostView(
                t.name,
                t.role,
                rec.address if rec else "",
                rec.last_seen if rec else None,
                rec.heartbeat if rec else None,
                loaded.get(t.name, 0),
                is_stale(rec.last_seen if rec else None, now),
                failing.get(t.name, 0),
            )
        )
    return views


def visible_repositories(role: str, name: str, publishers: Iterable[tuple[str, str]]) -> set[str] | None:
    """The repositories a token may see rollouts of: None = all (admin); a builder: those it publishes
    into; a host: none. `publishers`: (ref, publisher) of the manifests published now."""
    if role in FLEET_READERS:
        return None
    if role == "builder":
        return {ref.rsplit(":", 1)[0] for ref, publisher in publishers if publisher == name}
    return set()


def canonical_ref(ref: str) -> str:
    try:
        return str(ImageRef.parse(ref))
    except SwarmError as exc:
        raise InvalidInput(f"invalid image reference {ref[:80]!r}") from exc
