"""The pipelined Redis connection of the announce path, against a real redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from swarm.core.errors import SwarmError
from swarm.tracker.peers import resp
from swarm.tracker.peers.base import Peer
from swarm.tracker.peers.redis import RedisPeerStore
from tests.support.redis import RedisServer

SCRIPT = b"return {tonumber(ARGV[1]) * 2, ARGV[2], redis.call('INCR', KEYS[1] or 'swarm:test:n')}"


def test_replies_parse_whole_or_not_at_all() -> None:
    wire = b"*4\r\n:7\r\n$4\r\na\r\nb\r\n$-1\r\n*1\r\n+OK\r\n-NOSCRIPT no\r\n"
    value, pos = resp.parse(wire, 0)
    assert value == [7, b"a\r\nb", None, [b"OK"]]
    error, end = resp.parse(wire, pos)
    assert isinstance(error, resp.ReplyError) and str(error).startswith("NOSCRIPT") and end == len(wire)
    for cut in range(1, pos):  # any prefix of a reply is incomplete, never a wrong value
        with pytest.raises(resp._Incomplete):
            resp.parse(wire[:cut], 0)
    assert resp.encode(("GET", b"k\r\n", 5)) == b"*3\r\n$3\r\nGET\r\n$3\r\nk\r\n\r\n$1\r\n5\r\n"


async def test_concurrent_calls_get_their_own_replies_and_scripts_load_themselves(tmp_path: Path) -> None:
    with RedisServer.start(tmp_path / "redis") as server:
        pipe = resp.Pipe(server.url)
        try:
            await pipe.call("SCRIPT", "FLUSH")
            replies = await asyncio.gather(*(pipe.evalsha(SCRIPT, [i, f"x{i}"]) for i in range(300)))
            assert [r[:2] for r in replies] == [[2 * i, f"x{i}".encode()] for i in range(300)]
            assert sorted(r[2] for r in replies) == list(range(1, 301))  # each ran once
            with pytest.raises(resp.ReplyError):
                await pipe.call("NOSUCHCOMMAND")
            assert await pipe.call("PING") == b"PONG"  # the connection survives an error reply
        finally:
            await pipe.aclose()


async def test_a_lost_redis_fails_announces_then_they_reconnect(tmp_path: Path) -> None:
    with RedisServer.start(tmp_path / "redis") as server:
        store = RedisPeerStore(server.url, ttl=60)
        try:
            ih = bytes(range(20))
            first = await store.handle(ih, Peer("10.0.0.1", 7001, b"a" * 20, 0, "h1"), "started", 50)
            assert first.counts.complete == 1
            await store._pipe.call("CLIENT", "KILL", "TYPE", "normal")  # type: ignore[union-attr]
        except SwarmError:
            pass  # the kill may also take the pipe's own connection before it answers
        try:
            handout = None
            for _ in range(2):  # the first call after the kill may still meet the dead socket
                try:
                    handout = await store.handle(ih, Peer("10.0.0.2", 7002, b"b" * 20, 5, "h2"), "started", 50)
                    break
                except SwarmError as exc:
                    assert "peer store (redis) failed" in str(exc)
            assert handout is not None and [p.peer_id for p in handout.peers] == [b"a" * 20]
        finally:
            await store.aclose()
        server.stop()
        down = RedisPeerStore(server.url, ttl=60)
        try:
            with pytest.raises(SwarmError, match="peer store"):
                await down.handle(ih, Peer("10.0.0.3", 7003, b"c" * 20, 5, "h3"), "started", 50)
        finally:
            await down.aclose()


def test_urls_with_options_are_left_to_redis_py() -> None:
    assert resp.supported("redis://127.0.0.1:6379/0") and resp.supported("rediss://:pw@r.example:6380/2")
    assert not resp.supported("redis://127.0.0.1:6379?db=1") and not resp.supported("redis+sentinel://x")
