"""Raw BitTorrent tracker requests for tests that speak to the tracker as a client would.

Answers are decoded with libtorrent's bdecode on purpose: an implementation other than the tracker's.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import libtorrent as lt
from yarl import URL


async def bt(http: aiohttp.ClientSession, url: str, kind: str, secret: str, query: str) -> dict[bytes, Any]:
    """GET /announce/<secret> or /scrape/<secret> with a pre-encoded query; the bdecoded answer."""
    async with http.get(URL(f"{url}/{kind}/{secret}?{query}", encoded=True)) as resp:
        assert resp.status == 200
        d = lt.bdecode(await resp.read())
    assert isinstance(d, dict)
    return d


def announce_query(info_hash: bytes, port: int, peer_id: bytes, left: int = 10, event: str = "started") -> str:
    """The query string libtorrent 2.1 sends (see notes on trackers), pre-encoded."""
    return (f"info_hash={quote_from_bytes(info_hash, safe='')}&peer_id={quote_from_bytes(peer_id, safe='')}"
            f"&port={port}&uploaded=0&downloaded=0&left={left}&corrupt=0&key=1a2b&event={event}"
            f"&numwant=200&compact=1&no_peer_id=1&supportcrypto=1&redundant=0")


class Clock:
    """A clock for the tracker's `clock=` hooks that moves only when a test sets `now`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
