"""Peer labels: `attest` (who a tracker entry vouches for) and TrackerPeerNames' caching and waits.

The tracker here is a fake list source (pure logic); the real tracker over HTTP is in
tests/integration/test_peer_names_http.py and tests/e2e/test_e2e_attacks.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from swarm.agent.peer_names import TrackerPeerNames
from swarm.core.api import PeerEntry
from swarm.core.errors import InvalidInput, TrackerUnreachable
from swarm.core.peerid import PeerIdentity, attest, peer_tag, unverified


def pid_of(name: str, role: str = "host") -> bytes:
    tag = peer_tag(name, role).encode()
    return tag + b"r" * (20 - len(tag))


BUILDER = PeerEntry("10.0.0.2", 6881, pid_of("builder", "builder"), "builder", "builder")
MALLORY = PeerEntry("10.0.0.9", 6881, pid_of("mallory"), "mallory", "host")
IH = bytes(range(32))


def test_attest_by_exact_address_then_by_address_and_peer_id() -> None:
    entries = [BUILDER, MALLORY]
    # we dialled mallory's address: mallory, whatever peer id came back
    assert attest(entries, "10.0.0.9", 6881, BUILDER.peer_id) == PeerIdentity("host", "mallory")
    # mallory dialled us (a random port) claiming the builder: nothing vouches
    assert attest(entries, "10.0.0.9", 50123, BUILDER.peer_id) is None
    # the builder dialled us: its address and its announced peer id
    assert attest(entries, "10.0.0.2", 50123, BUILDER.peer_id) == PeerIdentity("builder", "builder")
    assert attest(entries, "::ffff:10.0.0.2", 50123, BUILDER.peer_id) == PeerIdentity("builder", "builder")
    assert attest(entries, "not an address", 1, BUILDER.peer_id) is None
    assert attest([], "10.0.0.2", 6881, BUILDER.peer_id) is None


def test_unverified_never_carries_a_role() -> None:
    assert unverified(BUILDER.peer_id) == PeerIdentity("?", "?builder")
    assert unverified(b"-qB4650-abcdefghijkl") == PeerIdentity("?", "?")


def test_peer_entries_from_the_wire_are_validated() -> None:
    assert PeerEntry.from_map(BUILDER.to_map()) == BUILDER
    for bad in (None, [], {**BUILDER.to_map(), "port": 0}, {**BUILDER.to_map(), "port": True},
                {**BUILDER.to_map(), "peer_id": b"short"}, {**BUILDER.to_map(), "role": "root"},
                {**BUILDER.to_map(), "token": ""}, {**BUILDER.to_map(), "ip": 7}):
        with pytest.raises(InvalidInput):
            PeerEntry.from_map(bad)


class FakeTracker:
    def __init__(self, entries: list[PeerEntry]) -> None:
        self.entries = entries
        self.calls = 0
        self.fail = False
        self.delay = 0.0

    async def peers(self, announce_hash: bytes, timeout: float = 10.0) -> list[PeerEntry]:
        assert announce_hash == IH[:20]
        self.calls += 1
        await asyncio.sleep(self.delay)  # a slow tracker, not synchronisation
        if self.fail:
            raise TrackerUnreachable("tracker unreachable")
        return list(self.entries)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_one_fetch_serves_every_block_and_unknown_peers_refresh_at_most_every_interval(
        loop: asyncio.AbstractEventLoop) -> None:
    tracker, clock = FakeTracker([BUILDER]), Clock()
    names = TrackerPeerNames(tracker, loop, refresh_every=5.0, clock=clock)
    for _ in range(1000):  # the blocks of one connection
        assert names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, wait=True) == PeerIdentity("builder", "builder")
    assert tracker.calls == 1
    # an impostor right after: the list is fresh, so no new fetch, and it is unverified
    for _ in range(100):
        assert names.identify(IH, "10.0.0.9", 40000, BUILDER.peer_id, wait=True) == PeerIdentity("?", "?builder")
    assert tracker.calls == 1
    # a peer announces later: once the interval has passed, the next sight of it fetches again
    tracker.entries.append(MALLORY)
    clock.now += 5.0
    assert names.identify(IH, "10.0.0.9", 6881, MALLORY.peer_id, wait=True) == PeerIdentity("host", "mallory")
    assert tracker.calls == 2
    # the impostor's label is looked at again after a new answer, and stays unverified
    assert names.identify(IH, "10.0.0.9", 40000, BUILDER.peer_id, wait=True).role == "?"
    assert tracker.calls == 2


def test_an_unverified_peer_is_verified_once_its_entry_arrives(loop: asyncio.AbstractEventLoop) -> None:
    tracker, clock = FakeTracker([]), Clock()
    names = TrackerPeerNames(tracker, loop, refresh_every=5.0, clock=clock)
    assert names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, wait=True).role == "?"
    tracker.entries.append(BUILDER)
    clock.now += 5.0
    # the cached "unverified" asks for a new list without waiting; a later block sees the answer
    names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, wait=True)
    deadline = time.monotonic() + 10
    while names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, wait=True).role != "builder":
        assert time.monotonic() < deadline, "the builder was never verified"
        time.sleep(0.01)
    assert tracker.calls == 2


def test_status_never_waits_and_a_failing_tracker_means_unverified(loop: asyncio.AbstractEventLoop) -> None:
    tracker = FakeTracker([BUILDER])
    tracker.delay = 2.0
    names = TrackerPeerNames(tracker, loop, wait=5.0)
    started = time.monotonic()
    assert names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, wait=False).role == "?"
    assert time.monotonic() - started < 1.0
    # the alert thread waits for the fetch under way, and gets the answer
    assert names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, wait=True).role == "builder"
    assert tracker.calls == 1

    failing = FakeTracker([BUILDER])
    failing.fail = True
    other = TrackerPeerNames(failing, loop)
    assert other.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, wait=True) == PeerIdentity("?", "?builder")


def test_a_tracker_slower_than_the_wait_gives_unverified_in_bounded_time(loop: asyncio.AbstractEventLoop) -> None:
    tracker = FakeTracker([BUILDER])
    tracker.delay = 3.0
    names = TrackerPeerNames(tracker, loop, wait=0.2)
    started = time.monotonic()
    assert names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, wait=True).role == "?"
    assert time.monotonic() - started < 2.0


def test_caches_are_bounded(loop: asyncio.AbstractEventLoop) -> None:
    tracker = FakeTracker([BUILDER])
    names = TrackerPeerNames(tracker, loop, max_connections=50)
    for port in range(1000):
        names.identify(IH, "10.0.0.2", 20000 + port, BUILDER.peer_id, wait=True)
    assert len(names._labels) <= 50
    assert tracker.calls == 1
