"""The tracker's HTTP layer (aiohttp): maps requests to TrackerService, nothing more.

Routes and bodies are those of swarm/core/api.py. Errors are msgpack
{"error": message} with the status of the SwarmError (announce and scrape
answer bencoded failures with 200, as BitTorrent clients expect). The access
log never shows the token secrets in announce/scrape paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from swarm.core import wire
from swarm.core.api import MAX_BODY, MSGPACK
from swarm.core.errors import InvalidInput, SwarmError
from tracker.service import DEFAULT_CERT_LIFETIME, DEFAULT_INTERVAL, TrackerService

log = logging.getLogger("swarm.tracker.http")

SERVICE: web.AppKey[TrackerService] = web.AppKey("service", TrackerService)
BENCODE = "text/plain"
_SECRET_PATH = re.compile(r"^/(announce|scrape)/[^/?]*")
#: how long shutdown waits for requests in flight (watchers are woken at once)
SHUTDOWN_TIMEOUT = 5.0


def redact_path(path: str) -> str:
    return _SECRET_PATH.sub(r"/\1/<secret>", path)


class RedactingAccessLogger(AbstractAccessLogger):
    """`METHOD path status seconds`, with announce/scrape secrets and query strings left out."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.3fs", request.method, redact_path(request.path), response.status, time)


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=wire.pack({"error": message}), content_type=MSGPACK)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SwarmError as exc:
        return _error(getattr(exc, "status", 400), exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, exc.reason)
        if exc.status == web.HTTPRequestEntityTooLarge.status_code:
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
    return await request.read()


async def health(request: web.Request) -> web.Response:
    return _msgpack({"ok": True})


async def ca(request: web.Request) -> web.Response:
    return web.Response(text=request.app[SERVICE].ca.cert_pem, content_type="application/x-pem-file")


async def enroll(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.authenticate(_secret(request))  # before reading a stranger's body
    csr = wire.unpack_map(await _body(request)).get("csr")
    if not isinstance(csr, str):
        raise InvalidInput("enroll needs {\"csr\": PEM text}")
    return _msgpack(service.enroll(_secret(request), csr).to_map())


async def publish(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.authenticate(_secret(request))
    entry = service.publish(_secret(request), await _body(request))
    return _msgpack(entry.to_map())


async def list_manifests(request: web.Request) -> web.Response:
    entries = request.app[SERVICE].list_manifests(_secret(request))
    return _msgpack({"manifests": [e.to_map() for e in entries]})


async def get_manifest(request: web.Request) -> web.Response:
    envelope = request.app[SERVICE].get_manifest(_secret(request), request.match_info["ref"])
    return web.Response(body=envelope, content_type=MSGPACK)


async def watch(request: web.Request) -> web.Response:
    try:
        since = int(request.query.get("since", "0"))
        timeout = float(request.query.get("timeout", "30"))
    except ValueError as exc:
        raise InvalidInput("since must be an integer and timeout a number of seconds") from exc
    if since < 0 or not timeout >= 0:
        raise InvalidInput("since and timeout must not be negative")
    seq, entries = await request.app[SERVICE].watch(_secret(request), since, timeout)
    return _msgpack({"seq": seq, "manifests": [e.to_map() for e in entries]})


async def announce(request: web.Request) -> web.Response:
    body = request.app[SERVICE].announce(request.match_info["secret"], request.rel_url.raw_query_string,
                                         request.remote or "")
    return web.Response(body=body, content_type=BENCODE)


async def scrape(request: web.Request) -> web.Response:
    body = request.app[SERVICE].scrape(request.match_info["secret"], request.rel_url.raw_query_string)
    return web.Response(body=body, content_type=BENCODE)


async def _expire_loop(service: TrackerService) -> None:
    while True:
        await asyncio.sleep(service.interval)
        service.expire_peers()


async def _background(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    task = asyncio.create_task(_expire_loop(service))
    yield
    service.shutdown()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_app(service: TrackerService) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors])
    app[SERVICE] = service
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/ca", ca)
    app.router.add_post("/v1/enroll", enroll)
    app.router.add_post("/v1/manifests", publish)
    app.router.add_get("/v1/manifests", list_manifests)
    app.router.add_get("/v1/manifests/{ref:.+}", get_manifest)
    app.router.add_get("/v1/watch", watch)
    app.router.add_get("/announce/{secret}", announce)
    app.router.add_get("/scrape/{secret}", scrape)
    app.cleanup_ctx.append(_background)
    return app


async def start_tracker(service: TrackerService, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `service` on host:port (0: any free port); returns the runner and the bound port."""
    runner = web.AppRunner(make_app(service), access_log_class=RedactingAccessLogger,
                           shutdown_timeout=SHUTDOWN_TIMEOUT, lingering_time=0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise SwarmError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    bound = runner.addresses[0][1]
    return runner, int(bound)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def run_tracker(data_dir: Path, host: str = "127.0.0.1", port: int = 7070, public_url: str | None = None,
                      cert_lifetime: int = DEFAULT_CERT_LIFETIME, interval: int = DEFAULT_INTERVAL) -> None:
    """Run the tracker until SIGTERM or SIGINT; prints `tracker listening on http://HOST:PORT` once bound."""
    service = TrackerService(data_dir, cert_lifetime=cert_lifetime, interval=interval, public_url=public_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        runner, bound = await start_tracker(service, host, port)
        try:
            print(f"tracker listening on http://{_url_host(host)}:{bound}", flush=True)
            if public_url:
                log.info("public URL %s", public_url)
            await stop.wait()
            log.info("stopping")
            service.shutdown()
        finally:
            await runner.cleanup()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        service.close()
    sys.stdout.flush()
