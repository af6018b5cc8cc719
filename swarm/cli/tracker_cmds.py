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
    from tracker.service import TrackerService

P = ParamSpec("P")
R = TypeVar("R")

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
@_errors
def serve(data: Path, listen: str, public_url: str | None, cert_lifetime: int, announce_interval: int) -> None:
    """Run the tracker until SIGTERM."""
    import logging

    from tracker.http import run_tracker

    host, port = parse_listen(listen)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run_tracker(data, host, port, public_url, cert_lifetime, announce_interval))


@tracker.group()
def token() -> None:
    """Create, revoke and list join tokens."""


def _service(data: Path) -> TrackerService:
    from tracker.service import TrackerService

    return TrackerService(data)


@token.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES), envvar="SWARM_ROLE", show_envvar=True)
@_DATA
@_errors
def token_create(name: str, role: str, data: Path) -> None:
    """Create a token; prints the join token (only this once)."""
    service = _service(data)
    try:
        click.echo(str(service.create_token(name, role)))
    finally:
        service.close()


@token.command("revoke")
@click.argument("name")
@_DATA
@_errors
def token_revoke(name: str, data: Path) -> None:
    """Revoke a token: refused at once everywhere, its certificate is not renewed."""
    service = _service(data)
    try:
        service.revoke_token(name)
    finally:
        service.close()
    click.echo(f"revoked {name}", err=True)


@token.command("list")
@_DATA
@_errors
def token_list(data: Path) -> None:
    """List tokens (never their secrets)."""
    service = _service(data)
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
