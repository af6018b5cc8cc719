"""Who each peer connection is, as the tracker attests it: the engine's PeerResolver for agents.

A BitTorrent handshake carries whatever peer id the peer chooses, and
libtorrent does not tell which certificate a connection presented, so any
insider could claim to be the builder and poison "bytes from the builder".
The tracker does know who announced what: GET /v1/peers lists a torrent's
entries with the token each belongs to. `TrackerPeerNames` keeps that list
per torrent and labels each connection with `swarm.core.peerid.attest`;
a connection no entry vouches for is `unverified` (role "?").

Costs: one answer per (torrent, address, port, peer id) is remembered, so
a block costs a dict lookup. A connection not in the cached list makes the
list be fetched again, at most every `refresh_every` seconds per torrent;
the libtorrent alert thread waits for that fetch (at most `wait` seconds)
so that the first blocks of a new peer are not counted as unverified only
because its entry had not been fetched yet. `status()` (the event loop's
thread) never waits. Both caches are bounded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Protocol

from swarm.core.api import PeerEntry
from swarm.core.errors import SwarmError
from swarm.core.peerid import PeerIdentity, attest, unverified

log = logging.getLogger(__name__)

#: at most this many connections' answers and torrents' lists are kept (then the oldest go)
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
    fetched_at: float  # the clock's time of the last attempt, answered or not
    version: int  # grows with every answer: an unverified label is reconsidered after one
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
        clock: Callable[[], float] = time.monotonic,
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
        #: tracker answers fetched (for tests and logs)
        self.fetches = 0

    # PeerResolver

    def identify(self, info_hash: bytes, ip: str, port: int, pid: bytes, wait: bool) -> PeerIdentity:
        ah = announce_hash(info_hash)
        key = (ah, ip, port, pid)
        with self._lock:
            listing = self._listings.get(ah)
            known = self._labels.get(key)
            if known is not None and known[0].role != "?":
                return known[0]
            # unverified so far (or never seen): its entry may have come since; look again now and then
            seen = known is not None and listing is not None and known[1] == listing.version
            who = attest(listing.entries, ip, port, pid) if listing is not None and not seen else None
            pending = None if who is not None else self._refresh_locked(ah)
            if who is None and (pending is None or not wait) and known is not None:
                return known[0]
        if who is None and pending is not None and wait:
            try:
                pending.result(self._wait)
            except (FutureTimeout, Exception):  # no answer in time: unverified for now, looked up again later
                pass
            with self._lock:
                listing = self._listings.get(ah)
                who = attest(listing.entries, ip, port, pid) if listing is not None else None
        with self._lock:
            listing = self._listings.get(ah)
            label = who or unverified(pid)
            self._remember(key, label, listing.version if listing is not None else 0)
        return label

    # the tracker's list

    def _refresh_locked(self, ah: bytes) -> Future[None] | None:
        """The fetch to wait for (a new one unless the list is fresh); None: fresh, nothing to wait for."""
        listing = self._listings.get(ah)
        if listing is not None and listing.pending is not None and not listing.pending.done():
            return listing.pending
        now = self._clock()
        if listing is not None and now - listing.fetched_at < self._refresh_every:
            return None
        if listing is None:
            if len(self._listings) >= self._max_torrents:
                del self._listings[next(iter(self._listings))]
            listing = self._listings[ah] = _Listing([], now, 0)
        listing.fetched_at = now
        if self._loop.is_closed():
            return None
        listing.pending = asyncio.run_coroutine_threadsafe(self._fetch(ah), self._loop)
        return listing.pending

    async def _fetch(self, ah: bytes) -> None:
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
            if listing is not None:
                listing.entries = entries
                listing.version += 1

    def _remember(self, key: tuple[bytes, str, int, bytes], label: PeerIdentity, version: int) -> None:
        if key not in self._labels and len(self._labels) >= self._max_connections:
            del self._labels[next(iter(self._labels))]
        self._labels[key] = (label, version)
