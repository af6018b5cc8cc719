"""What agents last reported, for the rollout view: one heartbeat row per host and one row per
(host, pull) holding the latest PullReport (msgpack). Mixed into SQLStorage; same SQL on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from swarm.core import wire
from swarm.core.api import Heartbeat, PullReport

#: pull rows kept per host; past that the least recently updated go
MAX_PULLS_PER_HOST = 256


@dataclass(frozen=True)
class HostRecord:
    name: str
    address: str
    heartbeat: Heartbeat
    last_seen: float


class RolloutStore(Protocol):
    def save_report(
        self, host: str, address: str, heartbeat: Heartbeat | None, pulls: list[PullReport], now: float
    ) -> None: ...

    def host_records(self) -> list[HostRecord]: ...

    def pull_reports(self, ref: str | None = None) -> list[tuple[str, PullReport]]:
        """(host, report) for `ref`, or for every ref."""


class RolloutSQL:
    """RolloutStore over the SQLStorage primitives (`_tx`, `_x`, `_all`)."""

    def _tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _x(self, c: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        raise NotImplementedError

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        raise NotImplementedError

    def save_report(
        self, host: str, address: str, heartbeat: Heartbeat | None, pulls: list[PullReport], now: float
    ) -> None:
        with self._tx() as c:
            if heartbeat is not None:
                hb = heartbeat
                self._x(
                    c,
                    "INSERT INTO host_reports (name, address, version, cache_bytes, cache_budget, "
                    "cert_not_after, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE "
                    "SET address = excluded.address, version = excluded.version, "
                    "cache_bytes = excluded.cache_bytes, cache_budget = excluded.cache_budget, "
                    "cert_not_after = excluded.cert_not_after, last_seen = excluded.last_seen",
                    (host, address, hb.version, hb.cache_bytes, hb.cache_budget, hb.cert_not_after, now),
                )
            else:
                self._x(c, "UPDATE host_reports SET last_seen = ?, address = ? WHERE name = ?", (now, address, host))
            for p in pulls:
                self._x(
                    c,
                    "INSERT INTO pull_reports (host, ref, report, state, image_id, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (host, ref) DO UPDATE SET "
                    "report = excluded.report, state = excluded.state, image_id = excluded.image_id, "
                    "updated = excluded.updated",
                    (host, p.ref, wire.pack(p.to_map()), p.state, p.image_id, now),
                )
            if pulls:
                self._x(
                    c,
                    "DELETE FROM pull_reports WHERE host = ? AND ref NOT IN (SELECT ref FROM pull_reports "
                    "WHERE host = ? ORDER BY updated DESC LIMIT ?)",
                    (host, host, MAX_PULLS_PER_HOST),
                )

    def host_records(self) -> list[HostRecord]:
        rows = self._all(
            "SELECT name, address, version, cache_bytes, cache_budget, cert_not_after, last_seen "
            "FROM host_reports ORDER BY name"
        )
        return [HostRecord(r[0], r[1], Heartbeat(r[2], int(r[3]), int(r[4]), int(r[5])), float(r[6])) for r in rows]

    def pull_reports(self, ref: str | None = None) -> list[tuple[str, PullReport]]:
        if ref is None:
            rows = self._all("SELECT host, report FROM pull_reports ORDER BY ref, host")
        else:
            rows = self._all("SELECT host, report FROM pull_reports WHERE ref = ? ORDER BY host", (ref,))
        return list(_decode(rows))


def _decode(rows: list[Any]) -> Iterator[tuple[str, PullReport]]:
    for host, blob in rows:
        yield str(host), PullReport.from_map(wire.unpack(bytes(blob)))
