"""SQLite storage: `<data>/tracker.db` (WAL mode), the default for one tracker process."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from swarm.tracker.storage import migrations
from swarm.tracker.storage.sql import SQLStorage

DB_NAME = "tracker.db"
SCHEMA_VERSION = migrations.latest("sqlite")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database up to SCHEMA_VERSION in one transaction; returns the version."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = migrations.migrate(conn.execute, "sqlite")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return version


class SQLiteStorage(SQLStorage):
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / DB_NAME
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.path = path
        self.location = f"sqlite:{path}"
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=10000")
        migrate(self._conn)

    def close(self) -> None:
        self._conn.close()

    def ping(self) -> None:
        # an open connection keeps answering from a database file deleted under it,
        # whose writes would be lost: that tracker is not ready
        if not self.path.is_file():
            raise OSError(f"the database file {self.path} is gone")
        super().ping()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _q(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        with self._lock:
            return self._conn.execute(sql, params)

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def shared_ca(self, key_pem: str, cert_pem: str) -> tuple[str, str] | None:
        return None
