"""The tracker's side of the rollout view: agents' reports in, fleet state out, with who may see what.

Reports: any token that runs an agent (host, builder) reports for itself only (the host is the
token's name); bodies are at most MAX_REPORT_BODY with MAX_PULLS_PER_REPORT pulls, and storage keeps
at most MAX_PULLS_PER_HOST pulls per host. A "loaded" report must carry a receipt signed by the key
of a certificate this tracker issued to that host (swarm/core/receipts.py), else the whole report is
refused (400), so that a "loaded" on the page is one the host vouches for.

Reading: admin tokens see everything; builder tokens the rollouts of repositories they publish into
(not the host list); host tokens nothing (403). `*_view` methods are the same without a token, for the
operator on the tracker's data dir.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from swarm.core import wire
from swarm.core.api import MAX_REPORT_BODY, PullReport, ReportBatch
from swarm.core.certs import load_cert
from swarm.core.errors import Forbidden, InvalidInput, NotFound
from swarm.core.receipts import verify_receipt
from swarm.tracker import rollout
from swarm.tracker.ca import CertificateAuthority
from swarm.tracker.rollout import HostView, RolloutView
from swarm.tracker.storage.base import Storage, TokenRecord

#: histogram buckets of time to loaded, seconds
LOADED_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800)


class Fleet:
    def __init__(self, storage: Storage, ca: CertificateAuthority, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.ca = ca
        self._clock = clock
        self.time_to_loaded: Histogram | None = None

    def register_metrics(self, registry: Any) -> None:
        """Per-image gauges (read at scrape time) and the time-to-loaded histogram, on `registry`."""
        self.time_to_loaded = Histogram(
            "swarm_tracker_rollout_time_to_loaded_seconds",
            "Time from the start of a host's pull to its signed 'loaded' report",
            buckets=LOADED_BUCKETS,
            registry=registry,
        )
        registry.register(_RolloutGauges(self))

    # reports

    def report(self, record: TokenRecord, body: bytes, address: str) -> None:
        if record.role not in ("host", "builder"):
            raise Forbidden(f"token {record.name!r} has role {record.role}: only agents report")
        if len(body) > MAX_REPORT_BODY:
            raise InvalidInput(f"report of {len(body)} bytes is over the {MAX_REPORT_BODY} byte limit")
        batch = ReportBatch.from_map(wire.unpack_map(body, MAX_REPORT_BODY))
        issued = None
        pulls: list[PullReport] = []
        for pull in batch.pulls:
            pull = _with_ref(pull, rollout.canonical_ref(pull.ref))
            if pull.state == "loaded":
                if pull.receipt is None:
                    raise InvalidInput(f"a loaded report of {pull.ref} needs a signed receipt")
                claim = verify_receipt(pull.receipt, self.ca.cert)
                if (claim.host, claim.ref, claim.image_id) != (record.name, pull.ref, pull.image_id):
                    raise InvalidInput(
                        f"the receipt of {pull.ref} vouches for {claim.host}'s {claim.ref} "
                        f"({claim.image_id[:19]}), not for this report"
                    )
                if issued is None:
                    issued = {serial for serial, _na, _at in self.storage.certificates(record.name)}
                serial = format(load_cert(pull.receipt.certificate).serial_number, "x")
                if serial not in issued:
                    raise InvalidInput("the receipt's certificate was not issued to this host by this tracker")
            pulls.append(pull)
        newly_loaded = self._newly_loaded(record.name, pulls)
        self.storage.save_report(record.name, address, batch.heartbeat, pulls, self._clock())
        if self.time_to_loaded is not None:
            for seconds in newly_loaded:
                self.time_to_loaded.observe(seconds)

    def _newly_loaded(self, host: str, pulls: list[PullReport]) -> list[float]:
        out = []
        for pull in pulls:
            if pull.state != "loaded":
                continue
            before = [r for h, r in self.storage.pull_reports(pull.ref) if h == host]
            if before and before[0].state == "loaded" and before[0].image_id == pull.image_id:
                continue
            out.append(max(0.0, pull.updated - pull.started))
        return out

    # reading, for a token

    def hosts(self, record: TokenRecord) -> list[HostView]:
        if record.role not in rollout.FLEET_READERS:
            raise Forbidden(f"token {record.name!r} has role {record.role}: only admin tokens list hosts")
        return self.hosts_view()

    def rollouts(self, record: TokenRecord) -> list[RolloutView]:
        repos = self._visible(record)
        return [v for v in self.rollouts_view() if repos is None or v.ref.rsplit(":", 1)[0] in repos]

    def rollout(self, record: TokenRecord, ref: str) -> RolloutView:
        key = rollout.canonical_ref(ref)
        repos = self._visible(record)
        if repos is not None and key.rsplit(":", 1)[0] not in repos:
            raise Forbidden(f"token {record.name!r} does not publish into {key.rsplit(':', 1)[0]}")
        return self.rollout_view(key)

    def _visible(self, record: TokenRecord) -> set[str] | None:
        if record.role == "host":
            raise Forbidden(f"token {record.name!r} has role host: it sees nothing of other hosts")
        return rollout.visible_repositories(
            record.role, record.name, ((m.ref, m.publisher) for m in self.storage.manifests())
        )

    # reading, for the operator

    def hosts_view(self) -> list[HostView]:
        return rollout.host_views(
            self.storage.tokens(), self.storage.host_records(), self.storage.pull_reports(), self._clock()
        )

    def rollout_view(self, ref: str) -> RolloutView:
        key = rollout.canonical_ref(ref)
        published = {m.ref: m for m in self.storage.manifests()}
        reports = self.storage.pull_reports(key)
        if key not in published and not reports:
            raise NotFound(f"nothing is known of {key}: not published, no host reported it")
        return self._view(key, published, reports)

    def rollouts_view(self) -> list[RolloutView]:
        published = {m.ref: m for m in self.storage.manifests()}
        by_ref: dict[str, list[tuple[str, PullReport]]] = {ref: [] for ref in published}
        for host, report in self.storage.pull_reports():
            by_ref.setdefault(report.ref, []).append((host, report))
        return [self._view(ref, published, reports) for ref, reports in sorted(by_ref.items())]

    def _view(self, ref: str, published: dict[str, Any], reports: list[tuple[str, PullReport]]) -> RolloutView:
        tokens = self.storage.tokens()
        records = self.storage.host_records()
        entry = published.get(ref)
        return rollout.rollout_view(
            ref,
            entry.image_id if entry else "",
            entry.publisher if entry else "",
            reports,
            rollout.fleet_hosts(tokens, records),
            {r.name: r.last_seen for r in records},
            {t.name for t in tokens if t.revoked},
            self._clock(),
        )


def _with_ref(pull: PullReport, ref: str) -> PullReport:
    return pull if pull.ref == ref else replace(pull, ref=ref)


class _RolloutGauges(Collector):
    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def collect(self) -> Iterator[Any]:
        loaded = GaugeMetricFamily(
            "swarm_tracker_rollout_hosts_loaded",
            "Hosts whose latest report says they loaded the image published now",
            labels=["ref"],
        )
        total = GaugeMetricFamily(
            "swarm_tracker_rollout_hosts_total", "Hosts counted in the rollout of the image", labels=["ref"]
        )
        for view in self._fleet.rollouts_view():
            loaded.add_metric([view.ref], len(view.loaded))
            total.add_metric([view.ref], len(view.fleet))
        yield loaded
        yield total
