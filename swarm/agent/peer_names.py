"""Who each peer connection is, as the tracker attests it: the engine's PeerResolver for agents.

A BitTorrent handshake carries whatever peer id the peer chooses, and
libtorrent does not tell which certificate a connection presented, so any
insider could claim to be the builder and poison "bytes from the builder".
The tracker does know who announced what: GET /v1/peers lists a torrent's
entries with the token each belongs to. `TrackerPeerNames` keeps that list
per torrent and labels each connection with `swarm.core.peerid.attest`;
a connection no entry vouches for is `unverified` (role "?").

When: a peer announces before it connects, so a list whose fetch began
after a peer's first block arrived holds that peer's entry. The first block
of a connection the cached list does not vouch for therefore waits (in the
libtorrent alert thread, at most `wait` seconds) for such a list; every new
connection of one batch of alerts shares one fetch. A connection left
unverified after that is looked at again every `refresh_every` seconds
without waiting; `status()` (the event loop's thread) never waits.

Costs: one label per (torrent, address, port, peer id) is remembered, so a
block costs a dict lookup; known peers cost no fetch at all. Both caches
are bounded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from swarm.core.api import PeerEntry
from swarm.core.errors import SwarmError
from swarm.core.peerid import PeerIdentity, attest, unverified

log = logging.getLogger(__name__)

#: at most this many connections' labels and torrents' lists are kept (then the oldest go)
MAX_CONNECTIONS = 8192
MAX_TORRENTS = 1024
REFRESH_EVERY = 5.0
WAIT = 3.0


class PeerSource(Protocol):
    """The tracker's peer list (swarm/agent/tracker_client.py TrackerClient.peers)."""

    async def peers(self, announce_hash: bytes, timeout: float = ...) -> list[PeerEntry]: ...


@dataclass
class _Listing:
    entries: list[PeerEntry]
    version: int = 0  # grows with every answer: an unverified label is reconsidered after one
    tried_at: float = float("-inf")  # when the last fetch began (answered or not)
    answered_at: float = float("-inf")  # when the fetch of `entries` began
    pending: Future[None] | None = None


def announce_hash(info_hash: bytes) -> bytes:
    """The hash the tracker knows a torrent by (a v2 info-hash cut to 20 bytes)."""
    return info_hash[:20]


class TrackerPeerNames:
    def __init__(
        self,
        tracker: PeerSource,
        loop: asyncio.AbstractEventLoop,
        *,
        refresh_every: float = REFRESH_EVERY,
        wait: float = WAIT,
        max_connections: int = MAX_CONNECTIONS,
        max_torrents: int = MAX_TORRENTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tracker = tracker
        self._loop = loop
        self._refresh_every = refresh_every
        self._wait = wait
        self._max_connections = max_connections
        self._max_torrents = max_torrents
        self._clock = clock
        self._lock = threading.Lock()
        self._listings: dict[bytes, _Listing] = {}
        #: (announce hash, ip, port, peer id) -> (label, listing version it was decided on)
        self._labels: dict[tuple[bytes, str, int, bytes], tuple[PeerIdentity, int]] = {}
        #: tracker answers received (for tests)
        self.fetches = 0

    # PeerResolver

    def identify(self, info_hash: bytes, ip: str, port: int, pid: bytes, seen_at: float | None) -> PeerIdentity:
        ah = announce_hash(info_hash)
        key = (ah, ip, port, pid)
        with self._lock:
            listing = self._listing(ah)
            known = self._labels.get(key)
            if known is not None and (known[0].role != "?" or known[1] == listing.version):
                if known[0].role == "?":
                    self._fetch_locked(ah, listing, self._refresh_every)  # its entry may come yet
                return known[0]
            who = attest(listing.entries, ip, port, pid)
            version = listing.version
            if who is None and (seen_at is None or known is not None):
                self._fetch_locked(ah, listing, self._refresh_every)
        if who is None and seen_at is not None and known is None:
            who, version = self._attest_after(ah, seen_at, ip, port, pid)
        if who is None and seen_at is None:
            return unverified(pid)  # not remembered: the alert thread's first look still waits for a list
        label = who or unverified(pid)
        with self._lock:
            if key not in self._labels and len(self._labels) >= self._max_connections:
                del self._labels[next(iter(self._labels))]
            self._labels[key] = (label, version)
        return label

    def _attest_after(
        self, ah: bytes, seen_at: float, ip: str, port: int, pid: bytes
    ) -> tuple[PeerIdentity | None, int]:
        """Attest against a list fetched after `seen_at` (waiting for one, at most `wait` seconds)."""
        deadline = time.monotonic() + self._wait
        while True:
            with self._lock:
                listing = self._listing(ah)
                if listing.answered_at >= seen_at:
                    return attest(listing.entries, ip, port, pid), listing.version
                pending = listing.pending if listing.pending is not None and not listing.pending.done() else None
                if pending is None and listing.tried_at >= seen_at:
                    return None, listing.version  # that fetch failed: no waiting for another
                pending = pending or self._fetch_locked(ah, listing, 0.0)
            remaining = deadline - time.monotonic()
            if pending is None or remaining <= 0:
                return None, listing.version
            try:
                pending.result(remaining)
            except Exception:  # too slow: unverified for now, looked at again later
                return None, listing.version

    # the tracker's lists

    def _listing(self, ah: bytes) -> _Listing:
        listing = self._listings.get(ah)
        if listing is None:
            if len(self._listings) >= self._max_torrents:
                del self._listings[next(iter(self._listings))]
            listing = self._listings[ah] = _Listing([])
        return listing

    def _fetch_locked(self, ah: bytes, listing: _Listing, max_age: float) -> Future[None] | None:
        """The fetch under way, or a new one if the last began more than `max_age` ago (else None)."""
        if listing.pending is not None and not listing.pending.done():
            return listing.pending
        now = self._clock()
        if now - listing.tried_at < max_age or self._loop.is_closed():
            return None
        listing.tried_at = now
        listing.pending = asyncio.run_coroutine_threadsafe(self._fetch(ah, now), self._loop)
        return listing.pending

    async def _fetch(self, ah: bytes, started: float) -> None:
        try:
            entries = await self._tracker.peers(ah)
        except SwarmError as exc:
            log.debug("peer names of torrent %s: the tracker did not answer (%s)", ah.hex()[:12], exc)
            return
        except Exception:  # this runs for the alert thread: nothing may escape to it
            log.exception("peer names of torrent %s: fetching the tracker's list failed", ah.hex()[:12])
            return
        with self._lock:
            self.fetches += 1
            listing = self._listings.get(ah)
            if listing is not None and started >= listing.answered_at:
                listing.entries, listing.answered_at = entries, started
                listing.version += 1
