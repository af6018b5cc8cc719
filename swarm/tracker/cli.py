"""`swarm tracker ...`: run the tracker and manage its join tokens.

Errors become messages and exit codes in one place, `swarm.cli.main.main()`,
which runs these commands. Every default is defined once, in options.py.
The tracker's modules load only when a command runs, and none loads
libtorrent (tests/integration/test_tracker_http.py checks).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from swarm.cli.config import TRACKER_CONFIG, config_option, default_tracker_data
from swarm.cli.tables import print_table
from swarm.core import logs
from swarm.core.addresses import LISTEN
from swarm.core.errors import UsageError
from swarm.core.tokens import ROLES
from swarm.tracker.options import (
    DEFAULT_AUTH_FAILURE_LIMIT,
    DEFAULT_CERT_LIFETIME,
    DEFAULT_CLIENT_TIMEOUT,
    DEFAULT_INTERVAL,
    DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_MAX_PEERS_PER_HOST,
    DEFAULT_WORKERS,
    MAX_WORKERS,
    MIN_CERT_LIFETIME,
    ServeOptions,
)

if TYPE_CHECKING:
    from swarm.tracker.service import TrackerService

_DATABASE = click.option(
    "--database",
    default=None,
    envvar="SWARM_DATABASE",
    show_envvar=True,
    help="postgresql://... shared by tracker replicas (default: SQLite in --data)",
)
_DATA = click.option(
    "--data",
    "data",
    default=default_tracker_data,
    show_default=str(default_tracker_data()),
    envvar="SWARM_DATA",
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="the tracker's data directory",
)
_FILE = config_option(TRACKER_CONFIG, strict=False)


@click.group()
def tracker() -> None:
    """The tracker: join tokens, CA, signed manifests, announce."""


@tracker.command()
@config_option(TRACKER_CONFIG, strict=True)
@_DATA
@click.option(
    "--listen",
    type=LISTEN,
    default=DEFAULT_LISTEN,
    show_default=True,
    envvar="SWARM_LISTEN",
    show_envvar=True,
    help="HOST:PORT to serve HTTP on (port 0: any free port)",
)
@click.option(
    "--public-url",
    default=None,
    envvar="SWARM_PUBLIC_URL",
    show_envvar=True,
    help="the URL hosts reach this tracker at",
)
@click.option(
    "--cert-lifetime",
    default=DEFAULT_CERT_LIFETIME,
    show_default=True,
    type=click.IntRange(min=MIN_CERT_LIFETIME),
    envvar="SWARM_CERT_LIFETIME",
    show_envvar=True,
    help="seconds a host certificate is valid",
)
@click.option(
    "--announce-interval",
    default=DEFAULT_INTERVAL,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="SWARM_ANNOUNCE_INTERVAL",
    show_envvar=True,
    help="seconds between announces",
)
@click.option(
    "--min-interval",
    default=None,
    type=click.IntRange(min=0),
    envvar="SWARM_MIN_INTERVAL",
    show_envvar=True,
    help="seconds before a host's next announce gets fresh work; sooner gets its "
    "last answer again  [default: half the announce interval]",
)
@_DATABASE
@click.option(
    "--redis",
    default=None,
    envvar="SWARM_REDIS",
    show_envvar=True,
    help="redis://HOST:PORT/DB: peer store shared by replicas and workers (default: in memory)",
)
@click.option(
    "--auth-failure-limit",
    default=DEFAULT_AUTH_FAILURE_LIMIT,
    show_default=True,
    type=click.IntRange(min=0),
    envvar="SWARM_AUTH_FAILURE_LIMIT",
    show_envvar=True,
    help="failed authentications per minute from one address before it gets 429 (0: no limit)",
)
@click.option(
    "--client-timeout",
    default=DEFAULT_CLIENT_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0.1),
    envvar="SWARM_CLIENT_TIMEOUT",
    show_envvar=True,
    help="seconds a client has to send a request (and idle keep-alive time)",
)
@click.option(
    "--max-peers-per-host",
    default=DEFAULT_MAX_PEERS_PER_HOST,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="SWARM_MAX_PEERS_PER_HOST",
    show_envvar=True,
    help="peers one token may have in one torrent's swarm (more replace its oldest)",
)
@click.option(
    "--max-connections",
    default=None,
    type=click.IntRange(min=1),
    envvar="SWARM_MAX_CONNECTIONS",
    show_envvar=True,
    help="open client connections per process  [default: the file descriptor limit less 64]",
)
@click.option(
    "--max-connections-per-address",
    default=DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="SWARM_MAX_CONNECTIONS_PER_ADDRESS",
    show_envvar=True,
    help="open client connections from one address",
)
@click.option(
    "--workers",
    default=DEFAULT_WORKERS,
    show_default=True,
    type=click.IntRange(min=1, max=MAX_WORKERS),
    envvar="SWARM_WORKERS",
    show_envvar=True,
    help="processes sharing the port (SO_REUSEPORT); more than one needs --redis",
)
@click.option(
    "--tls",
    is_flag=True,
    envvar="SWARM_TLS",
    show_envvar=True,
    help="serve HTTPS with a certificate from the swarm CA (hosts pin it by their join token)",
)
@click.option(
    "--log-level",
    type=click.Choice(logs.LEVELS),
    default=logs.DEFAULT_LEVEL,
    show_default=True,
    envvar="SWARM_LOG_LEVEL",
    show_envvar=True,
    help="least severe level logged (debug also logs /healthz, /readyz and /metrics hits)",
)
@click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    default=logs.DEFAULT_FORMAT,
    show_default=True,
    envvar="SWARM_LOG_FORMAT",
    show_envvar=True,
    help="text lines, or one JSON object per line",
)
@click.option("--reuse-port", is_flag=True, hidden=True)
def serve(
    data: Path,
    listen: tuple[str, int],
    public_url: str | None,
    cert_lifetime: int,
    announce_interval: int,
    min_interval: int | None,
    database: str | None,
    redis: str | None,
    auth_failure_limit: int,
    client_timeout: float,
    max_peers_per_host: int,
    max_connections: int | None,
    max_connections_per_address: int,
    workers: int,
    tls: bool,
    log_level: str,
    log_format: str,
    reuse_port: bool,
) -> None:
    """Run the tracker until SIGTERM."""
    if min_interval is not None and min_interval > announce_interval:
        raise UsageError("--min-interval must not exceed --announce-interval")
    logs.configure(log_level, log_format)
    if workers > 1:
        _share_metrics(data)
    from swarm.tracker.server import run_tracker  # imports prometheus_client: after _share_metrics

    host, port = listen
    options = ServeOptions(
        data=data,
        host=host,
        port=port,
        public_url=public_url,
        cert_lifetime=cert_lifetime,
        interval=announce_interval,
        min_interval=min_interval,
        database=database,
        redis=redis,
        auth_failure_limit=auth_failure_limit,
        client_timeout=client_timeout,
        max_peers_per_host=max_peers_per_host,
        max_connections=max_connections,
        max_connections_per_address=max_connections_per_address,
        workers=workers,
        reuse_port=reuse_port,
        tls=tls,
        log_level=log_level,
        log_format=log_format,
    )
    try:
        import uvloop
    except ImportError:  # plain asyncio works, a little slower
        asyncio.run(run_tracker(options))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_tracker(options))


def _share_metrics(data: Path) -> None:
    """Let the workers count into one directory, summed at each scrape (see swarm/tracker/metrics.py).

    Must run before prometheus_client is imported; the workers inherit the variable."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    directory = data / "metrics"
    shutil.rmtree(directory, ignore_errors=True)  # counts of an earlier run: a restart resets counters
    directory.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


@tracker.group()
def token() -> None:
    """Create, revoke and list join tokens."""


def _service(data: Path, database: str | None) -> TrackerService:
    from swarm.tracker.server import open_service

    return open_service(ServeOptions(data=data, database=database))


@token.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES), envvar="SWARM_ROLE", show_envvar=True)
@_FILE
@_DATA
@_DATABASE
def token_create(name: str, role: str, data: Path, database: str | None) -> None:
    """Create a token; prints the join token (only this once)."""
    service = _service(data, database)
    try:
        click.echo(str(service.create_token(name, role)))
    finally:
        service.close()


@token.command("revoke")
@click.argument("name")
@_FILE
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
@_FILE
@_DATA
@_DATABASE
def token_list(data: Path, database: str | None) -> None:
    """List tokens (never their secrets)."""
    service = _service(data, database)
    try:
        records = service.list_tokens()
    finally:
        service.close()
    print_table(
        Console(),
        ("name", "role", "created", "revoked"),
        [(r.name, r.role, _when(r.created), _when(r.revoked_at) if r.revoked_at else "") for r in records],
    )


def _when(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@tracker.group()
def image() -> None:
    """The published images (manifests by repository:tag)."""


@image.command("list")
@click.argument("pattern", required=False)
@_FILE
@_DATA
@_DATABASE
def image_list(pattern: str | None, data: Path, database: str | None) -> None:
    """List published images, newest last; PATTERN as for `agent --watch` (`myapp/*`, `myapp:prod-*`)."""
    from swarm.core.refs import ImageRef, matches
    from swarm.tracker.storage import open_storage

    storage = open_storage(data, database)
    try:
        entries = storage.manifests()
    finally:
        storage.close()
    rows = [
        [e.ref, e.image_id[:19], str(e.seq), _when(e.published), e.publisher]
        for e in entries
        if pattern is None or matches(pattern, ImageRef.parse(e.ref))
    ]
    print_table(Console(), ["ref", "image id", "seq", "published", "publisher"], rows)


@tracker.command("backup")
@click.argument("archive", type=click.Path(path_type=Path, dir_okay=False))
@_FILE
@_DATA
@_DATABASE
def backup_command(archive: Path, data: Path, database: str | None) -> None:
    """Write the database (online, while the tracker runs) and the CA to ARCHIVE (tar, mode 0600)."""
    from swarm.tracker.backup import backup

    names = backup(data, database, archive)
    click.echo(f"backed up {', '.join(names)} to {archive}", err=True)


@tracker.command("restore")
@click.argument("archive", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--force", is_flag=True, help="replace the database already in --data (stop the tracker first)")
@_FILE
@_DATA
@_DATABASE
def restore_command(archive: Path, force: bool, data: Path, database: str | None) -> None:
    """Put a backup's database and CA into --data; run it while the tracker is stopped."""
    from swarm.tracker.backup import restore

    version = restore(archive, data, database, force)
    click.echo(f"restored {archive} into {data} (schema {version}; `swarm tracker db migrate` if older)", err=True)


@tracker.group()
def db() -> None:
    """The database's schema version, and its upgrade."""


@db.command("status")
@_FILE
@_DATA
@_DATABASE
def db_status(data: Path, database: str | None) -> None:
    """Show the schema version (changes nothing)."""
    from swarm.tracker.backup import schema_status

    click.echo(schema_status(data, database).summary)


@db.command("migrate")
@_FILE
@_DATA
@_DATABASE
def db_migrate(data: Path, database: str | None) -> None:
    """Bring the schema to this swarm's version (what `serve` also does at start)."""
    from swarm.tracker.backup import migrate

    before, after = migrate(data, database)
    click.echo(f"migrated from schema {before}: {after.summary}" if before != after.version else after.summary)
