"""The tracker's state on disk: SQLite in `<data>/tracker.db` (WAL mode).

Token secrets are never stored, only their sha256 (`swarm.core.tokens.hash_secret`).
The CLI's `token` commands and a running tracker share the database; the
tracker reads tokens from it on every authenticated request, so a revocation
made by the CLI counts at once.

Tables (schema version 1):
  tokens        name PK, role, secret_hash UNIQUE, created, revoked_at, builder_key
  manifests     ref PK ("repo:tag"), envelope, image_id, seq UNIQUE, published, publisher
  torrents      (announce_hash, ref) PK, blob: the 20-byte announce hashes each
                current manifest names (a blob shared by several manifests has one row each)
  certificates  serial, name, not_after, issued_at
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm.core.api import ManifestEntry
from swarm.core.errors import Forbidden, InvalidInput

SCHEMA_VERSION = 1
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

_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1}


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


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database up to SCHEMA_VERSION; returns the version it is at."""
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


class Storage:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / DB_NAME
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.path = path
        self._conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=10000")
        migrate(self._conn)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # tokens

    def add_token(self, name: str, role: str, secret_hash: str) -> None:
        try:
            with self._tx() as c:
                c.execute("INSERT INTO tokens (name, role, secret_hash, created) VALUES (?, ?, ?, ?)",
                          (name, role, secret_hash, int(time.time())))
        except sqlite3.IntegrityError as exc:
            raise InvalidInput(f"a token named {name!r} already exists") from exc

    def token_by_hash(self, secret_hash: str) -> TokenRecord | None:
        row = self._conn.execute(
            "SELECT name, role, created, revoked_at, builder_key FROM tokens WHERE secret_hash = ?",
            (secret_hash,)).fetchone()
        return _token(row) if row else None

    def token(self, name: str) -> TokenRecord | None:
        row = self._conn.execute(
            "SELECT name, role, created, revoked_at, builder_key FROM tokens WHERE name = ?", (name,)).fetchone()
        return _token(row) if row else None

    def tokens(self) -> list[TokenRecord]:
        rows = self._conn.execute(
            "SELECT name, role, created, revoked_at, builder_key FROM tokens ORDER BY name").fetchall()
        return [_token(r) for r in rows]

    def revoke_token(self, name: str) -> bool:
        """Marks the token revoked; False when there is no such token."""
        with self._tx() as c:
            cur = c.execute("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                            (int(time.time()), name))
            if cur.rowcount:
                return True
            return c.execute("SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone() is not None

    def revoked_names(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM tokens WHERE revoked_at IS NOT NULL")]

    def revoked_count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM tokens WHERE revoked_at IS NOT NULL").fetchone()[0])

    # manifests

    def publish(self, ref: str, envelope: bytes, image_id: str, publisher: str, builder_key: bytes,
                layers: Iterable[tuple[bytes, str]]) -> ManifestEntry:
        """Store a manifest with the next seq and the announce hashes it names.

        Binds the publisher's token to `builder_key` on its first publication,
        and refuses (Forbidden) a manifest signed by any other key later.
        """
        now = int(time.time())
        with self._tx() as c:
            row = c.execute("SELECT builder_key FROM tokens WHERE name = ?", (publisher,)).fetchone()
            bound = row[0] if row else None
            if bound is not None and bytes(bound) != builder_key:
                raise Forbidden(f"builder token {publisher!r} is bound to another signing key")
            if bound is None:
                c.execute("UPDATE tokens SET builder_key = ? WHERE name = ?", (builder_key, publisher))
            seq = int(c.execute("SELECT coalesce(max(seq), 0) + 1 FROM manifests").fetchone()[0])
            c.execute("DELETE FROM torrents WHERE ref = ?", (ref,))
            c.execute("DELETE FROM manifests WHERE ref = ?", (ref,))
            c.execute("INSERT INTO manifests (ref, envelope, image_id, seq, published, publisher) "
                      "VALUES (?, ?, ?, ?, ?, ?)", (ref, envelope, image_id, seq, now, publisher))
            c.executemany("INSERT OR IGNORE INTO torrents (announce_hash, blob, ref) VALUES (?, ?, ?)",
                          [(h, blob, ref) for h, blob in layers])
        return ManifestEntry(ref, image_id, seq, now, publisher)

    def envelope(self, ref: str) -> bytes | None:
        row = self._conn.execute("SELECT envelope FROM manifests WHERE ref = ?", (ref,)).fetchone()
        return bytes(row[0]) if row else None

    def manifests(self, since: int = 0) -> list[ManifestEntry]:
        rows = self._conn.execute(
            "SELECT ref, image_id, seq, published, publisher FROM manifests WHERE seq > ? ORDER BY seq",
            (since,)).fetchall()
        return [ManifestEntry(r[0], r[1], int(r[2]), int(r[3]), r[4]) for r in rows]

    def current_seq(self) -> int:
        return int(self._conn.execute("SELECT coalesce(max(seq), 0) FROM manifests").fetchone()[0])

    def is_published_hash(self, announce_hash: bytes) -> bool:
        return self._conn.execute("SELECT 1 FROM torrents WHERE announce_hash = ? LIMIT 1",
                                  (announce_hash,)).fetchone() is not None

    # certificates

    def record_certificate(self, serial: int, name: str, not_after: int) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO certificates (serial, name, not_after, issued_at) VALUES (?, ?, ?, ?)",
                      (format(serial, "x"), name, not_after, int(time.time())))

    def certificates(self, name: str) -> list[tuple[str, int, int]]:
        rows = self._conn.execute("SELECT serial, not_after, issued_at FROM certificates WHERE name = ? "
                                  "ORDER BY issued_at", (name,)).fetchall()
        return [(r[0], int(r[1]), int(r[2])) for r in rows]


def _token(row: Any) -> TokenRecord:
    name, role, created, revoked_at, key = row
    return TokenRecord(name, role, int(created), None if revoked_at is None else int(revoked_at),
                       None if key is None else bytes(key))
