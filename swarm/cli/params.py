"""Option types and readers of the `swarm` commands' inputs (files, environment)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from swarm.core.errors import UsageError
from swarm.core.signing import parse_public_key
from swarm.core.units import parse_rate, parse_size


class _Parsed(click.ParamType):  # type: ignore[type-arg]
    """A click option value parsed by one of swarm's parsers (a UsageError becomes click's usage error)."""

    def __init__(self, name: str, parse: Callable[[str], int]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value  # a default, already a number
        try:
            return self._parse(str(value))
        except UsageError as exc:
            self.fail(exc.message, param, ctx)


#: bytes per second from `50MB/s`, `100mbit`, `0` (unlimited)
RATE = _Parsed("RATE", parse_rate)
#: bytes from `500MB`, `20GiB`
SIZE = _Parsed("SIZE", parse_size)


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def one_secret(value: str | None, path: Path | None, names: str = "--token and --token-file") -> str:
    """The secret given inline or in a file (which keeps it out of the process list): exactly one of both."""
    if path is not None and value is None:
        return read_text(path).strip()
    if value is not None and path is None:
        return value
    raise UsageError(f"give exactly one of {names}")


def split_words(values: tuple[str, ...]) -> list[str]:
    """Repeatable options also come space-separated from one environment variable."""
    return [part for v in values for part in v.split()]


def public_keys(values: tuple[str, ...], path: Path | None) -> list[bytes]:
    """Keys from repeated options plus a file of one key per line (# comments)."""
    lines = (
        []
        if path is None
        else [ln.strip() for ln in read_text(path).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    )
    return [parse_public_key(k) for k in [*split_words(values), *lines]]
