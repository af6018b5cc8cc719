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
import os
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from swarm.core import wire
from swarm.core.api import MAX_BODY, MSGPACK
from swarm.core.errors import InvalidInput, SwarmError, status_for
from swarm.tracker.ca import server_names
from swarm.tracker.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from swarm.tracker.peers.base import PeerStore
from swarm.tracker.ratelimit import DEFAULT_LIMIT
from swarm.tracker.service import DEFAULT_CERT_LIFETIME, DEFAULT_INTERVAL, TrackerService

log = logging.getLogger("swarm.tracker.http")

SERVICE: web.AppKey[TrackerService] = web.AppKey("service", TrackerService)
CLIENT_TIMEOUT: web.AppKey[float] = web.AppKey("client_timeout", float)
#: seconds a client has to send a whole request (headers, then its body), and idle keep-alive time
DEFAULT_CLIENT_TIMEOUT = 15.0
BENCODE = "text/plain"
_SECRET_PATH = re.compile(r"^/(announce|scrape)/[^/?]*")
_SECRET_PREFIX = re.compile(r"^/t/[^/?]*/")
_BT_PATH = re.compile(r"^/(announce/|scrape/|t/[^/]*/(announce|scrape)$)")
#: how long shutdown waits for requests in flight (watchers are woken at once)
SHUTDOWN_TIMEOUT = 5.0
#: the tracker's own HTTPS certificate, issued anew at every start
TLS_LIFETIME = 365 * 24 * 3600


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


async def _expire_loop(service: TrackerService) -> None:
    while True:
        await asyncio.sleep(min(service.interval, 10))
        try:
            await service.sweep()
        except SwarmError as exc:  # e.g. the shared peer store is away for a moment
            log.warning("sweep failed: %s", exc)


async def _background(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    task = asyncio.create_task(_expire_loop(service))
    yield
    service.shutdown()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


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
    app.router.add_get("/announce/{secret}", announce)
    app.router.add_get("/scrape/{secret}", scrape)
    # the same, for clients that find the scrape URL by the BEP 48 convention (replace "announce" in the
    # last path component: `.../t/<secret>/announce` -> `.../t/<secret>/scrape`), e.g. transmission
    app.router.add_get("/t/{secret}/announce", announce)
    app.router.add_get("/t/{secret}/scrape", scrape)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_background)
    return app


def tls_context(service: TrackerService, host: str, public_url: str | None) -> ssl.SSLContext:
    """Issue the tracker a server certificate from its own CA (anew at each start) and load it."""
    cert_pem, key_pem = service.ca.issue_server_certificate(server_names(host, public_url), TLS_LIFETIME)
    cert_path, key_path = service.data_dir / "tls.pem", service.data_dir / "tls.key"
    cert_path.write_bytes(cert_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


async def start_tracker(service: TrackerService, host: str, port: int, *,
                        client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
                        reuse_port: bool = False,
                        ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    """Serve `service` on host:port (0: any free port); returns the runner and the bound port.

    A client gets `client_timeout` seconds to send a request's headers (aiohttp's keep-alive
    timer runs from the connection's start until a whole request has arrived) and as long
    again for its body; idle keep-alive connections close after that time too."""
    runner = web.AppRunner(make_app(service, client_timeout), access_log_class=RedactingAccessLogger,
                           shutdown_timeout=SHUTDOWN_TIMEOUT, lingering_time=0, keepalive_timeout=client_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024,
                          ssl_context=ssl_context).start()
    except OSError as exc:
        await runner.cleanup()
        raise SwarmError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    bound = runner.addresses[0][1]
    return runner, int(bound)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class ServeOptions:
    public_url: str | None = None
    cert_lifetime: int = DEFAULT_CERT_LIFETIME
    interval: int = DEFAULT_INTERVAL
    min_interval: int | None = None
    #: postgresql://... shared by replicas (None: SQLite in the data dir)
    database: str | None = None
    #: redis://... peer store shared by replicas and workers (None: in memory)
    redis: str | None = None
    auth_failure_limit: int = DEFAULT_LIMIT
    client_timeout: float = DEFAULT_CLIENT_TIMEOUT
    #: processes serving one port (SO_REUSEPORT); more than one needs `redis`
    workers: int = 1
    reuse_port: bool = False
    #: serve HTTPS with a certificate from the swarm CA (hosts pin that CA by their token)
    tls: bool = False


def _worker_argv(data_dir: Path, host: str, port: int, o: ServeOptions) -> list[str]:
    argv = [sys.executable, "-m", "swarm.cli.main", "tracker", "serve", "--data", str(data_dir),
            "--listen", f"{_url_host(host)}:{port}", "--workers", "1", "--reuse-port",
            "--cert-lifetime", str(o.cert_lifetime), "--announce-interval", str(o.interval),
            "--auth-failure-limit", str(o.auth_failure_limit), "--client-timeout", str(o.client_timeout)]
    if o.min_interval is not None:
        argv += ["--min-interval", str(o.min_interval)]
    if o.public_url:
        argv += ["--public-url", o.public_url]
    if o.tls:
        argv += ["--tls"]
    return argv


async def _start_workers(data_dir: Path, host: str, port: int, o: ServeOptions) -> list[asyncio.subprocess.Process]:
    """Start workers - 1 more processes on the same port; returns once each is listening."""
    env = dict(os.environ)
    # the URLs may hold passwords: through the environment, not the command line
    env.pop("SWARM_DATABASE", None)
    env.pop("SWARM_REDIS", None)
    if o.database:
        env["SWARM_DATABASE"] = o.database
    if o.redis:
        env["SWARM_REDIS"] = o.redis
    procs = []
    try:
        for _ in range(o.workers - 1):
            proc = await asyncio.create_subprocess_exec(*_worker_argv(data_dir, host, port, o), env=env,
                                                        stdout=asyncio.subprocess.PIPE)
            procs.append(proc)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not line.startswith(b"tracker listening"):
                raise SwarmError("a tracker worker failed to start")
    except BaseException:
        await _stop_workers(procs)
        raise
    return procs


async def _stop_workers(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), SHUTDOWN_TIMEOUT + 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def make_service(data_dir: Path, o: ServeOptions) -> TrackerService:
    peer_store: PeerStore | None = None
    if o.redis:
        from swarm.tracker.peers.redis import RedisPeerStore

        peer_store = RedisPeerStore(o.redis, ttl=2 * o.interval)
    return TrackerService(data_dir, cert_lifetime=o.cert_lifetime, interval=o.interval, min_interval=o.min_interval,
                          peer_store=peer_store, public_url=o.public_url, database=o.database,
                          auth_failure_limit=o.auth_failure_limit)


async def run_tracker(data_dir: Path, host: str = "127.0.0.1", port: int = 7070,
                      options: ServeOptions | None = None) -> None:
    """Run the tracker until SIGTERM or SIGINT; prints `tracker listening on http://HOST:PORT` once bound
    (with several workers: once all of them are)."""
    o = options or ServeOptions()
    if o.workers > 1 and not o.redis:
        raise SwarmError("several workers need a shared peer store: add --redis URL")
    service = make_service(data_dir, o)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if o.redis:
            from swarm.tracker.peers.redis import RedisPeerStore

            assert isinstance(service.peers, RedisPeerStore)
            await service.peers.ping()
        context = tls_context(service, host, o.public_url) if o.tls else None
        runner, bound = await start_tracker(service, host, port, client_timeout=o.client_timeout,
                                            reuse_port=o.reuse_port or o.workers > 1, ssl_context=context)
        workers: list[asyncio.subprocess.Process] = []
        try:
            if o.workers > 1:
                workers = await _start_workers(data_dir, host, bound, o)
            scheme = "https" if o.tls else "http"
            print(f"tracker listening on {scheme}://{_url_host(host)}:{bound}", flush=True)
            log.info("storage %s, peers %s, %d worker(s)", service.storage.location,
                     "redis" if o.redis else "in memory", o.workers)
            if o.public_url:
                log.info("public URL %s", o.public_url)
            await stop.wait()
            log.info("stopping")
            service.shutdown()
        finally:
            await _stop_workers(workers)
            await runner.cleanup()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await service.aclose()
    sys.stdout.flush()
