"""Peer labels: `attest` (who a tracker entry vouches for) and TrackerPeerNames' caching and waits.

The tracker here is a fake list source (pure logic); the real tracker over HTTP is in
tests/integration/test_peer_names_http.py and tests/e2e/test_e2e_attacks.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from swarm.agent.peer_names import TrackerPeerNames
from swarm.core.api import PeerEntry
from swarm.core.errors import InvalidInput, TrackerUnreachable
from swarm.core.peerid import PeerIdentity, attest, peer_tag, unverified
from tests.support.threadloop import loop_in_thread


def pid_of(name: str, role: str = "host") -> bytes:
    tag = peer_tag(name, role).encode()
    return tag + b"r" * (20 - len(tag))


BUILDER = PeerEntry("10.0.0.2", 6881, pid_of("builder", "builder"), "builder", "builder")
MALLORY = PeerEntry("10.0.0.9", 6881, pid_of("mallory"), "mallory", "host")
IH = bytes(range(32))


def test_attest_by_exact_address_then_by_address_and_claim() -> None:
    entries = [BUILDER, MALLORY]
    # we dialled mallory's address: mallory, whatever peer id came back
    assert attest(entries, "10.0.0.9", 6881, BUILDER.peer_id) == PeerIdentity("host", "mallory")
    # mallory dialled us (a random port) claiming the builder: nothing vouches
    assert attest(entries, "10.0.0.9", 50123, BUILDER.peer_id) is None
    # the builder dialled us: its address and its announced peer id
    assert attest(entries, "10.0.0.2", 50123, BUILDER.peer_id) == PeerIdentity("builder", "builder")
    assert attest(entries, "::ffff:10.0.0.2", 50123, BUILDER.peer_id) == PeerIdentity("builder", "builder")
    # libtorrent sends a fresh random suffix on every connection: the claim (role, name) is what matches
    fresh = BUILDER.peer_id[:-3] + b"Z!9"
    assert attest(entries, "10.0.0.2", 50123, fresh) == PeerIdentity("builder", "builder")
    assert attest(entries, "10.0.0.2", 50123, pid_of("builder")) is None  # the name as a host: another claim
    foreign = PeerEntry("10.0.0.5", 6881, b"-qB4650-abcdefghijkl", "h5", "host")
    assert attest([foreign], "10.0.0.5", 50123, b"-qB4650-abcdefghijkl") is None  # a claim of nothing
    assert attest([foreign], "10.0.0.5", 6881, b"-qB4650-zzzzzzzzzzzz") == PeerIdentity("host", "h5")
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
        if announce_hash != IH[:20]:
            return []
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
    with loop_in_thread() as loop:
        yield loop


def test_one_fetch_serves_every_block_and_a_batch_of_new_peers(loop: asyncio.AbstractEventLoop) -> None:
    tracker, clock = FakeTracker([BUILDER]), Clock()
    names = TrackerPeerNames(tracker, loop, clock=clock)
    for _ in range(1000):  # the blocks of one connection
        got = names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, seen_at=clock.now)
        assert got == PeerIdentity("builder", "builder")
    assert tracker.calls == 1
    # fifty hosts announced, then connected: their first blocks, in one batch of alerts, share one fetch
    hosts = [PeerEntry(f"10.0.1.{i}", 6881, pid_of(f"h{i}"), f"h{i}", "host") for i in range(50)]
    tracker.entries += hosts
    clock.now += 1
    for h in hosts:
        assert names.identify(IH, h.ip, 50000, h.peer_id, seen_at=clock.now) == PeerIdentity("host", h.token)
    assert tracker.calls == 2
    # an impostor in the same batch: the list fetched after its block came does not vouch for it
    assert names.identify(IH, "10.0.0.9", 40000, BUILDER.peer_id, seen_at=clock.now) == PeerIdentity("?", "?builder")
    assert tracker.calls == 2


def test_a_peer_that_announced_after_the_last_fetch_is_verified_at_its_first_block(
        loop: asyncio.AbstractEventLoop) -> None:
    tracker, clock = FakeTracker([BUILDER]), Clock()
    names = TrackerPeerNames(tracker, loop, refresh_every=5.0, clock=clock)
    assert names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, seen_at=clock.now).role == "builder"
    tracker.entries.append(MALLORY)  # announced after our fetch, then dialled us at once
    clock.now += 0.01
    assert names.identify(IH, "10.0.0.9", 50000, MALLORY.peer_id, seen_at=clock.now) == PeerIdentity("host", "mallory")
    assert tracker.calls == 2
    # an impostor's blocks for 100 s: a fetch at most every refresh_every, not one per block
    for _ in range(1000):
        clock.now += 0.1
        assert names.identify(IH, "10.0.0.7", 50001, BUILDER.peer_id, seen_at=clock.now).role == "?"
    assert tracker.calls <= 2 + 1 + 100 / 5.0


def test_an_unverified_peer_is_verified_once_its_entry_arrives(loop: asyncio.AbstractEventLoop) -> None:
    tracker, clock = FakeTracker([]), Clock()
    names = TrackerPeerNames(tracker, loop, refresh_every=5.0, clock=clock)
    assert names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, seen_at=clock.now).role == "?"
    tracker.entries.append(BUILDER)
    clock.now += 5.0
    # the remembered "unverified" asks for a new list without waiting; a later block sees the answer
    deadline = time.monotonic() + 10
    while names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, seen_at=clock.now).role != "builder":
        assert time.monotonic() < deadline, "the builder was never verified"
        time.sleep(0.01)
    assert tracker.calls == 2


def test_status_never_waits_and_a_failing_tracker_means_unverified(loop: asyncio.AbstractEventLoop) -> None:
    tracker = FakeTracker([BUILDER])
    tracker.delay = 2.0
    names = TrackerPeerNames(tracker, loop, wait=5.0)
    block_came = time.time()
    started = time.monotonic()
    assert names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, seen_at=None).role == "?"
    assert time.monotonic() - started < 1.0
    # the alert thread waits for the fetch under way (begun after the block came), and gets the answer
    assert names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, seen_at=block_came).role == "builder"
    assert tracker.calls == 1

    failing = FakeTracker([BUILDER])
    failing.fail = True
    other = TrackerPeerNames(failing, loop)
    started = time.monotonic()
    assert other.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, seen_at=time.time()) == PeerIdentity("?", "?builder")
    assert failing.calls == 1 and time.monotonic() - started < 2.0


def test_a_tracker_slower_than_the_wait_gives_unverified_in_bounded_time(loop: asyncio.AbstractEventLoop) -> None:
    tracker = FakeTracker([BUILDER])
    tracker.delay = 3.0
    names = TrackerPeerNames(tracker, loop, wait=0.2)
    started = time.monotonic()
    assert names.identify(IH, "10.0.0.2", 6881, BUILDER.peer_id, seen_at=time.time()).role == "?"
    assert time.monotonic() - started < 2.0


def test_caches_are_bounded(loop: asyncio.AbstractEventLoop) -> None:
    tracker, clock = FakeTracker([BUILDER]), Clock()
    names = TrackerPeerNames(tracker, loop, max_connections=50, max_torrents=3, clock=clock)
    for port in range(1000):
        names.identify(IH, "10.0.0.2", 20000 + port, BUILDER.peer_id, seen_at=clock.now)
    assert len(names._labels) <= 50
    assert tracker.calls == 1
    for i in range(10):
        names.identify(bytes([i]) * 32, "10.0.0.2", 6881, BUILDER.peer_id, seen_at=None)
    assert len(names._listings) <= 3
