"""The tracker's durable state behind one small interface, `Storage`, with two forms:

- `SQLiteStorage`: `<data>/tracker.db` (WAL mode), the default for one tracker process;
- `PostgresStorage` (tracker/pgstorage.py): one database shared by tracker replicas
  (`--database postgresql://...`).

Both share the SQL below (`_SQLStorage`); only connections, transactions and
a few dialect words differ. Token secrets are never stored, only their sha256
(`swarm.core.tokens.hash_secret`). The CLI's `token` commands and running
trackers share the database: every revocation bumps the `revocations`
counter in `meta`, which trackers read on every authenticated request, so a
revocation counts at once even where a tracker caches token records.

Tables (SQLite schema version 2):
  tokens        name PK, role, secret_hash UNIQUE, created, revoked_at, builder_key
  manifests     ref PK ("repo:tag"), envelope, image_id, seq UNIQUE, published, publisher
  torrents      (announce_hash, ref) PK, blob: the 20-byte announce hashes each
                current manifest names (a blob shared by several manifests has one row each)
  certificates  serial, name, not_after, issued_at
  meta          key PK, value: counters; `revocations` grows by one per revocation (v2)
  ca            one row: the CA key and certificate, PEM (PostgreSQL only: in SQLite
                mode the CA lives in files beside the database, see tracker/ca.py)

Migrations: v1 -> v2 adds `meta` (its revocation counter starts at the number
of tokens already revoked) and an index on torrents(ref). A database newer
than this code is refused rather than guessed at.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from swarm.core.api import ManifestEntry
from swarm.core.errors import Forbidden, InvalidInput

SCHEMA_VERSION = 2
DB_NAME = "tracker.db"

_SCHEMA_V1 = """
CREATE TABLE tokens (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('builder', 'host')),
    secret_hash TEXT NOT NULL UNIQUE,
    created     INTEGER NOT NULL,
    revoked_at  INTEGER NULL,
    builder_key BLOB NULL
);
CREATE TABLE manifests (
    ref       TEXT PRIMARY KEY,
    envelope  BLOB NOT NULL,
    image_id  TEXT NOT NULL,
    seq       INTEGER NOT NULL UNIQUE,
    published INTEGER NOT NULL,
    publisher TEXT NOT NULL
);
CREATE TABLE torrents (
    announce_hash BLOB NOT NULL CHECK (length(announce_hash) = 20),
    blob          TEXT NOT NULL,
    ref           TEXT NOT NULL REFERENCES manifests(ref),
    PRIMARY KEY (announce_hash, ref)
);
CREATE TABLE certificates (
    serial    TEXT NOT NULL,
    name      TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    issued_at INTEGER NOT NULL
);
CREATE INDEX certificates_name ON certificates(name);
"""

_SCHEMA_V2 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('revocations', (SELECT count(*) FROM tokens WHERE revoked_at IS NOT NULL));
CREATE INDEX torrents_ref ON torrents(ref);
"""

_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: _SCHEMA_V2}


@dataclass(frozen=True)
class TokenRecord:
    name: str
    role: str
    created: int
    revoked_at: int | None
    builder_key: bytes | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class Generation:
    """What a tracker's in-process caches depend on; both only grow."""
    revocations: int
    seq: int


class Storage(Protocol):
    """Durable tracker state: tokens, manifests and their announce hashes, certificates, the CA."""

    #: where the state is, for logs ("sqlite:/path" or "postgresql://host/db")
    location: str

    def close(self) -> None: ...

    def add_token(self, name: str, role: str, secret_hash: str) -> None: ...

    def token_by_hash(self, secret_hash: str) -> TokenRecord | None: ...

    def token(self, name: str) -> TokenRecord | None: ...

    def tokens(self) -> list[TokenRecord]: ...

    def revoke_token(self, name: str) -> bool: ...

    def revoked_names(self) -> list[str]: ...

    def revoked_count(self) -> int: ...

    def active_token_count(self) -> int: ...

    def generation(self) -> Generation: ...

    def publish(self, ref: str, envelope: bytes, image_id: str, publisher: str, builder_key: bytes,
                layers: Iterable[tuple[bytes, str]]) -> ManifestEntry: ...

    def envelope(self, ref: str) -> bytes | None: ...

    def manifests(self, since: int = 0) -> list[ManifestEntry]: ...

    def manifest_count(self) -> int: ...

    def current_seq(self) -> int: ...

    def is_published_hash(self, announce_hash: bytes) -> bool: ...

    def record_certificate(self, serial: int, name: str, not_after: int) -> None: ...

    def certificates(self, name: str) -> list[tuple[str, int, int]]: ...

    def certificate_count(self) -> int: ...

    def shared_ca(self, key_pem: str, cert_pem: str) -> tuple[str, str] | None:
        """The CA kept in the database, storing (key_pem, cert_pem) first if there is none
        (the first replica's CA wins); None when this storage keeps no CA (SQLite: files)."""


class _SQLStorage:
    """The SQL both backends run; subclasses give connections, transactions and dialect."""

    location = ""
    #: INSERT that skips rows already there
    _insert_ignore = "INSERT OR IGNORE INTO"
    _integrity: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        raise NotImplementedError
        yield

    def _q(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        raise NotImplementedError

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._q(sql, params).fetchone()

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        rows: list[Any] = self._q(sql, params).fetchall()
        return rows

    def _x(self, c: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """Execute in transaction `c`."""
        return c.execute(sql, params)

    # tokens

    def add_token(self, name: str, role: str, secret_hash: str) -> None:
        try:
            with self._tx() as c:
                self._x(c, "INSERT INTO tokens (name, role, secret_hash, created) VALUES (?, ?, ?, ?)",
                        (name, role, secret_hash, int(time.time())))
        except self._integrity as exc:
            raise InvalidInput(f"a token named {name!r} already exists") from exc

    def token_by_hash(self, secret_hash: str) -> TokenRecord | None:
        row = self._one("SELECT name, role, created, revoked_at, builder_key FROM tokens WHERE secret_hash = ?",
                        (secret_hash,))
        return _token(row) if row else None

    def token(self, name: str) -> TokenRecord | None:
        row = self._one("SELECT name, role, created, revoked_at, builder_key FROM tokens WHERE name = ?", (name,))
        return _token(row) if row else None

    def tokens(self) -> list[TokenRecord]:
        rows = self._all("SELECT name, role, created, revoked_at, builder_key FROM tokens ORDER BY name")
        return [_token(r) for r in rows]

    def revoke_token(self, name: str) -> bool:
        """Marks the token revoked and bumps the revocation counter; False when there is no such token."""
        with self._tx() as c:
            cur = self._x(c, "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                          (int(time.time()), name))
            if cur.rowcount:
                self._x(c, "UPDATE meta SET value = value + 1 WHERE key = 'revocations'")
                return True
            return self._x(c, "SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone() is not None

    def revoked_names(self) -> list[str]:
        return [r[0] for r in self._all("SELECT name FROM tokens WHERE revoked_at IS NOT NULL")]

    def revoked_count(self) -> int:
        return int(self._one("SELECT count(*) FROM tokens WHERE revoked_at IS NOT NULL")[0])

    def active_token_count(self) -> int:
        return int(self._one("SELECT count(*) FROM tokens WHERE revoked_at IS NULL")[0])

    def generation(self) -> Generation:
        row = self._one("SELECT (SELECT value FROM meta WHERE key = 'revocations'), "
                        "(SELECT coalesce(max(seq), 0) FROM manifests)")
        return Generation(int(row[0]), int(row[1]))

    # manifests

    def _lock_manifests(self, c: Any) -> None:
        """Serialize publications (seq allocation) across processes; SQLite's BEGIN IMMEDIATE does."""

    def publish(self, ref: str, envelope: bytes, image_id: str, publisher: str, builder_key: bytes,
                layers: Iterable[tuple[bytes, str]]) -> ManifestEntry:
        """Store a manifest with the next seq and the announce hashes it names.

        Binds the publisher's token to `builder_key` on its first publication,
        and refuses (Forbidden) a manifest signed by any other key later.
        """
        now = int(time.time())
        with self._tx() as c:
            self._lock_manifests(c)
            row = self._x(c, "SELECT builder_key FROM tokens WHERE name = ?", (publisher,)).fetchone()
            bound = row[0] if row else None
            if bound is not None and bytes(bound) != builder_key:
                raise Forbidden(f"builder token {publisher!r} is bound to another signing key")
            if bound is None:
                self._x(c, "UPDATE tokens SET builder_key = ? WHERE name = ?", (builder_key, publisher))
            seq = int(self._x(c, "SELECT coalesce(max(seq), 0) + 1 FROM manifests").fetchone()[0])
            self._x(c, "DELETE FROM torrents WHERE ref = ?", (ref,))
            self._x(c, "DELETE FROM manifests WHERE ref = ?", (ref,))
            self._x(c, "INSERT INTO manifests (ref, envelope, image_id, seq, published, publisher) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (ref, envelope, image_id, seq, now, publisher))
            for h, blob in dict(layers).items():
                self._x(c, f"{self._insert_ignore} torrents (announce_hash, blob, ref) VALUES (?, ?, ?)"
                        + self._ignore_tail, (h, blob, ref))
        return ManifestEntry(ref, image_id, seq, now, publisher)

    _ignore_tail = ""

    def envelope(self, ref: str) -> bytes | None:
        row = self._one("SELECT envelope FROM manifests WHERE ref = ?", (ref,))
        return bytes(row[0]) if row else None

    def manifests(self, since: int = 0) -> list[ManifestEntry]:
        rows = self._all("SELECT ref, image_id, seq, published, publisher FROM manifests WHERE seq > ? ORDER BY seq",
                         (since,))
        return [ManifestEntry(r[0], r[1], int(r[2]), int(r[3]), r[4]) for r in rows]

    def manifest_count(self) -> int:
        return int(self._one("SELECT count(*) FROM manifests")[0])

    def current_seq(self) -> int:
        return int(self._one("SELECT coalesce(max(seq), 0) FROM manifests")[0])

    def is_published_hash(self, announce_hash: bytes) -> bool:
        return self._one("SELECT 1 FROM torrents WHERE announce_hash = ? LIMIT 1", (announce_hash,)) is not None

    # certificates

    def record_certificate(self, serial: int, name: str, not_after: int) -> None:
        with self._tx() as c:
            self._x(c, "INSERT INTO certificates (serial, name, not_after, issued_at) VALUES (?, ?, ?, ?)",
                    (format(serial, "x"), name, not_after, int(time.time())))

    def certificates(self, name: str) -> list[tuple[str, int, int]]:
        rows = self._all("SELECT serial, not_after, issued_at FROM certificates WHERE name = ? ORDER BY issued_at",
                         (name,))
        return [(r[0], int(r[1]), int(r[2])) for r in rows]

    def certificate_count(self) -> int:
        return int(self._one("SELECT count(*) FROM certificates")[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the SQLite database up to SCHEMA_VERSION, one transaction per step; returns the version."""
    with conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise InvalidInput(f"tracker database schema {version} is newer than this tracker ({SCHEMA_VERSION})")
    while version < SCHEMA_VERSION:
        version += 1
        # executescript commits first; wrap each step in its own transaction
        conn.executescript(
            "BEGIN IMMEDIATE;\n" + _MIGRATIONS[version]
            + "\nDELETE FROM schema_version;\n"
            + f"INSERT INTO schema_version (version) VALUES ({version});\nCOMMIT;"
        )
    return version


class SQLiteStorage(_SQLStorage):
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


def open_storage(data_dir: Path, database: str | None = None) -> Storage:
    """SQLite in `data_dir`, or the PostgreSQL database at `database` (postgresql://...)."""
    if database is None or database.startswith("sqlite:"):
        return SQLiteStorage(Path(database[len("sqlite:"):]) if database else data_dir)
    if database.startswith(("postgresql://", "postgres://")):
        from swarm.tracker.storage.postgres import PostgresStorage

        return PostgresStorage(database)
    raise InvalidInput(f"unsupported database URL {database.split(':', 1)[0]!r}: expected postgresql://...")


def _token(row: Any) -> TokenRecord:
    name, role, created, revoked_at, key = row
    return TokenRecord(name, role, int(created), None if revoked_at is None else int(revoked_at),
                       None if key is None else bytes(key))
