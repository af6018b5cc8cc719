"""`swarm tracker ...`: run the tracker, manage its join tokens, repositories and key document.

Errors become messages and exit codes in one place, `swarm.cli.main.main()`,
which runs these commands. Every default is defined once, in options.py.
The tracker's modules load only when a command runs, and none loads
libtorrent (tests/integration/test_tracker_http.py checks).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from swarm.core.addresses import LISTEN
from swarm.core.errors import UsageError
from swarm.core.signing import key_id, parse_public_key
from swarm.core.tokens import ROLES
from swarm.tracker.options import (
    DEFAULT_AUTH_FAILURE_LIMIT, DEFAULT_CERT_LIFETIME, DEFAULT_CLIENT_TIMEOUT, DEFAULT_INTERVAL, DEFAULT_LISTEN,
    DEFAULT_WORKERS, MAX_WORKERS, MIN_CERT_LIFETIME, ServeOptions,
)

if TYPE_CHECKING:
    from swarm.tracker.service import TrackerService

_DATABASE = click.option("--database", default=None, envvar="SWARM_DATABASE", show_envvar=True,
                         help="postgresql://... shared by tracker replicas (default: SQLite in --data)")
_DATA = click.option("--data", "data", required=True, envvar="SWARM_DATA", show_envvar=True,
                     type=click.Path(file_okay=False, path_type=Path), help="the tracker's data directory")


@click.group()
def tracker() -> None:
    """The tracker: join tokens, CA, signed manifests, announce."""


@tracker.command()
@_DATA
@click.option("--listen", type=LISTEN, default=DEFAULT_LISTEN, show_default=True, envvar="SWARM_LISTEN",
              show_envvar=True, help="HOST:PORT to serve HTTP on (port 0: any free port)")
@click.option("--public-url", default=None, envvar="SWARM_PUBLIC_URL", show_envvar=True,
              help="the URL hosts reach this tracker at")
@click.option("--cert-lifetime", default=DEFAULT_CERT_LIFETIME, show_default=True,
              type=click.IntRange(min=MIN_CERT_LIFETIME), envvar="SWARM_CERT_LIFETIME", show_envvar=True,
              help="seconds a host certificate is valid")
@click.option("--announce-interval", default=DEFAULT_INTERVAL, show_default=True, type=click.IntRange(min=1),
              envvar="SWARM_ANNOUNCE_INTERVAL", show_envvar=True, help="seconds between announces")
@click.option("--min-interval", default=None, type=click.IntRange(min=0), envvar="SWARM_MIN_INTERVAL",
              show_envvar=True, help="seconds before a host's next announce gets fresh work; sooner gets its "
                                     "last answer again  [default: half the announce interval]")
@_DATABASE
@click.option("--redis", default=None, envvar="SWARM_REDIS", show_envvar=True,
              help="redis://HOST:PORT/DB: peer store shared by replicas and workers (default: in memory)")
@click.option("--auth-failure-limit", default=DEFAULT_AUTH_FAILURE_LIMIT, show_default=True,
              type=click.IntRange(min=0), envvar="SWARM_AUTH_FAILURE_LIMIT", show_envvar=True,
              help="failed authentications per minute from one address before it gets 429 (0: no limit)")
@click.option("--client-timeout", default=DEFAULT_CLIENT_TIMEOUT, show_default=True,
              type=click.FloatRange(min=0.1), envvar="SWARM_CLIENT_TIMEOUT", show_envvar=True,
              help="seconds a client has to send a request (and idle keep-alive time)")
@click.option("--workers", default=DEFAULT_WORKERS, show_default=True, type=click.IntRange(min=1, max=MAX_WORKERS),
              envvar="SWARM_WORKERS", show_envvar=True,
              help="processes sharing the port (SO_REUSEPORT); more than one needs --redis")
@click.option("--tls", is_flag=True, envvar="SWARM_TLS", show_envvar=True,
              help="serve HTTPS with a certificate from the swarm CA (hosts pin it by their join token)")
@click.option("--reuse-port", is_flag=True, hidden=True)
def serve(data: Path, listen: tuple[str, int], public_url: str | None, cert_lifetime: int, announce_interval: int,
          min_interval: int | None, database: str | None, redis: str | None, auth_failure_limit: int,
          client_timeout: float, workers: int, tls: bool, reuse_port: bool) -> None:
    """Run the tracker until SIGTERM."""
    from swarm.tracker.server import run_tracker

    if min_interval is not None and min_interval > announce_interval:
        raise UsageError("--min-interval must not exceed --announce-interval")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    host, port = listen
    options = ServeOptions(data=data, host=host, port=port, public_url=public_url, cert_lifetime=cert_lifetime,
                           interval=announce_interval, min_interval=min_interval, database=database, redis=redis,
                           auth_failure_limit=auth_failure_limit, client_timeout=client_timeout,
                           workers=workers, reuse_port=reuse_port, tls=tls)
    try:
        import uvloop
    except ImportError:  # plain asyncio works, a little slower
        asyncio.run(run_tracker(options))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_tracker(options))


@tracker.group()
def token() -> None:
    """Create, revoke and list join tokens."""


def _service(data: Path, database: str | None) -> TrackerService:
    from swarm.tracker.server import open_service

    return open_service(ServeOptions(data=data, database=database))


_KEY = click.option("--key", "public_key", default=None, envvar="SWARM_BUILDER_KEY", show_envvar=True,
                    help="builder tokens: the public signing key (ed25519:..., from `swarm keygen`) bound to it")
_PUBLISH = click.option("--publish", multiple=True, metavar="PATTERN",
                        help="builder tokens: a repository pattern it may publish into (repeatable; "
                             "e.g. 'myapp/*', 'base:*'; default for a new token: any repository nobody owns)")


@token.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES), envvar="SWARM_ROLE", show_envvar=True)
@_KEY
@_PUBLISH
@_DATA
@_DATABASE
def token_create(name: str, role: str, public_key: str | None, publish: tuple[str, ...], data: Path,
                 database: str | None) -> None:
    """Create a token; prints the join token (only this once). A builder token is bound to --key."""
    key = parse_public_key(public_key) if public_key else None
    service = _service(data, database)
    try:
        click.echo(str(service.create_token(name, role, key, publish)))
    finally:
        service.close()


@token.command("update")
@click.argument("name")
@_KEY
@_PUBLISH
@_DATA
@_DATABASE
def token_update(name: str, public_key: str | None, publish: tuple[str, ...], data: Path,
                 database: str | None) -> None:
    """Rebind a builder token to a new key (rotation) and/or replace its --publish patterns."""
    if public_key is None and not publish:
        raise UsageError("give --key and/or --publish")
    key = parse_public_key(public_key) if public_key else None
    service = _service(data, database)
    try:
        service.update_token(name, key, publish or None)
    finally:
        service.close()
    click.echo(f"updated {name}", err=True)


@token.command("revoke")
@click.argument("name")
@_DATA
@_DATABASE
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
def token_list(data: Path, database: str | None) -> None:
    """List tokens (never their secrets)."""
    service = _service(data, database)
    try:
        records = service.list_tokens()
    finally:
        service.close()
    table = Table("name", "role", "created", "revoked", "key", "publishes")
    for r in records:
        table.add_row(r.name, r.role, _when(r.created), _when(r.revoked_at) if r.revoked_at else "",
                      key_id(r.builder_key) if r.builder_key else "", " ".join(r.publish))
    Console().print(table)


@tracker.group()
def repo() -> None:
    """Repository owners: a repository's tags belong to the builder token that first published there."""


@repo.command("list")
@_DATA
@_DATABASE
def repo_list(data: Path, database: str | None) -> None:
    """List repositories and their owners."""
    service = _service(data, database)
    try:
        rows = service.list_repositories()
    finally:
        service.close()
    table = Table("repository", "owner")
    for repository, owner in rows:
        table.add_row(repository, owner)
    Console().print(table)


@repo.command("transfer")
@click.argument("repository")
@click.option("--to", "owner", required=True, help="the builder token that owns it from now on")
@_DATA
@_DATABASE
def repo_transfer(repository: str, owner: str, data: Path, database: str | None) -> None:
    """Hand REPOSITORY over to another builder token (its --publish patterns must still match)."""
    service = _service(data, database)
    try:
        service.transfer_repository(repository, owner)
    finally:
        service.close()
    click.echo(f"{repository} now belongs to {owner}", err=True)


@tracker.group()
def keys() -> None:
    """The root-signed key document hosts with --trust-root follow."""


@keys.command("publish")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_DATA
@_DATABASE
def keys_publish(file: Path, data: Path, database: str | None) -> None:
    """Serve the signed key document FILE (from `swarm keys sign`) at /v1/keys; its version must grow."""
    try:
        envelope = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}") from exc
    service = _service(data, database)
    try:
        version = service.publish_key_document(envelope)
    finally:
        service.close()
    click.echo(f"key document version {version} published", err=True)


def _when(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
