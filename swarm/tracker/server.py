"""The tracker put together and served: the one place its parts are chosen and wired.

ServeOptions -> storage (SQLite or PostgreSQL) -> peer store (memory or
Redis) -> CA -> TrackerService -> HTTP app; then the listening socket (TLS
with a certificate from the swarm CA if asked), the periodic upkeep, the
extra worker processes sharing the port, and SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from swarm.core import redact
from swarm.core.addresses import format_host
from swarm.core.errors import SwarmError
from swarm.core.files import write_atomic
from swarm.tracker.announce import seed_interval
from swarm.tracker.ca import CertificateAuthority, server_names
from swarm.tracker.connlimit import ConnectionLimits, LimitedSite
from swarm.tracker.http import RedactingAccessLogger, make_app
from swarm.tracker.options import DEFAULT_CLIENT_TIMEOUT, ServeOptions
from swarm.tracker.peers import open_peer_store
from swarm.tracker.service import TrackerService
from swarm.tracker.storage import open_storage

log = logging.getLogger("swarm.tracker.server")

#: how long shutdown waits for requests in flight (watchers are woken at once)
SHUTDOWN_TIMEOUT = 5.0
#: the tracker's own HTTPS certificate, issued anew at every start
TLS_LIFETIME = 365 * 24 * 3600
#: peers not heard from for this many announce intervals leave the swarm
PEER_TTL_INTERVALS = 2


def open_service(o: ServeOptions, *, clock: Callable[[], float] = time.monotonic) -> TrackerService:
    """The service over the storage, peer store and CA that `o` names (`clock`: for tests)."""
    storage = open_storage(o.data, o.database)
    try:
        ca = CertificateAuthority.for_storage(storage, o.data)
        seeds_every = seed_interval(o.interval, durable_peers=o.redis is not None)
        peers = open_peer_store(o.redis, ttl=PEER_TTL_INTERVALS * seeds_every, per_host=o.max_peers_per_host)
        return TrackerService(
            storage,
            ca,
            peers,
            o.data,
            cert_lifetime=o.cert_lifetime,
            interval=o.interval,
            min_interval=o.min_interval,
            seed_interval=seeds_every,
            public_url=o.public_url,
            auth_failure_limit=o.auth_failure_limit,
            auth_failure_window=o.auth_failure_window,
            keep=o.keep,
            clock=clock,
        )
    except BaseException:
        storage.close()
        raise


def tls_context(service: TrackerService, host: str, public_url: str | None) -> ssl.SSLContext:
    """Issue the tracker a server certificate from its own CA (anew at each start) and load it."""
    cert_pem, key_pem = service.ca.issue_server_certificate(server_names(host, public_url), TLS_LIFETIME)
    cert_path, key_path = service.data_dir / "tls.pem", service.data_dir / "tls.key"
    write_atomic(cert_path, cert_pem, 0o644)
    write_atomic(key_path, key_pem, 0o600)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


async def _upkeep(service: TrackerService) -> None:
    while True:
        await asyncio.sleep(min(service.interval, 10))
        try:
            await service.sweep()
        except SwarmError as exc:  # e.g. the shared peer store is away for a moment
            log.warning("sweep failed: %s", exc)


def _with_upkeep(service: TrackerService) -> Callable[[web.Application], AsyncIterator[None]]:
    async def background(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_upkeep(service))
        yield
        service.shutdown()  # wake the watchers, so that shutdown need not wait for them
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return background


async def start_tracker(
    service: TrackerService,
    host: str,
    port: int,
    *,
    client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    limits: ConnectionLimits | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve `service` on host:port (0: any free port); returns the runner and the bound port.

    A client gets `client_timeout` seconds to finish its TLS handshake, as long to send a
    request's headers (aiohttp's keep-alive timer runs from the connection's start until a
    whole request has arrived) and as long again for its body; idle keep-alive connections
    close after that time too. Connections past `limits` (default: per address, and in total
    what the descriptor limit allows) are closed at once."""
    redact.install()
    app = make_app(service, client_timeout)
    app.cleanup_ctx.append(_with_upkeep(service))
    runner = web.AppRunner(
        app,
        access_log_class=RedactingAccessLogger,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        lingering_time=0,
        keepalive_timeout=client_timeout,
    )
    await runner.setup()
    try:
        await LimitedSite(
            runner,
            host,
            port,
            limits or ConnectionLimits(),
            tls=ssl_context,
            handshake_timeout=client_timeout,
            reuse_port=reuse_port or None,
        ).start()
    except OSError as exc:
        await runner.cleanup()
        raise SwarmError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    bound = runner.addresses[0][1]
    return runner, int(bound)


def _worker_argv(o: ServeOptions, port: int) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "swarm.cli.main",
        "tracker",
        "serve",
        "--data",
        str(o.data),
        "--listen",
        f"{format_host(o.host)}:{port}",
        "--workers",
        "1",
        "--reuse-port",
        "--cert-lifetime",
        str(o.cert_lifetime),
        "--announce-interval",
        str(o.interval),
        "--auth-failure-limit",
        str(o.auth_failure_limit),
        "--client-timeout",
        str(o.client_timeout),
        "--log-level",
        o.log_level,
        "--log-format",
        o.log_format,
        "--max-peers-per-host",
        str(o.max_peers_per_host),
        "--max-connections-per-address",
        str(o.max_connections_per_address),
    ]
    if o.max_connections is not None:
        argv += ["--max-connections", str(o.max_connections)]
    if o.min_interval is not None:
        argv += ["--min-interval", str(o.min_interval)]
    if o.public_url:
        argv += ["--public-url", o.public_url]
    if o.keep is not None:
        argv += ["--keep", str(o.keep)]
    if o.tls:
        argv += ["--tls"]
    return argv


async def _start_workers(o: ServeOptions, port: int) -> list[asyncio.subprocess.Process]:
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
            proc = await asyncio.create_subprocess_exec(*_worker_argv(o, port), env=env, stdout=asyncio.subprocess.PIPE)
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


async def run_tracker(o: ServeOptions) -> None:
    """Run the tracker until SIGTERM or SIGINT; prints `tracker listening on http://HOST:PORT` once bound
    (with several workers: once all of them are)."""
    if o.workers > 1 and not o.redis:
        raise SwarmError("several workers need a shared peer store: add --redis URL")
    service = open_service(o)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.peers.ping()
        context = tls_context(service, o.host, o.public_url) if o.tls else None
        limits = ConnectionLimits(o.max_connections, o.max_connections_per_address)
        runner, bound = await start_tracker(
            service,
            o.host,
            o.port,
            client_timeout=o.client_timeout,
            reuse_port=o.reuse_port or o.workers > 1,
            ssl_context=context,
            limits=limits,
        )
        workers: list[asyncio.subprocess.Process] = []
        try:
            if o.workers > 1:
                workers = await _start_workers(o, bound)
            scheme = "https" if o.tls else "http"
            print(f"tracker listening on {scheme}://{format_host(o.host)}:{bound}", flush=True)
            log.info(
                "storage %s, peers %s, %d worker(s)",
                service.storage.location,
                "redis" if o.redis else "in memory",
                o.workers,
            )
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
