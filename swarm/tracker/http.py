"""The tracker's HTTP layer (aiohttp): routes, and requests mapped to TrackerService and back.

Routes and bodies are those of swarm/core/api.py. Errors are msgpack
{"error": message} with the status of the SwarmError (swarm.core.errors.status_for;
announce and scrape answer bencoded failures with 200, as BitTorrent clients
expect). The access log never shows the token secrets in announce/scrape paths.
Serving (listening, TLS, workers, upkeep) is swarm/tracker/server.py.
"""

from __future__ import annotations

import asyncio
import logging
import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from swarm.core import wire
from swarm.core.api import MAX_BODY, MSGPACK
from swarm.core.errors import InvalidInput, SwarmError, status_for
from swarm.tracker.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from swarm.tracker.options import DEFAULT_CLIENT_TIMEOUT
from swarm.tracker.service import TrackerService

log = logging.getLogger("swarm.tracker.http")

SERVICE: web.AppKey[TrackerService] = web.AppKey("service", TrackerService)
CLIENT_TIMEOUT: web.AppKey[float] = web.AppKey("client_timeout", float)
BENCODE = "text/plain"
_SECRET_PATH = re.compile(r"^/(announce|scrape)/[^/?]*")
_SECRET_PREFIX = re.compile(r"^/t/[^/?]*/")
_BT_PATH = re.compile(r"^/(announce/|scrape/|t/[^/]*/(announce|scrape)$)")


def redact_path(path: str) -> str:
    return _SECRET_PREFIX.sub("/t/<secret>/", _SECRET_PATH.sub(r"/\1/<secret>", path))


class RedactingAccessLogger(AbstractAccessLogger):
    """`METHOD path status seconds`, with announce/scrape secrets and query strings left out."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if response.status == 200 and _BT_PATH.match(request.path):
            return  # answered announces and scrapes: counted in /metrics, not one log line each (10% of CPU)
        self.logger.info("%s %s %s %.3fs", request.method, redact_path(request.path), response.status, time)


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=wire.pack({"error": message}), content_type=MSGPACK)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SwarmError as exc:
        return _error(status_for(exc), exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, exc.reason)
        if exc.status in (web.HTTPRequestEntityTooLarge.status_code, web.HTTPRequestTimeout.status_code):
            response.force_close()  # the rest of the body is not worth reading
        return response
    except Exception:
        log.exception("unexpected error on %s %s", request.method, redact_path(request.path))
        return _error(500, "internal tracker error")


def _secret(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _msgpack(obj: object) -> web.Response:
    return web.Response(body=wire.pack(obj), content_type=MSGPACK)


async def _body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    try:
        async with asyncio.timeout(request.app[CLIENT_TIMEOUT]):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="request body too slow") from None


def _ip(request: web.Request) -> str | None:
    return request.remote or None


async def health(request: web.Request) -> web.Response:
    return _msgpack({"ok": True})


async def ca(request: web.Request) -> web.Response:
    return web.Response(text=request.app[SERVICE].ca.cert_pem, content_type="application/x-pem-file")


async def enroll(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.authenticate(_secret(request), _ip(request))  # before reading a stranger's body
    csr = wire.unpack_map(await _body(request)).get("csr")
    if not isinstance(csr, str):
        raise InvalidInput("enroll needs {\"csr\": PEM text}")
    return _msgpack(service.enroll(_secret(request), csr, _ip(request)).to_map())


async def publish(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.authenticate(_secret(request), _ip(request))
    entry = service.publish(_secret(request), await _body(request), _ip(request))
    return _msgpack(entry.to_map())


async def list_manifests(request: web.Request) -> web.Response:
    entries = request.app[SERVICE].list_manifests(_secret(request), _ip(request))
    return _msgpack({"manifests": [e.to_map() for e in entries]})


async def get_manifest(request: web.Request) -> web.Response:
    envelope = request.app[SERVICE].get_manifest(_secret(request), request.match_info["ref"], _ip(request))
    return web.Response(body=envelope, content_type=MSGPACK)


async def key_document(request: web.Request) -> web.Response:
    envelope = request.app[SERVICE].get_key_document(_secret(request), _ip(request))
    return web.Response(body=envelope, content_type=MSGPACK)


async def watch(request: web.Request) -> web.Response:
    try:
        since = int(request.query.get("since", "0"))
        timeout = float(request.query.get("timeout", "30"))
    except ValueError as exc:
        raise InvalidInput("since must be an integer and timeout a number of seconds") from exc
    if since < 0 or not timeout >= 0:
        raise InvalidInput("since and timeout must not be negative")
    seq, entries = await request.app[SERVICE].watch(_secret(request), since, timeout, _ip(request))
    return _msgpack({"seq": seq, "manifests": [e.to_map() for e in entries]})


async def announce(request: web.Request) -> web.Response:
    body = await request.app[SERVICE].announce(request.match_info["secret"], request.rel_url.raw_query_string,
                                               request.remote or "")
    return web.Response(body=body, content_type=BENCODE)


async def scrape(request: web.Request) -> web.Response:
    body = await request.app[SERVICE].scrape(request.match_info["secret"], request.rel_url.raw_query_string,
                                             _ip(request))
    return web.Response(body=body, content_type=BENCODE)


async def metrics(request: web.Request) -> web.Response:
    body = await request.app[SERVICE].render_metrics()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


def make_app(service: TrackerService, client_timeout: float = DEFAULT_CLIENT_TIMEOUT) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors])
    app[SERVICE] = service
    app[CLIENT_TIMEOUT] = client_timeout
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/ca", ca)
    app.router.add_post("/v1/enroll", enroll)
    app.router.add_post("/v1/manifests", publish)
    app.router.add_get("/v1/manifests", list_manifests)
    app.router.add_get("/v1/manifests/{ref:.+}", get_manifest)
    app.router.add_get("/v1/watch", watch)
    app.router.add_get("/v1/keys", key_document)
    app.router.add_get("/announce/{secret}", announce)
    app.router.add_get("/scrape/{secret}", scrape)
    # the same, for clients that find the scrape URL by the BEP 48 convention (replace "announce" in the
    # last path component: `.../t/<secret>/announce` -> `.../t/<secret>/scrape`), e.g. transmission
    app.router.add_get("/t/{secret}/announce", announce)
    app.router.add_get("/t/{secret}/scrape", scrape)
    app.router.add_get("/metrics", metrics)
    return app
