"""HOST:PORT listen addresses: one parser, also as a click parameter type."""

from __future__ import annotations

from typing import Any

import click

from swarm.core.errors import UsageError


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT`; port 0 means any free port."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"invalid listen address {text!r}: expected HOST:PORT")
    return host, int(port)


def format_host(host: str) -> str:
    """A host as it appears in a URL or HOST:PORT (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def format_listen(address: tuple[str, int]) -> str:
    """(host, port) as `HOST:PORT`, the form `parse_listen` reads."""
    host, port = address
    return f"{format_host(host)}:{port}"


class ListenAddress(click.ParamType):  # type: ignore[type-arg]
    """A click option value `HOST:PORT`, converted to (host, port)."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value  # a default already converted
        try:
            return parse_listen(str(value))
        except UsageError as exc:
            self.fail(exc.message, param, ctx)


LISTEN = ListenAddress()
