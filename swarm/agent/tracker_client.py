"""The agent's HTTP client for the tracker API (see swarm/core/api.py)."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import aiohttp

from swarm.core import wire
from swarm.core.api import MAX_BODY, MAX_PEER_ENTRIES, MSGPACK, EnrollResponse, ManifestEntry, PeerEntry, ReportBatch
from swarm.core.certs import ca_fingerprint
from swarm.core.errors import (
    InvalidInput,
    RateLimited,
    SwarmError,
    TrackerError,
    TrackerUnreachable,
    Unauthorized,
    UntrustedManifest,
    error_for_status,
)
from swarm.core.groups import is_group_id
from swarm.core.refs import ImageRef
from swarm.core.tokens import JoinToken

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 3.0
#: the largest answer read from a tracker (an impostor must not make the agent buffer more)
MAX_ANSWER = MAX_BODY
#: the largest /v1/peers answer read (MAX_PEER_ENTRIES entries of ~110 bytes fit in it)
MAX_PEERS_ANSWER = 2 * 1024 * 1024
#: sequence numbers are signed 64-bit on the tracker
MAX_SEQ = 2**63 - 1


class TrackerClient:
    def __init__(self, base_url: str, token: JoinToken, ssl_context: ssl.SSLContext | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    @property
    def announce_url(self) -> str:
        return f"{self.base_url}/announce/{self._token.secret}"

    async def __aenter__(self) -> TrackerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def https(self) -> bool:
        return self.base_url.startswith("https://")

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=90))
        return self._session

    async def pin_ca(self) -> str:
        """Fetch the tracker's CA and keep it only if it is the one the join token names.

        Over HTTPS the first request cannot verify the server yet, so it carries
        no token; from then on the pinned CA is the only trust anchor.
        """
        pem = (await self._request("GET", "/v1/ca", authenticated=False, verify=False)).decode()
        if not self._token.fingerprint_matches(ca_fingerprint(pem)):
            raise UntrustedManifest(
                "the tracker's CA does not match the fingerprint in the join token: refusing to enroll"
            )
        if self.https:
            self._ssl = ssl.create_default_context(cadata=pem)
        return pem

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        params: dict[str, str] | None = None,
        authenticated: bool = True,
        verify: bool = True,
        timeout: float | None = None,
        limit: int = MAX_ANSWER,
    ) -> bytes:
        url = self.base_url + path
        if authenticated and self.https and self._ssl is None:
            raise TrackerError("internal: the tracker's CA must be pinned before the token is sent")
        headers = {"Authorization": f"Bearer {self._token.secret}"} if authenticated else {}
        if body is not None:
            headers["Content-Type"] = MSGPACK
        tls: ssl.SSLContext | bool = (self._ssl or True) if verify else False
        try:
            async with self._http().request(
                method,
                url,
                data=body,
                params=params,
                ssl=tls,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout) if timeout else None,
            ) as resp:
                data = await _read_bounded(resp, limit)
                if resp.status >= 400:
                    raise self._error(resp.status, data)
                return data
        except aiohttp.ClientConnectorError as exc:
            raise TrackerUnreachable(f"tracker unreachable at {self.base_url}: {exc.os_error.strerror or exc}") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TrackerUnreachable(f"tracker unreachable at {self.base_url}: {exc or type(exc).__name__}") from exc

    def _error(self, status: int, data: bytes) -> TrackerError:
        try:
            message = str(wire.unpack_map(data).get("error", ""))
        except InvalidInput:
            message = ""
        cls = error_for_status(status)
        if cls is Unauthorized:
            message = f"the tracker refused the join token ({message or 'unknown or revoked'})"
        elif cls is RateLimited:
            message = (
                f"the tracker is refusing this address for a while ({message or 'too many failures'}): retry later"
            )
        return cls(message or f"tracker answered HTTP {status}")

    async def enroll(self, csr_pem: str) -> EnrollResponse:
        data = await self._request("POST", "/v1/enroll", wire.pack({"csr": csr_pem}))
        return EnrollResponse.from_map(wire.unpack_map(data))

    async def publish(self, envelope: bytes) -> ManifestEntry:
        return ManifestEntry.from_map(wire.unpack_map(await self._request("POST", "/v1/manifests", envelope)))

    async def resolve_group(self, repository: str) -> tuple[str, str]:
        """(group, group id) of `repository`: what a builder names its layer torrents after."""
        data = wire.unpack_map(await self._request("GET", "/v1/groups/resolve", params={"repository": repository}))
        name, gid = data.get("group"), data.get("id")
        if not isinstance(name, str) or not isinstance(gid, str) or not is_group_id(gid):
            raise InvalidInput("malformed group answer from the tracker")
        return name, gid

    async def manifest(self, ref: str) -> bytes:
        return await self._request("GET", f"/v1/manifests/{ref}")

    async def remove_manifest(self, ref: str) -> ManifestEntry:
        return ManifestEntry.from_map(wire.unpack_map(await self._request("DELETE", f"/v1/manifests/{ref}")))

    async def key_document(self) -> bytes:
        return await self._request("GET", "/v1/keys")

    async def manifests(self) -> list[ManifestEntry]:
        data = wire.unpack_map(await self._request("GET", "/v1/manifests"))
        return [ManifestEntry.from_map(m) for m in _list(data.get("manifests"))]

    async def watch(self, since: int, timeout: float) -> tuple[int, list[ManifestEntry]]:
        data = wire.unpack_map(
            await self._request("GET", "/v1/watch", params={"since": str(since), "timeout": str(timeout)})
        )
        seq = data.get("seq", since)
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
            raise InvalidInput("malformed watch answer: seq is not a sequence number")
        return seq, valid_entries(data.get("manifests"))

    async def peers(self, announce_hash: bytes, timeout: float = 10.0) -> list[PeerEntry]:
        """The tracker's entries for a torrent, each with the token it belongs to (GET /v1/peers)."""
        data = wire.unpack_map(
            await self._request(
                "GET", "/v1/peers", params={"info_hash": announce_hash.hex()}, timeout=timeout, limit=MAX_PEERS_ANSWER
            ),
            MAX_PEERS_ANSWER,
        )
        raw = data.get("peers")
        if not isinstance(raw, list) or len(raw) > MAX_PEER_ENTRIES:
            raise InvalidInput("malformed peers answer: no peer list")
        entries = []
        for item in raw:
            try:
                entries.append(PeerEntry.from_map(item))
            except InvalidInput:
                log.warning("peers: skipping a malformed entry from the tracker: %.200r", item)
        return entries

    # rollout view

    async def report(self, batch: ReportBatch, timeout: float) -> None:
        await self._request("POST", "/v1/reports", wire.pack(batch.to_map()), timeout=timeout)

    async def hosts(self) -> list[dict[str, Any]]:
        return _list(wire.unpack_map(await self._request("GET", "/v1/hosts")).get("hosts"))

    async def rollouts(self) -> list[dict[str, Any]]:
        return _list(wire.unpack_map(await self._request("GET", "/v1/rollouts")).get("rollouts"))

    async def rollout(self, ref: str) -> dict[str, Any]:
        return wire.unpack_map(await self._request("GET", f"/v1/rollouts/{ref}"))

    async def health(self) -> bool:
        try:
            # `swarm status` waits on this: a cut link must not hold it for the read timeout
            await self._request("GET", "/v1/health", authenticated=False, timeout=HEALTH_TIMEOUT)
            return True
        except TrackerError:
            return False


def _list(v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise InvalidInput("malformed tracker answer")
    return v


def valid_entries(raw: Any) -> list[ManifestEntry]:
    """The well-formed manifest entries of a watch answer; each bad one is logged and skipped."""
    if not isinstance(raw, list):
        raise InvalidInput("malformed watch answer: no manifest list")
    entries = []
    for item in raw:
        try:
            if not isinstance(item, dict):
                raise InvalidInput("not a map")
            entry = ManifestEntry.from_map(item)
            if str(ImageRef.parse(entry.ref)) != entry.ref or not 0 <= entry.seq <= MAX_SEQ:
                raise InvalidInput("not canonical")
        except SwarmError as exc:
            log.warning("watch: skipping a malformed entry from the tracker (%s): %.200r", exc, item)
            continue
        entries.append(entry)
    return entries


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The response body, refused once it grows past `limit` bytes (whatever Content-Length says)."""
    if resp.content_length is not None and resp.content_length > limit:
        raise TrackerError(f"the tracker's answer is too large ({resp.content_length} bytes, at most {limit})")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(256 * 1024):
        body += chunk
        if len(body) > limit:
            raise TrackerError(f"the tracker's answer is too large (over {limit} bytes)")
    return bytes(body)
