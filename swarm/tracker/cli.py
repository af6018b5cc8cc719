"""`swarm tracker ...`: run the tracker, manage its join tokens, repositories and key document.

Errors become messages and exit codes in one place, `swarm.cli.main.main()`,
which runs these commands. Every default is defined once, in options.py.
The tracker's modules load only when a command runs, and none loads
libtorrent (tests/integration/test_tracker_http.py checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from swarm.cli.config import TRACKER_CONFIG, config_option, default_tracker_data
from swarm.cli.tables import print_table
from swarm.core import logs
from swarm.core.addresses import LISTEN
from swarm.core.errors import UsageError
from swarm.core.signing import format_public_key, parse_public_key
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
@click.option(
    "--keep",
    default=None,
    type=click.IntRange(min=1),
    envvar="SWARM_KEEP",
    show_envvar=True,
    help="retention: tags kept per repository, the newest by publish order (older ones are removed)",
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
    keep: int | None,
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
        keep=keep,
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


@contextlib.contextmanager
def _service(data: Path, database: str | None) -> Iterator[TrackerService]:
    """The service on the data dir, for one command; closed after it."""
    from swarm.tracker.server import open_service

    service = open_service(ServeOptions(data=data, database=database))
    try:
        yield service
    finally:
        service.close()


_KEY = click.option(
    "--key",
    "public_key",
    default=None,
    envvar="SWARM_BUILDER_KEY",
    show_envvar=True,
    help="builder tokens: the public signing key (ed25519:..., from `swarm keygen`) bound to it",
)
_PUBLISH = click.option(
    "--publish",
    multiple=True,
    metavar="PATTERN",
    help="builder tokens: a repository pattern it may publish into (repeatable; "
    "e.g. 'myapp/*', 'base:*'; default for a new token: any repository nobody owns)",
)


@token.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES), envvar="SWARM_ROLE", show_envvar=True)
@_KEY
@_PUBLISH
@click.option("--group", "groups", multiple=True, help="a host group it belongs to (repeat; default: default)")
@_FILE
@_DATA
@_DATABASE
def token_create(
    name: str,
    role: str,
    public_key: str | None,
    publish: tuple[str, ...],
    groups: tuple[str, ...],
    data: Path,
    database: str | None,
) -> None:
    """Create a token; prints the join token (only this once). A builder token is bound to --key."""
    key = parse_public_key(public_key) if public_key else None
    with _service(data, database) as service:
        click.echo(str(service.create_token(name, role, key, publish, groups)))


@token.command("update")
@click.argument("name")
@_KEY
@_PUBLISH
@_FILE
@_DATA
@_DATABASE
def token_update(name: str, public_key: str | None, publish: tuple[str, ...], data: Path, database: str | None) -> None:
    """Rebind a builder token to a new key (rotation) and/or replace its --publish patterns."""
    if public_key is None and not publish:
        raise UsageError("give --key and/or --publish")
    key = parse_public_key(public_key) if public_key else None
    with _service(data, database) as service:
        service.update_token(name, key, publish or None)
    click.echo(f"updated {name}", err=True)


@token.command("revoke")
@click.argument("name")
@_FILE
@_DATA
@_DATABASE
def token_revoke(name: str, data: Path, database: str | None) -> None:
    """Revoke a token: refused at once everywhere, its certificate is not renewed."""
    with _service(data, database) as service:
        service.revoke_token(name)
    click.echo(f"revoked {name}", err=True)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table")
@_FILE
@_DATA
@_DATABASE
def token_list(as_json: bool, data: Path, database: str | None) -> None:
    """List tokens (never their secrets) with their groups."""
    with _service(data, database) as service:
        records = service.list_tokens()
        groups = {r.name: sorted(service.token_groups(r.name)) for r in records}
    if as_json:
        listing = [
            {"name": r.name, "role": r.role, "created": r.created, "revoked_at": r.revoked_at, "groups": groups[r.name]}
            for r in records
        ]
        click.echo(json.dumps(listing, indent=2))
        return
    rows = [[r.name, r.role, _when(r.created), _when(r.revoked_at) if r.revoked_at else ""] for r in records]
    headers = ["name", "role", "created", "revoked"]
    # the groups column appears once groups are in use (a fleet all in `default` reads as before)
    if any(g != ["default"] for g in groups.values()):
        headers.insert(2, "groups")
        for row, r in zip(rows, records, strict=True):
            row.insert(2, ",".join(groups[r.name]) or "-")
    print_table(Console(), headers, rows)


@token.command("groups")
@click.argument("name")
@click.option("--add", "add", multiple=True, help="join this group (repeat)")
@click.option("--remove", "remove", multiple=True, help="leave this group (repeat); refused at once")
@_FILE
@_DATA
@_DATABASE
def token_groups(name: str, add: tuple[str, ...], remove: tuple[str, ...], data: Path, database: str | None) -> None:
    """Change a token's group memberships; prints the groups it is in after the change."""
    with _service(data, database) as service:
        if add or remove:
            service.change_memberships(name, list(add), list(remove))
        elif service.storage.token(name) is None:
            raise UsageError(f"no token named {name!r}")
        click.echo(" ".join(sorted(service.token_groups(name))))


@tracker.group()
def group() -> None:
    """Host groups: which hosts may read which repositories."""


@group.command("add")
@click.argument("name")
@_FILE
@_DATA
@_DATABASE
def group_add(name: str, data: Path, database: str | None) -> None:
    """Create a group (lowercase letters, digits, '-')."""
    with _service(data, database) as service:
        service.add_group(name)
    click.echo(f"added group {name}", err=True)


@group.command("rm")
@click.argument("name")
@_FILE
@_DATA
@_DATABASE
def group_rm(name: str, data: Path, database: str | None) -> None:
    """Remove a group and its memberships (refused while patterns map to it or images are in it)."""
    with _service(data, database) as service:
        service.remove_group(name)
    click.echo(f"removed group {name}", err=True)


@group.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table")
@_FILE
@_DATA
@_DATABASE
def group_list(as_json: bool, data: Path, database: str | None) -> None:
    """List groups with their id, repository patterns and member tokens."""
    from swarm.core.groups import group_id

    with _service(data, database) as service:
        records = service.list_groups()
    if as_json:
        listing = [
            {"name": r.name, "id": group_id(r.name), "patterns": list(r.patterns), "members": list(r.members)}
            for r in records
        ]
        click.echo(json.dumps(listing, indent=2))
        return
    print_table(
        Console(),
        ("group", "id", "patterns", "members"),
        [(r.name, group_id(r.name), " ".join(r.patterns), " ".join(r.members)) for r in records],
    )


@group.command("map")
@click.argument("pattern")
@click.argument("group_name", metavar="GROUP")
@_FILE
@_DATA
@_DATABASE
def group_map(pattern: str, group_name: str, data: Path, database: str | None) -> None:
    """Put the repositories PATTERN matches (`payments/*`) in GROUP; the most specific pattern wins."""
    with _service(data, database) as service:
        service.map_pattern(pattern, group_name)
    click.echo(f"mapped {pattern} to {group_name}", err=True)


@group.command("unmap")
@click.argument("pattern")
@_FILE
@_DATA
@_DATABASE
def group_unmap(pattern: str, data: Path, database: str | None) -> None:
    """Remove a pattern's mapping (its repositories fall back to other patterns or default)."""
    with _service(data, database) as service:
        service.unmap_pattern(pattern)
    click.echo(f"unmapped {pattern}", err=True)


@token.command("show")
@click.argument("name")
@_FILE
@_DATA
@_DATABASE
def token_show(name: str, data: Path, database: str | None) -> None:
    """One token: its role, and a builder's bound key and --publish patterns."""
    with _service(data, database) as service:
        record = service.storage.token(name)
    if record is None:
        raise UsageError(f"no token named {name!r}")
    click.echo(f"name      {record.name}\nrole      {record.role}")
    if record.builder_key:
        click.echo(f"key       {format_public_key(record.builder_key)}\npublishes {' '.join(record.publish)}")
    if record.revoked_at:
        click.echo(f"revoked   {_when(record.revoked_at)}")


@tracker.group()
def repo() -> None:
    """Repository owners: a repository's tags belong to the builder token that first published there."""


@repo.command("list")
@_FILE
@_DATA
@_DATABASE
def repo_list(data: Path, database: str | None) -> None:
    """List repositories and their owners."""
    with _service(data, database) as service:
        rows = service.list_repositories()
    print_table(Console(), ("repository", "owner"), [(repository, owner) for repository, owner in rows])


@repo.command("transfer")
@click.argument("repository")
@click.option("--to", "owner", required=True, help="the builder token that owns it from now on")
@_FILE
@_DATA
@_DATABASE
def repo_transfer(repository: str, owner: str, data: Path, database: str | None) -> None:
    """Hand REPOSITORY over to another builder token (its --publish patterns must still match)."""
    with _service(data, database) as service:
        service.transfer_repository(repository, owner)
    click.echo(f"{repository} now belongs to {owner}", err=True)


@tracker.group()
def keys() -> None:
    """The root-signed key document hosts with --trust-root follow."""


@keys.command("publish")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_FILE
@_DATA
@_DATABASE
def keys_publish(file: Path, data: Path, database: str | None) -> None:
    """Serve the signed key document FILE (from `swarm keys sign`) at /v1/keys; its version must grow."""
    try:
        envelope = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}") from exc
    with _service(data, database) as service:
        version = service.publish_key_document(envelope)
    click.echo(f"key document version {version} published", err=True)


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


@image.command("prune")
@click.option("--keep", required=True, type=click.IntRange(min=0), help="tags kept per repository, the newest by seq")
@click.option("--older-than", default=None, help="only remove tags published longer ago than this (30s, 10m, 2h, 7d)")
@_FILE
@_DATA
@_DATABASE
def image_prune(keep: int, older_than: str | None, data: Path, database: str | None) -> None:
    """Remove all but the newest --keep tags of every repository (their torrents retire)."""
    age = None if older_than is None else _seconds(older_than)
    with _service(data, database) as service:
        removed = service.prune(keep, age)
    for e in removed:
        click.echo(f"removed {e.ref} (seq {e.seq})", err=True)
    click.echo(f"pruned {len(removed)} tags", err=True)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str) -> int:
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    if not number.isdigit():
        raise UsageError(f"invalid duration {text!r}: e.g. 30s, 10m, 2h, 7d")
    return int(number) * _UNITS[unit]


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
