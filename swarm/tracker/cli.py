"""`swarm tracker ...`: run the tracker and manage its join tokens."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.table import Table

from swarm.core.errors import SwarmError, UsageError
from swarm.core.tokens import ROLES

if TYPE_CHECKING:  # the service (and libtorrent) load only for the commands that need them
    from swarm.tracker.service import TrackerService

P = ParamSpec("P")
R = TypeVar("R")

_DATABASE = click.option("--database", default=None, envvar="SWARM_DATABASE", show_envvar=True,
                         help="postgresql://... shared by tracker replicas (default: SQLite in --data)")
_DATA = click.option("--data", "data", required=True, envvar="SWARM_DATA", show_envvar=True,
                     type=click.Path(file_okay=False, path_type=Path), help="the tracker's data directory")


def _errors(fn: Callable[P, R]) -> Callable[P, R]:
    """A SwarmError becomes `error: <message>` on stderr and its exit code, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SwarmError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
    return wrapper


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"invalid listen address {text!r}: expected HOST:PORT")
    return host, int(port)


@click.group()
def tracker() -> None:
    """The tracker: join tokens, CA, signed manifests, announce."""


@tracker.command()
@_DATA
@click.option("--listen", default="127.0.0.1:7070", show_default=True, envvar="SWARM_LISTEN", show_envvar=True,
              help="HOST:PORT to serve HTTP on (port 0: any free port)")
@click.option("--public-url", default=None, envvar="SWARM_PUBLIC_URL", show_envvar=True,
              help="the URL hosts reach this tracker at")
@click.option("--cert-lifetime", default=3600, show_default=True, type=click.IntRange(min=60),
              envvar="SWARM_CERT_LIFETIME", show_envvar=True, help="seconds a host certificate is valid")
@click.option("--announce-interval", default=30, show_default=True, type=click.IntRange(min=1),
              envvar="SWARM_ANNOUNCE_INTERVAL", show_envvar=True, help="seconds between announces")
@click.option("--min-interval", default=None, type=click.IntRange(min=0), envvar="SWARM_MIN_INTERVAL",
              show_envvar=True, help="seconds before a host's next announce gets fresh work; sooner gets its "
                                     "last answer again  [default: half the announce interval]")
@_DATABASE
@click.option("--redis", default=None, envvar="SWARM_REDIS", show_envvar=True,
              help="redis://HOST:PORT/DB: peer store shared by replicas and workers (default: in memory)")
@click.option("--auth-failure-limit", default=20, show_default=True, type=click.IntRange(min=0),
              envvar="SWARM_AUTH_FAILURE_LIMIT", show_envvar=True,
              help="failed authentications per minute from one address before it gets 429 (0: no limit)")
@click.option("--client-timeout", default=15.0, show_default=True, type=click.FloatRange(min=0.1),
              envvar="SWARM_CLIENT_TIMEOUT", show_envvar=True,
              help="seconds a client has to send a request (and idle keep-alive time)")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1, max=64),
              envvar="SWARM_WORKERS", show_envvar=True,
              help="processes sharing the port (SO_REUSEPORT); more than one needs --redis")
@click.option("--tls", is_flag=True, envvar="SWARM_TLS", show_envvar=True,
              help="serve HTTPS with a certificate from the swarm CA (hosts pin it by their join token)")
@click.option("--reuse-port", is_flag=True, hidden=True)
@_errors
def serve(data: Path, listen: str, public_url: str | None, cert_lifetime: int, announce_interval: int,
          min_interval: int | None, database: str | None, redis: str | None, auth_failure_limit: int,
          client_timeout: float, workers: int, tls: bool, reuse_port: bool) -> None:
    """Run the tracker until SIGTERM."""
    import logging

    from swarm.tracker.http import ServeOptions, run_tracker

    host, port = parse_listen(listen)
    if min_interval is not None and min_interval > announce_interval:
        raise UsageError("--min-interval must not exceed --announce-interval")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    options = ServeOptions(public_url, cert_lifetime, announce_interval, min_interval, database, redis,
                           auth_failure_limit, client_timeout, workers, reuse_port, tls)
    try:
        import uvloop
    except ImportError:  # plain asyncio works, a little slower
        asyncio.run(run_tracker(data, host, port, options))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_tracker(data, host, port, options))


@tracker.group()
def token() -> None:
    """Create, revoke and list join tokens."""


def _service(data: Path, database: str | None) -> TrackerService:
    from swarm.tracker.service import TrackerService

    return TrackerService(data, database=database)


@token.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES), envvar="SWARM_ROLE", show_envvar=True)
@_DATA
@_DATABASE
@_errors
def token_create(name: str, role: str, data: Path, database: str | None) -> None:
    """Create a token; prints the join token (only this once)."""
    service = _service(data, database)
    try:
        click.echo(str(service.create_token(name, role)))
    finally:
        service.close()


@token.command("revoke")
@click.argument("name")
@_DATA
@_DATABASE
@_errors
def token_revoke(name: str, data: Path, database: str | None) -> None:
    """Revoke a token: refused at once everywhere, its certificate is not renewed."""
    service = _service(data, database)
    try:
        service.revoke_token(name)
    finally:
        service.close()
    click.echo(f"revoked {name}", err=True)


@token.command("list")
@_DATA
@_DATABASE
@_errors
def token_list(data: Path, database: str | None) -> None:
    """List tokens (never their secrets)."""
    service = _service(data, database)
    try:
        records = service.list_tokens()
    finally:
        service.close()
    table = Table("name", "role", "created", "revoked")
    for r in records:
        table.add_row(r.name, r.role, _when(r.created), _when(r.revoked_at) if r.revoked_at else "")
    Console().print(table)


def _when(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
