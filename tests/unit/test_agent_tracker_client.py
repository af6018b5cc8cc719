"""The agent's tracker client against an impostor tracker on loopback: bounded reads, watch entries checked."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from swarm.agent.tracker_client import MAX_ANSWER, TrackerClient
from swarm.core import wire
from swarm.core.errors import TrackerError
from swarm.core.tokens import JoinToken

GOOD = {"ref": "myapp:1", "image_id": "sha256:" + "a" * 64, "seq": 3, "published": 1, "publisher": "b1"}


async def _huge(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()  # chunked: no Content-Length to refuse up front
    await resp.prepare(request)
    chunk = b"\0" * (1024 * 1024)
    try:
        for _ in range(MAX_ANSWER // len(chunk) + 64):
            await resp.write(chunk)
    except (ConnectionError, RuntimeError):
        pass  # the agent hung up, as it should
    return resp


async def _watch(request: web.Request) -> web.Response:
    bad = [{"ref": "myapp:1\n", **{k: v for k, v in GOOD.items() if k != "ref"}}, {"ref": "x"}, "junk",
           {**GOOD, "seq": -1}]
    return web.Response(body=wire.pack({"seq": 3, "manifests": [*bad, GOOD]}), content_type="application/msgpack")


@pytest.fixture
async def impostor() -> AsyncIterator[TrackerClient]:
    app = web.Application()
    app.router.add_get("/v1/manifests", _huge)
    app.router.add_get("/v1/watch", _watch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = TrackerClient(f"http://127.0.0.1:{port}", JoinToken("ab" * 20, "cd" * 32))
    try:
        yield client
    finally:
        await client.close()
        await runner.cleanup()


async def test_an_endless_answer_is_refused_at_the_limit(impostor: TrackerClient) -> None:
    with pytest.raises(TrackerError, match="too large"):
        await impostor.manifests()


async def test_bad_watch_entries_are_logged_and_skipped(
    impostor: TrackerClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        seq, entries = await impostor.watch(0, 0)
    assert seq == 3 and [e.ref for e in entries] == ["myapp:1"]
    assert caplog.text.count("skipping a malformed entry") == 4

