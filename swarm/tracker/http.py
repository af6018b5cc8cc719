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
from swarm.core.redact import escape_path
from swarm.tracker.fleet import Fleet
from swarm.tracker.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from swarm.tracker.options import DEFAULT_CLIENT_TIMEOUT
from swarm.tracker.service import TrackerService
from swarm.tracker.ui import FleetPage

log = logging.getLogger("swarm.tracker.http")

SERVICE: web.AppKey[TrackerService] = web.AppKey("service", TrackerService)
CLIENT_TIMEOUT: web.AppKey[float] = web.AppKey("client_timeout", float)
FLEET: web.AppKey[Fleet] = web.AppKey("fleet", Fleet)
BENCODE = "text/plain"
_SECRET_PATH = re.compile(r"^/(announce|scrape)/[^/?]*")
_SECRET_PREFIX = re.compile(r"^/t/[^/?]*/")
_BT_PATH = re.compile(r"^/(announce/|scrape/|t/[^/]*/(announce|scrape)\Z)")


def redact_path(path: str) -> str:
    """A request path for a log line: secrets out, control characters (a decoded %0A) escaped."""
    return escape_path(_SECRET_PREFIX.sub("/t/<secret>/", _SECRET_PATH.sub(r"/\1/<secret>", path)))


#: probes and scrapes: logged only at debug level
_PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/health"})
#: request keys the error middleware fills for the access log
_REASON: web.RequestKey[str] = web.RequestKey("reason", str)
_TOKEN: web.RequestKey[str] = web.RequestKey("token", str)


class RedactingAccessLogger(AbstractAccessLogger):
    """`METHOD path status seconds`, with announce/scrape secrets and query strings left out.

    A refused request (4xx) is a warning with the client's address, the token's name (if the
    secret was a real token) and the reason; probes and /metrics hits only show at debug level."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if response.status == 200 and _BT_PATH.match(request.path):
            return  # answered announces and scrapes: counted in /metrics, not one log line each (10% of CPU)
        path = redact_path(request.path)
        if 400 <= response.status < 500:
            self.logger.warning(
                "%s %s %s %.3fs from %s token %s: %s",
                request.method,
                path,
                response.status,
                time,
                request.remote or "-",
                request.get(_TOKEN) or "-",
                request.get(_REASON) or response.reason,
            )
        elif request.path in _PROBE_PATHS and response.status < 400:
            self.logger.debug("%s %s %s %.3fs", request.method, path, response.status, time)
        else:
            self.logger.info("%s %s %s %.3fs", request.method, path, response.status, time)


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=wire.pack({"error": message}), content_type=MSGPACK)


def _note_refusal(request: web.Request, status: int, reason: str) -> None:
    """What the access log says about a 4xx: why, and whose token it was."""
    if 400 <= status < 500:
        request[_REASON] = reason
        request[_TOKEN] = request.app[SERVICE].token_name(_secret(request)) or "-"


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SwarmError as exc:
        _note_refusal(request, status_for(exc), exc.message)
        return _error(status_for(exc), exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        _note_refusal(request, exc.status, exc.reason)
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


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers HTTP."""
    return web.json_response({"alive": True})


async def readyz(request: web.Request) -> web.Response:
    """Ready: 200 if the database and the peer store answer, else 503 with the failing check."""
    checks = await request.app[SERVICE].readiness()
    ready = all(checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def ca(request: web.Request) -> web.Response:
    return web.Response(text=request.app[SERVICE].ca.cert_pem, content_type="application/x-pem-file")


async def enroll(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.authenticate(_secret(request), _ip(request))  # before reading a stranger's body
    csr = wire.unpack_map(await _body(request)).get("csr")
    if not isinstance(csr, str):
        raise InvalidInput('enroll needs {"csr": PEM text}')
    return _msgpack(service.enroll(_secret(request), csr, _ip(request)).to_map())


async def publish(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.authenticate(_secret(request), _ip(request))
    entry = service.publish(_secret(request), await _body(request), _ip(request))
    return _msgpack(entry.to_map())


async def resolve_group(request: web.Request) -> web.Response:
    """GET /v1/groups/resolve?repository=R (builder, admin): the group R's images go to, and its id."""
    name, gid = request.app[SERVICE].resolve_group(_secret(request), request.query.get("repository", ""), _ip(request))
    return _msgpack({"group": name, "id": gid})


async def list_manifests(request: web.Request) -> web.Response:
    entries = request.app[SERVICE].list_manifests(_secret(request), _ip(request))
    return _msgpack({"manifests": [e.to_map() for e in entries]})


async def get_manifest(request: web.Request) -> web.Response:
    envelope = request.app[SERVICE].get_manifest(_secret(request), request.match_info["ref"], _ip(request))
    return web.Response(body=envelope, content_type=MSGPACK)


async def remove_manifest(request: web.Request) -> web.Response:
    """DELETE /v1/manifests/<repo>:<tag> (the repository's owner builder, admins): the removed entry."""
    entry = request.app[SERVICE].remove_manifest(_secret(request), request.match_info["ref"], _ip(request))
    return _msgpack(entry.to_map())


async def key_document(request: web.Request) -> web.Response:
    envelope = request.app[SERVICE].get_key_document(_secret(request), _ip(request))
    return web.Response(body=envelope, content_type=MSGPACK)


async def list_peers(request: web.Request) -> web.Response:
    """GET /v1/peers?info_hash=H (a token that may announce H): the entries, with their tokens."""
    entries = await request.app[SERVICE].list_peers(_secret(request), request.query.get("info_hash", ""), _ip(request))
    return _msgpack({"peers": [e.to_map() for e in entries]})


#: a sequence number as the storage keeps it (a signed 64-bit integer, never negative)
_SEQ = re.compile(r"[0-9]{1,19}")
MAX_SEQ = 2**63 - 1


async def watch(request: web.Request) -> web.Response:
    raw_since = request.query.get("since", "0")
    if not _SEQ.fullmatch(raw_since) or int(raw_since) > MAX_SEQ:
        raise InvalidInput(f"since must be an integer from 0 to {MAX_SEQ}")
    since = int(raw_since)
    try:
        timeout = float(request.query.get("timeout", "30"))
    except ValueError as exc:
        raise InvalidInput("timeout must be a number of seconds") from exc
    if not timeout >= 0:
        raise InvalidInput("timeout must not be negative")
    seq, entries = await request.app[SERVICE].watch(_secret(request), since, timeout, _ip(request))
    return _msgpack({"seq": seq, "manifests": [e.to_map() for e in entries]})


async def announce(request: web.Request) -> web.Response:
    body = await request.app[SERVICE].announce(
        request.match_info["secret"], request.rel_url.raw_query_string, request.remote or ""
    )
    return web.Response(body=body, content_type=BENCODE)


async def scrape(request: web.Request) -> web.Response:
    body = await request.app[SERVICE].scrape(
        request.match_info["secret"], request.rel_url.raw_query_string, _ip(request)
    )
    return web.Response(body=body, content_type=BENCODE)


async def metrics(request: web.Request) -> web.Response:
    body = await request.app[SERVICE].render_metrics()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


# rollout view (swarm/tracker/fleet.py)


async def report(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    record = service.authenticate(_secret(request), _ip(request))
    request.app[FLEET].report(record, await _body(request), request.remote or "")
    return _msgpack({"ok": True})


async def list_hosts(request: web.Request) -> web.Response:
    record = request.app[SERVICE].authenticate(_secret(request), _ip(request))
    return _msgpack({"hosts": [h.to_map() for h in request.app[FLEET].hosts(record)]})


async def list_rollouts(request: web.Request) -> web.Response:
    record = request.app[SERVICE].authenticate(_secret(request), _ip(request))
    return _msgpack({"rollouts": [v.to_map(with_hosts=False) for v in request.app[FLEET].rollouts(record)]})


async def get_rollout(request: web.Request) -> web.Response:
    record = request.app[SERVICE].authenticate(_secret(request), _ip(request))
    return _msgpack(request.app[FLEET].rollout(record, request.match_info["ref"]).to_map())


def make_app(service: TrackerService, client_timeout: float = DEFAULT_CLIENT_TIMEOUT) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors])
    app[SERVICE] = service
    app[CLIENT_TIMEOUT] = client_timeout
    fleet = Fleet(service.storage, service.ca)
    fleet.register_metrics(service.metrics.registry)
    app[FLEET] = fleet
    FleetPage(service, fleet).routes(app)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/ca", ca)
    app.router.add_post("/v1/enroll", enroll)
    app.router.add_post("/v1/manifests", publish)
    app.router.add_get("/v1/manifests", list_manifests)
    app.router.add_get("/v1/manifests/{ref:.+}", get_manifest)
    app.router.add_delete("/v1/manifests/{ref:.+}", remove_manifest)
    app.router.add_get("/v1/watch", watch)
    app.router.add_get("/v1/groups/resolve", resolve_group)
    app.router.add_get("/v1/keys", key_document)
    app.router.add_get("/v1/peers", list_peers)
    app.router.add_get("/announce/{secret}", announce)
    app.router.add_get("/scrape/{secret}", scrape)
    # the same, for clients that find the scrape URL by the BEP 48 convention (replace "announce" in the
    # last path component: `.../t/<secret>/announce` -> `.../t/<secret>/scrape`), e.g. transmission
    app.router.add_get("/t/{secret}/announce", announce)
    app.router.add_get("/t/{secret}/scrape", scrape)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/reports", report)
    app.router.add_get("/v1/hosts", list_hosts)
    app.router.add_get("/v1/rollouts", list_rollouts)
    app.router.add_get("/v1/rollouts/{ref:.+}", get_rollout)
    return app
