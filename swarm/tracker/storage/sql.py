"""The SQL both storage backends run (`Storage` over a DB-API connection); subclasses give
connections, transactions and the few dialect words that differ."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from swarm.core.api import ManifestEntry
from swarm.core.errors import Forbidden, InvalidInput
from swarm.tracker.storage.base import Generation, TokenRecord
from swarm.tracker.storage.rollout import RolloutSQL


class SQLStorage(RolloutSQL):
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

    def ping(self) -> None:
        self._one("SELECT 1")

    # tokens

    def add_token(self, name: str, role: str, secret_hash: str) -> None:
        try:
            with self._tx() as c:
                self._x(
                    c,
                    "INSERT INTO tokens (name, role, secret_hash, created) VALUES (?, ?, ?, ?)",
                    (name, role, secret_hash, int(time.time())),
                )
        except self._integrity as exc:
            raise InvalidInput(f"a token named {name!r} already exists") from exc

    def token_by_hash(self, secret_hash: str) -> TokenRecord | None:
        row = self._one(
            "SELECT name, role, created, revoked_at, builder_key FROM tokens WHERE secret_hash = ?", (secret_hash,)
        )
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
            cur = self._x(
                c, "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (int(time.time()), name)
            )
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
        row = self._one(
            "SELECT (SELECT value FROM meta WHERE key = 'revocations'), (SELECT coalesce(max(seq), 0) FROM manifests)"
        )
        return Generation(int(row[0]), int(row[1]))

    # manifests

    def _lock_manifests(self, c: Any) -> None:
        """Serialize publications (seq allocation) across processes; SQLite's BEGIN IMMEDIATE does."""

    def publish(
        self,
        ref: str,
        envelope: bytes,
        image_id: str,
        publisher: str,
        builder_key: bytes,
        layers: Iterable[tuple[bytes, str]],
    ) -> ManifestEntry:
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
            self._x(
                c,
                "INSERT INTO manifests (ref, envelope, image_id, seq, published, publisher) VALUES (?, ?, ?, ?, ?, ?)",
                (ref, envelope, image_id, seq, now, publisher),
            )
            for h, blob in dict(layers).items():
                self._x(
                    c,
                    f"{self._insert_ignore} torrents (announce_hash, blob, ref) VALUES (?, ?, ?)" + self._ignore_tail,
                    (h, blob, ref),
                )
        return ManifestEntry(ref, image_id, seq, now, publisher)

    _ignore_tail = ""

    def envelope(self, ref: str) -> bytes | None:
        row = self._one("SELECT envelope FROM manifests WHERE ref = ?", (ref,))
        return bytes(row[0]) if row else None

    def manifests(self, since: int = 0) -> list[ManifestEntry]:
        rows = self._all(
            "SELECT ref, image_id, seq, published, publisher FROM manifests WHERE seq > ? ORDER BY seq", (since,)
        )
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
            self._x(
                c,
                "INSERT INTO certificates (serial, name, not_after, issued_at) VALUES (?, ?, ?, ?)",
                (format(serial, "x"), name, not_after, int(time.time())),
            )

    def certificates(self, name: str) -> list[tuple[str, int, int]]:
        rows = self._all(
            "SELECT serial, not_after, issued_at FROM certificates WHERE name = ? ORDER BY issued_at", (name,)
        )
        return [(r[0], int(r[1]), int(r[2])) for r in rows]


def _token(row: Any) -> TokenRecord:
    name, role, created, revoked_at, key = row
    return TokenRecord(
        name, role, int(created), None if revoked_at is None else int(revoked_at), None if key is None else bytes(key)
    )
