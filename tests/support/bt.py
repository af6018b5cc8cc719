"""Raw BitTorrent tracker requests for tests that speak to the tracker as a client would."""

from __future__ import annotations

from typing import Any

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
