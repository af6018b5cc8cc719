"""Tracker storage: the interface and records in `base`, SQLite or PostgreSQL behind it, opened by `open_storage`."""

from __future__ import annotations

from pathlib import Path

from swarm.core.errors import InvalidInput, UsageError
from swarm.tracker.storage.base import Storage


def open_storage(data_dir: Path, database: str | None = None) -> Storage:
    """SQLite in `data_dir`, or the PostgreSQL database at `database` (postgresql://...)."""
    if database is None or database.startswith("sqlite:"):
        from swarm.tracker.storage.sqlite import SQLiteStorage

        return SQLiteStorage(Path(database[len("sqlite:") :]) if database else data_dir)
    if database.startswith(("postgresql://", "postgres://")):
        try:
            from swarm.tracker.storage.postgres import (
                PostgresStorage,  # psycopg loads only for PostgreSQL
            )
        except ModuleNotFoundError as exc:
            raise UsageError(
                f"a PostgreSQL database needs the tracker-ha extra (pip install 'swarm[tracker-ha]'): {exc}"
            ) from None

        return PostgresStorage(database)
    raise InvalidInput(f"unsupported database URL {database.split(':', 1)[0]!r}: expected postgresql://...")
