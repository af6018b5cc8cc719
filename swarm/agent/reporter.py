"""Tell the tracker how this host's pulls go, for the rollout view (POST /v1/reports).

A pull never waits for the tracker: the pipeline only marks a pull as changed
(`changed`, `finished`, both synchronous and cheap), and one background task
sends the latest state of what changed, plus a heartbeat every HEARTBEAT_EVERY
seconds. At most one report goes out per MIN_SEND_INTERVAL, with progress of
running downloads every PROGRESS_EVERY. While the tracker is slow, down or
refusing, changes pile up as "latest state per pull" (nothing older is kept)
and go out when it answers again, with back-off between tries. A "loaded"
report carries a receipt signed with this host's TLS key (swarm/core/receipts.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from swarm.agent.pull import PullState
from swarm.agent.tracker_client import TrackerClient
from swarm.core.api import MAX_PULLS_PER_REPORT, MAX_TEXT, Heartbeat, PullReport, Receipt, ReportBatch, Stage
from swarm.core.errors import TorrentError, TrackerError, TrackerUnreachable
from swarm.core.receipts import LoadClaim, sign_receipt
from swarm.engine.session import Engine

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 15.0
MIN_SEND_INTERVAL = 1.0
PROGRESS_EVERY = 2.0
SEND_TIMEOUT = 5.0
MAX_BACKOFF = 30.0
#: a report refused this many times in a row for a reason other than an outage: its pulls are dropped
MAX_REFUSALS = 5
#: finished pulls kept for sending, at most (during a long outage); the oldest go first
MAX_QUEUED = 256
_LIVE_STAGES = ("resolving", "downloading", "verifying", "loading", "waiting-for-docker")


class Reporter:
    def __init__(
        self,
        tracker: TrackerClient,
        engine: Engine,
        host: Callable[[], str],
        sign: Callable[[LoadClaim], Receipt],
        heartbeat: Callable[[], Heartbeat],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tracker = tracker
        self._engine = engine
        self._host = host
        self._sign = sign
        self._heartbeat = heartbeat
        self._clock = clock
        self._live: dict[str, PullState] = {}
        self._final: dict[str, PullReport] = {}
        #: refs whose latest state is not yet on the tracker, with a change counter
        self._dirty: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._beat_due = True
        self.sent = 0  # reports the tracker took (for status and tests)
        self.failures = 0  # tries that failed in a row

    # PullObserver: called from the pull pipeline, never blocks

    def changed(self, state: PullState) -> None:
        self._live[state.ref] = state
        self._final.pop(state.ref, None)
        self._mark(state.ref)

    def finished(self, state: PullState, image_id: str | None, error: str | None) -> None:
        self._live.pop(state.ref, None)
        now = self._clock()
        if error is None and image_id is not None and state.outcome == "cached":
            report = self._report(state, "cached", now, image_id=image_id)  # a relay: no load to vouch for
        elif error is None and image_id is not None:
            receipt = self._sign(LoadClaim(self._host(), state.ref, image_id, int(now)))
            report = self._report(state, "loaded", now, image_id=image_id, receipt=receipt)
        else:
            report = self._report(state, "failed", now, error=(error or "failed").splitlines()[0][:MAX_TEXT])
        self._final[state.ref] = report
        self._beat_due = True  # the cache changed
        while len(self._final) > MAX_QUEUED:
            oldest = min(self._final, key=lambda ref: self._final[ref].updated)
            self._final.pop(oldest)
            self._dirty.pop(oldest, None)
        self._mark(state.ref)

    def _mark(self, ref: str) -> None:
        self._dirty[ref] = self._dirty.get(ref, 0) + 1
        self._wake.set()

    # the sender

    async def run(self) -> None:
        next_beat = 0.0
        backoff = MIN_SEND_INTERVAL
        refusals = 0
        while True:
            loop = asyncio.get_running_loop()
            wait = max(0.0, next_beat - loop.time())
            if any(s.stage == "downloading" for s in self._live.values()):
                wait = min(wait, PROGRESS_EVERY)
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass
            self._wake.clear()
            if loop.time() >= next_beat:
                self._beat_due = True
                next_beat = loop.time() + HEARTBEAT_EVERY
            for ref, s in self._live.items():
                if s.stage == "downloading":
                    self._dirty.setdefault(ref, 0)
            refs = sorted(self._dirty, key=lambda r: r not in self._final)[:MAX_PULLS_PER_REPORT]
            if not refs and not self._beat_due:
                continue
            marks = {ref: self._dirty[ref] for ref in refs}
            batch = ReportBatch(
                self._heartbeat() if self._beat_due else None,
                tuple(r for ref in refs if (r := self._current(ref)) is not None),
            )
            try:
                await self._tracker.report(batch, SEND_TIMEOUT)
            except TrackerError as exc:
                self.failures += 1
                refusals = 0 if isinstance(exc, TrackerUnreachable) else refusals + 1
                if self.failures == 1:
                    log.warning("rollout report not delivered (kept, retried with back-off): %s", exc)
                if refusals >= MAX_REFUSALS:
                    log.warning("the tracker keeps refusing the report of %s: dropped", ", ".join(refs))
                    self._delivered(marks)
                    refusals = 0
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                self._wake.set()  # try again at once after the pause
                continue
            if self.failures:
                log.info("rollout reports delivered again after %d failed tries", self.failures)
            self.failures, refusals, backoff = 0, 0, MIN_SEND_INTERVAL
            self.sent += 1
            if batch.heartbeat is not None:
                self._beat_due = False
            self._delivered(marks)
            await asyncio.sleep(MIN_SEND_INTERVAL)

    def _delivered(self, marks: dict[str, int]) -> None:
        """Forget what was sent, unless it changed again since."""
        for ref, mark in marks.items():
            if self._dirty.get(ref) == mark:
                del self._dirty[ref]
                self._final.pop(ref, None)

    def _current(self, ref: str) -> PullReport | None:
        if ref in self._final:
            return self._final[ref]
        state = self._live.get(ref)
        if state is None:
            return None
        stage = state.stage if state.stage in _LIVE_STAGES else "loading"
        return self._report(state, stage, self._clock())

    def _report(
        self,
        state: PullState,
        name: str,
        now: float,
        image_id: str = "",
        error: str = "",
        receipt: Receipt | None = None,
    ) -> PullReport:
        history = [(s, t) for s, t in state.history if s in _LIVE_STAGES]
        stages = tuple(
            Stage(s, t, max(0.0, (history[i + 1][1] if i + 1 < len(history) else now) - t))
            for i, (s, t) in enumerate(history)
        )
        done = total = from_peers = from_builder = 0
        manifest = state.manifest
        if manifest is not None:
            image_id = image_id or manifest.image_id
            for layer in {layer.blob: layer for layer in manifest.layers}.values():
                total += layer.blob_size
                if layer.blob in state.cached or name in ("loaded", "cached"):
                    done += layer.blob_size
                if layer.blob in state.cached:
                    continue
                try:
                    st = self._engine.status(layer.info_hash)
                except TorrentError:
                    continue  # not added yet, or removed after a failure
                if name not in ("loaded", "cached"):
                    done += st.done
                from_builder += st.received_by_role.get("builder", 0)
                from_peers += sum(n for role, n in st.received_by_role.items() if role != "builder")
        started = state.history[0][1] if state.history else now
        return PullReport(
            state.ref, name, image_id, done, total, from_peers, from_builder, stages, error, started, now, receipt
        )


def receipt_signer(key_path: Path, cert_path: Path) -> Callable[[LoadClaim], Receipt]:
    """Sign with the host's TLS key and attach its current certificate (both re-read: renewals)."""

    def sign(claim: LoadClaim) -> Receipt:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError("the host key is not an EC key")
        return sign_receipt(key, cert_path.read_text(), claim)

    return sign


def agent_version() -> str:
    try:
        return version("swarm")
    except PackageNotFoundError:
        return "unknown"
