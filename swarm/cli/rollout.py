"""`swarm rollout status|wait IMAGE` and `swarm tracker hosts`: the fleet as the tracker sees it.

Remote (`--tracker URL` with an admin or builder token) through the tracker's API, or local on the
tracker's data dir (`--data DIR`, the operator on the tracker machine: no token needed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table

from swarm.cli.params import one_secret
from swarm.cli.render import out
from swarm.core.errors import SwarmError, UsageError
from swarm.core.refs import ImageRef
from swarm.core.tokens import JoinToken
from swarm.core.units import human_bytes

T = TypeVar("T")
POLL_EVERY = 1.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")


class Source:
    """Where fleet state comes from: the tracker's API or its data dir."""

    def __init__(
        self, tracker: str | None, token: str | None, token_file: Path | None, data: Path | None, database: str | None
    ) -> None:
        if (tracker is None) == (data is None):
            raise UsageError("give either --tracker URL (with --token or --token-file) or the tracker's --data DIR")
        self._tracker = tracker
        self._token = JoinToken.parse(one_secret(token, token_file)) if tracker else None
        self._data, self._database = data, database

    def rollout(self, ref: str) -> dict[str, Any]:
        if self._tracker is None:
            return self._local(lambda fleet: fleet.rollout_view(ref).to_map())
        return self._remote(lambda client: client.rollout(ref))

    def hosts(self) -> list[dict[str, Any]]:
        if self._tracker is None:
            return self._local(lambda fleet: [h.to_map() for h in fleet.hosts_view()])
        return self._remote(lambda client: client.hosts())

    def remove(self, ref: str) -> dict[str, Any]:
        """Remove tag `ref` (remote: as the token's builder or admin; local: as the operator)."""
        if self._tracker is None:
            return self._on_service(lambda service: service.remove_tag(ref).to_map())
        return self._remote(lambda client: _entry_map(client.remove_manifest(ref)))

    def _local(self, read: Callable[[Any], T]) -> T:
        from swarm.tracker.fleet import Fleet

        return self._on_service(lambda service: read(Fleet(service.storage, service.ca)))

    def _on_service(self, read: Callable[[Any], T]) -> T:
        from swarm.tracker.options import ServeOptions
        from swarm.tracker.server import open_service

        assert self._data is not None
        if not (self._data / "tracker.db").exists() and self._database is None:
            raise UsageError(f"no tracker data in {self._data}")
        service = open_service(ServeOptions(data=self._data, database=self._database))
        try:
            return read(service)
        finally:
            service.close()

    def _remote(self, call: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        from swarm.agent.tracker_client import TrackerClient

        assert self._tracker is not None and self._token is not None
        token = self._token

        async def run() -> T:
            async with TrackerClient(self._tracker or "", token) as client:
                if client.https:
                    await client.pin_ca()
                return await call(client)

        return asyncio.run(run())


async def _entry_map(entry: Coroutine[Any, Any, Any]) -> dict[str, Any]:
    result: dict[str, Any] = (await entry).to_map()
    return result


def parse_duration(text: str) -> float:
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise UsageError(f"invalid duration {text!r}: e.g. 20s, 5m, 1h, 90")
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m[2]]


class _Duration(click.ParamType):  # type: ignore[type-arg]
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except UsageError as exc:
            self.fail(exc.message, param, ctx)


def _source_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--tracker",
            "tracker_url",
            envvar="SWARM_TRACKER",
            show_envvar=True,
            help="Tracker URL (with an admin or builder token).",
        ),
        click.option("--token", envvar="SWARM_TOKEN", show_envvar=True, help="Join token (admin or builder)."),
        click.option(
            "--token-file",
            type=click.Path(path_type=Path, dir_okay=False),
            envvar="SWARM_TOKEN_FILE",
            show_envvar=True,
            help="Read the token from this file instead.",
        ),
        click.option(
            "--data",
            type=click.Path(path_type=Path, file_okay=False),
            envvar="SWARM_TRACKER_DATA",
            show_envvar=True,
            help="The tracker's data dir, instead of --tracker (on the tracker machine).",
        ),
        click.option(
            "--database",
            envvar="SWARM_DATABASE",
            show_envvar=True,
            help="With --data: the tracker's postgresql://... database.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command("rm")
@click.argument("ref")
@_source_options
def image_rm(
    ref: str,
    tracker_url: str | None,
    token: str | None,
    token_file: Path | None,
    data: Path | None,
    database: str | None,
    as_json: bool,
) -> None:
    """Remove tag REF (repo:tag): the repository's owner builder or an admin (--tracker), or the
    operator (--data). Its torrents no other tag names are retired; the tag can only come back with
    a manifest newer than the removed one."""
    entry = Source(tracker_url, token, token_file, data, database).remove(_ref(ref))
    if as_json:
        click.echo(json.dumps(entry, indent=2))
        return
    click.echo(f"removed {entry['ref']} (seq {entry['seq']})", err=True)


def _ref(image: str) -> str:
    return str(ImageRef.parse(image))


@click.group()
def rollout() -> None:
    """Which hosts have an image: per-host state, and waiting for a rollout."""


@rollout.command("status")
@click.argument("image")
@_source_options
def status(
    image: str,
    tracker_url: str | None,
    token: str | None,
    token_file: Path | None,
    data: Path | None,
    database: str | None,
    as_json: bool,
) -> None:
    """Per-host state and progress of IMAGE, and a summary line."""
    view = Source(tracker_url, token, token_file, data, database).rollout(_ref(image))
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    table = Table("host", "state", "progress", "from peers", "from builder", "stages", "image", "note")
    for h in view["hosts"]:
        progress = f"{100 * h['done'] // h['total']}%" if h["total"] else ""
        stages = " ".join(f"{s['name']} {s['seconds']:.1f}s" for s in h["stages"])
        note = h["error"] or ("stale" if h["stale"] else "") or ("" if h["current"] else "older image")
        table.add_row(
            h["host"],
            h["state"],
            progress,
            human_bytes(h["from_peers"]),
            human_bytes(h["from_builder"]),
            stages,
            h["image_id"][7:19],
            note,
        )
    for name in view["missing"]:
        if name not in {h["host"] for h in view["hosts"]}:
            table.add_row(name, "-", "", "", "", "", "", "no report")
    out.print(table)
    click.echo(view["summary"])


@rollout.command("wait")
@click.argument("image")
@click.option("--hosts", "min_hosts", type=click.IntRange(min=1), help="Done when this many hosts loaded it.")
@click.option(
    "--percent",
    type=click.FloatRange(min=0, max=100, min_open=True),
    help="Done when this share of the fleet loaded it (default: every host).",
)
@click.option(
    "--timeout",
    type=_Duration(),
    default="10m",
    show_default=True,
    help="Give up after this long (e.g. 20s, 5m) and exit 1 naming the missing hosts.",
)
@_source_options
def wait(
    image: str,
    min_hosts: int | None,
    percent: float | None,
    timeout: float,
    tracker_url: str | None,
    token: str | None,
    token_file: Path | None,
    data: Path | None,
    database: str | None,
    as_json: bool,
) -> None:
    """Wait until IMAGE is loaded on enough hosts: exit 0 then, 1 on timeout."""
    if min_hosts is not None and percent is not None:
        raise UsageError("give at most one of --hosts and --percent")
    source = Source(tracker_url, token, token_file, data, database)
    ref = _ref(image)
    deadline = time.monotonic() + timeout
    while True:
        try:
            view: dict[str, Any] | None = source.rollout(ref)
        except SwarmError as exc:
            if exc.exit_code == 2 or "not published" not in exc.message:
                raise
            view = None  # nothing known yet: keep waiting
        if view is not None and reached(view, min_hosts, percent):
            click.echo(json.dumps(view, indent=2) if as_json else view["summary"])
            return
        if time.monotonic() >= deadline:
            if as_json and view is not None:
                click.echo(json.dumps(view, indent=2))
            raise SwarmError(f"timed out after {timeout:g}s waiting for {ref}: " + _missing(view))
        time.sleep(min(POLL_EVERY, max(0.0, deadline - time.monotonic())))


def reached(view: dict[str, Any], min_hosts: int | None, percent: float | None) -> bool:
    loaded, total = int(view["loaded"]), int(view["total"])
    if min_hosts is not None:
        return loaded >= min_hosts
    if total == 0:
        return False
    return loaded * 100 >= (percent if percent is not None else 100.0) * total


def _missing(view: dict[str, Any] | None) -> str:
    if view is None:
        return "no host reported it"
    states = {h["host"]: h["state"] for h in view["hosts"]}
    names = ", ".join(f"{n} ({states.get(n, 'no report')})" for n in view["missing"]) or "none"
    return f"{view['summary']}; missing: {names}"


@click.command("hosts")
@_source_options
def hosts(
    tracker_url: str | None,
    token: str | None,
    token_file: Path | None,
    data: Path | None,
    database: str | None,
    as_json: bool,
) -> None:
    """Every host and builder: address, last seen, agent version, certificate, cache, images loaded."""
    rows = Source(tracker_url, token, token_file, data, database).hosts()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "role", "groups", "address", "last seen", "version", "cert expires", "cache", "images loaded")
    now = time.time()
    for h in rows:
        seen = "never" if h["last_seen"] is None else f"{now - h['last_seen']:.0f} s ago"
        if h["stale"] and h["last_seen"] is not None:
            seen += " (stale)"
        cert = "" if h["cert_not_after"] is None else _when(h["cert_not_after"])
        cache = (
            ""
            if h["cache_bytes"] is None
            else human_bytes(h["cache_bytes"]) + (f" / {human_bytes(h['cache_budget'])}" if h["cache_budget"] else "")
        )
        loaded = str(h["images_loaded"]) + (f" ({h['failing']} failed)" if h["failing"] else "")
        table.add_row(
            h["name"], h["role"], ",".join(h["groups"]), h["address"], seen, h["version"], cert, cache, loaded
        )
    out.print(table)


def _when(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
