"""The one schema migration runner, for SQLite and PostgreSQL alike.

Each dialect's schema is a series of SQL files, `schema/<dialect>/NNNN_what.sql`,
one per version (package data, read with importlib.resources). Numbers grow but
may skip (each change reserves its number; a dialect that needs no step for a
number has no file for it). A database
records its version in `schema_version`; `migrate` runs the files after it,
all in the caller's transaction, which must also keep other migrators out
(SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so that trackers
started together migrate once. A database newer than this code is refused
rather than guessed at.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Callable
from importlib import resources
from typing import Any

from swarm.core.errors import InvalidInput

DIALECTS = ("sqlite", "postgresql")
_FILE = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


@functools.cache
def scripts(dialect: str) -> dict[int, str]:
    """Version -> SQL script, oldest first, for `dialect`."""
    folder = resources.files(__package__).joinpath("schema", dialect)
    matched = [(int(m[1]), f) for f in folder.iterdir() if (m := _FILE.fullmatch(f.name))]
    numbers = [n for n, _f in matched]
    if len(set(numbers)) != len(numbers) or 1 not in numbers:
        raise RuntimeError(f"the {dialect} schema files must start at 1, one file per number: {sorted(numbers)}")
    return {n: f.read_text() for n, f in sorted(matched, key=lambda nf: nf[0])}


def latest(dialect: str) -> int:
    return max(scripts(dialect))


def statements(script: str) -> list[str]:
    """The statements of a script, one by one (drivers take one per call inside a transaction)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if any(ln.strip() and not ln.lstrip().startswith("--") for ln in buf.splitlines()):
        raise RuntimeError(f"unterminated SQL statement: {buf.strip()[:60]!r}")
    return out


def migrate(execute: Callable[[str], Any], dialect: str) -> int:
    """Bring a database to the newest schema with `execute` (one statement, in the caller's
    exclusive transaction); returns the version."""
    newest = latest(dialect)
    execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = execute("SELECT version FROM schema_version").fetchone()
    version = int(row[0]) if row else 0
    if version > newest:
        raise InvalidInput(f"tracker database schema {version} is newer than this tracker ({newest})")
    if version == newest:
        return version
    for step in [n for n in scripts(dialect) if n > version]:
        for statement in statements(scripts(dialect)[step]):
            execute(statement)
    execute("DELETE FROM schema_version")
    execute(f"INSERT INTO schema_version (version) VALUES ({newest})")
    return newest
