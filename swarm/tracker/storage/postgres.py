"""PostgreSQL storage (psycopg 3) for tracker replicas: `--database postgresql://...`.

The same tables as SQLite plus `ca` (schema/postgresql/): replicas have no
shared disk, so the CA key and certificate live in the database. The first
tracker to start stores its freshly made CA (INSERT ... ON CONFLICT DO
NOTHING) and every replica then reads that one row, so all of them sign host
certificates with one CA and every torrent names the same root. Whoever can
read this database can therefore sign host certificates: give the trackers
their own role and keep it off the network.

Migrations run under a transaction-level advisory lock, so replicas started
together migrate once. Publications take a table lock for seq allocation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from swarm.core.errors import SwarmError
from swarm.tracker.storage import migrations
from swarm.tracker.storage.sql import SQLStorage

PG_SCHEMA_VERSION = migrations.latest("postgresql")
_MIGRATION_LOCK = 0x5357524D  # "SWRM"


def _redact(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}@{host}"


class PostgresStorage(SQLStorage):
    _insert_ignore = "INSERT INTO"
    _ignore_tail = " ON CONFLICT DO NOTHING"
    _integrity = (psycopg.errors.UniqueViolation,)

    def __init__(self, url: str) -> None:
        self._url = url
        self.location = _redact(url)
        self._lock = threading.RLock()
        self._conn = self._connect()
        self._migrate()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise SwarmError(
                f"cannot connect to the tracker database {self.location}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
            ) from exc

    def _migrate(self) -> None:
        with self._tx() as c:
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            migrations.migrate(c.execute, "postgresql")

    @property
    def schema_version(self) -> int:
        return int(self._one("SELECT version FROM schema_version")[0])

    def close(self) -> None:
        self._conn.close()

    def _live(self) -> psycopg.Connection[Any]:
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            conn = self._live()
            with conn.transaction():
                yield conn

    def _x(self, c: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return c.execute(sql.replace("?", "%s"), params)

    def _q(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        raise NotImplementedError  # reads go through _one/_all, which fetch under the lock

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        with self._lock:
            return self._read(sql, params).fetchone()

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            rows: list[Any] = self._read(sql, params).fetchall()
            return rows

    def _read(self, sql: str, params: tuple[Any, ...]) -> Any:
        sql = sql.replace("?", "%s")
        try:
            return self._live().execute(sql, params)
        except psycopg.OperationalError:
            # the server restarted or dropped us: one new connection, one more try
            self._conn = self._connect()
            return self._conn.execute(sql, params)

    def _lock_manifests(self, c: Any) -> None:
        c.execute("LOCK TABLE manifests IN SHARE ROW EXCLUSIVE MODE")

    def shared_ca(self, key_pem: str, cert_pem: str) -> tuple[str, str] | None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO ca (id, key_pem, cert_pem) VALUES (1, %s, %s) ON CONFLICT DO NOTHING", (key_pem, cert_pem)
            )
            row = c.execute("SELECT key_pem, cert_pem FROM ca WHERE id = 1").fetchone()
        return str(row[0]), str(row[1])
