"""The SQL both storage backends run (`Storage` over a DB-API connection); subclasses give
connections, transactions and the few dialect words that differ."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from swarm.core.api import ManifestEntry
from swarm.core.errors import Conflict, Forbidden, InvalidInput
from swarm.core.groups import DEFAULT
from swarm.tracker.storage.base import Generation, TokenRecord
from swarm.tracker.storage.groups import GroupSQL
from swarm.tracker.storage.rollout import RolloutSQL


class SQLStorage(RolloutSQL, GroupSQL):
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

    def add_token(
        self,
        name: str,
        role: str,
        secret_hash: str,
        builder_key: bytes | None = None,
        publish: tuple[str, ...] = (),
        groups: tuple[str, ...] = (DEFAULT,),
    ) -> None:
        try:
            with self._tx() as c:
                self._require_groups(c, list(groups))
                self._x(
                    c,
                    "INSERT INTO tokens (name, role, secret_hash, created, builder_key) VALUES (?, ?, ?, ?, ?)",
                    (name, role, secret_hash, int(time.time()), builder_key),
                )
                if publish:
                    self._x(c, "INSERT INTO publish_patterns (name, patterns) VALUES (?, ?)", (name, " ".join(publish)))
                self._x(c, "DELETE FROM token_groups WHERE token = ?", (name,))
                for g in dict.fromkeys(groups):
                    self._x(c, "INSERT INTO token_groups (token, grp) VALUES (?, ?)", (name, g))
                self._bump_groups(c)
        except self._integrity as exc:
            raise InvalidInput(f"a token named {name!r} already exists") from exc

    def update_token(self, name: str, builder_key: bytes | None, publish: tuple[str, ...] | None) -> bool:
        """Rebind a builder's key and/or replace its patterns; bumps the counter trackers poll (their
        cached token records go at once). False when there is no such token."""
        with self._tx() as c:
            if self._x(c, "SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone() is None:
                return False
            if builder_key is not None:
                self._x(c, "UPDATE tokens SET builder_key = ? WHERE name = ?", (builder_key, name))
            if publish is not None:
                self._x(c, "DELETE FROM publish_patterns WHERE name = ?", (name,))
                self._x(c, "INSERT INTO publish_patterns (name, patterns) VALUES (?, ?)", (name, " ".join(publish)))
            self._x(c, "UPDATE meta SET value = value + 1 WHERE key = 'revocations'")
        return True

    def token_by_hash(self, secret_hash: str) -> TokenRecord | None:
        row = self._one(_SELECT_TOKEN + " WHERE t.secret_hash = ?", (secret_hash,))
        return _token(row) if row else None

    def token(self, name: str) -> TokenRecord | None:
        row = self._one(_SELECT_TOKEN + " WHERE t.name = ?", (name,))
        return _token(row) if row else None

    def tokens(self) -> list[TokenRecord]:
        rows = self._all(_SELECT_TOKEN + " ORDER BY t.name")
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
            "SELECT (SELECT value FROM meta WHERE key = 'revocations'), (SELECT coalesce(max(seq), 0) FROM manifests),"
            " (SELECT value FROM meta WHERE key = 'groups'), (SELECT value FROM meta WHERE key = 'removals')"
        )
        return Generation(int(row[0]), int(row[1]), int(row[2] or 0), int(row[3] or 0))

    # manifests

    def _lock_manifests(self, c: Any) -> None:
        """Serialize publications (seq allocation) across processes; SQLite's BEGIN IMMEDIATE does."""

    def publish(
        self,
        ref: str,
        envelope: bytes,
        image_id: str,
        publisher: str,
        created_ms: int,
        layers: Iterable[tuple[bytes, str]],
        group: str = DEFAULT,
    ) -> ManifestEntry:
        """Store a manifest with the next seq and the announce hashes it names, in one transaction
        that also settles ownership and order:

        - the repository belongs to the first token that publishes into it; another is Forbidden;
        - a manifest not newer (`created_ms`) than the tag's current one is a Conflict, except the
          very same envelope again, which changes nothing and answers the current entry.
        """
        repository = ref.rpartition(":")[0]
        now = int(time.time())
        with self._tx() as c:
            self._lock_manifests(c)
            row = self._x(c, "SELECT owner FROM repositories WHERE repository = ?", (repository,)).fetchone()
            if row is None:
                self._x(c, "INSERT INTO repositories (repository, owner) VALUES (?, ?)", (repository, publisher))
            elif row[0] != publisher:
                raise Forbidden(
                    f"repository {repository} belongs to builder {row[0]!r}: an operator can hand it "
                    f"over with `swarm tracker repo transfer {repository} --to {publisher}`"
                )
            held = self._x(
                c,
                "SELECT created_ms, envelope, image_id, seq, published, publisher FROM manifests WHERE ref = ?",
                (ref,),
            ).fetchone()
            if held is not None:
                if bytes(held[1]) == envelope:
                    return ManifestEntry(ref, held[2], int(held[3]), int(held[4]), held[5])
                if int(held[0]) >= created_ms:
                    raise Conflict(
                        f"{ref} already has a manifest created at or after this one (created_ms "
                        f"{int(held[0])} >= {created_ms}): to roll back, publish the old image anew"
                    )
            else:
                tomb = self._x(c, "SELECT created_ms FROM removed_tags WHERE ref = ?", (ref,)).fetchone()
                if tomb is not None and int(tomb[0]) >= created_ms:
                    raise Conflict(
                        f"{ref} was removed after a manifest created at or after this one (created_ms "
                        f"{int(tomb[0])} >= {created_ms}): publish the image anew"
                    )
            seq = self._next_seq(c)
            self._x(c, "DELETE FROM removed_tags WHERE ref = ?", (ref,))
            self._x(c, "DELETE FROM torrents WHERE ref = ?", (ref,))
            self._x(c, "DELETE FROM manifests WHERE ref = ?", (ref,))
            self._x(
                c,
                "INSERT INTO manifests (ref, envelope, image_id, seq, published, publisher, created_ms, grp) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ref, envelope, image_id, seq, now, publisher, created_ms, group),
            )
            for h, blob in dict(layers).items():
                self._x(
                    c,
                    f"{self._insert_ignore} torrents (announce_hash, blob, ref) VALUES (?, ?, ?)" + self._ignore_tail,
                    (h, blob, ref),
                )
                self._x(c, "DELETE FROM retired_torrents WHERE announce_hash = ?", (h,))
        return ManifestEntry(ref, image_id, seq, now, publisher, group)

    def _next_seq(self, c: Any) -> int:
        """Past every seq ever given, removed tags' too: a watcher never sees a seq twice."""
        return int(self._x(c, _MAX_SEQ).fetchone()[0]) + 1

    def remove_manifest(self, ref: str) -> tuple[ManifestEntry, list[bytes]] | None:
        """Remove tag `ref`, leaving a tombstone with its seq and signed creation time (a replay of
        its envelope stays refused); returns its entry and the announce hashes no live manifest
        names any more (now retired), or None when there is no such tag."""
        now = int(time.time())
        with self._tx() as c:
            self._lock_manifests(c)
            return self._remove(c, ref, now)

    def _remove(self, c: Any, ref: str, now: int) -> tuple[ManifestEntry, list[bytes]] | None:
        row = self._x(
            c, "SELECT image_id, seq, published, publisher, grp, created_ms FROM manifests WHERE ref = ?", (ref,)
        ).fetchone()
        if row is None:
            return None
        hashes = [
            bytes(r[0]) for r in self._x(c, "SELECT announce_hash FROM torrents WHERE ref = ?", (ref,)).fetchall()
        ]
        self._x(c, "DELETE FROM torrents WHERE ref = ?", (ref,))
        self._x(c, "DELETE FROM manifests WHERE ref = ?", (ref,))
        self._x(c, "DELETE FROM removed_tags WHERE ref = ?", (ref,))
        self._x(
            c,
            "INSERT INTO removed_tags (ref, seq, created_ms, removed) VALUES (?, ?, ?, ?)",
            (ref, int(row[1]), int(row[5]), now),
        )
        retired = []
        for h in hashes:
            if self._x(c, "SELECT 1 FROM torrents WHERE announce_hash = ? LIMIT 1", (h,)).fetchone() is None:
                self._x(c, "DELETE FROM retired_torrents WHERE announce_hash = ?", (h,))
                self._x(c, "INSERT INTO retired_torrents (announce_hash, retired) VALUES (?, ?)", (h, now))
                retired.append(h)
        self._x(c, "UPDATE meta SET value = value + 1 WHERE key = 'removals'")
        return ManifestEntry(ref, row[0], int(row[1]), int(row[2]), row[3], row[4]), retired

    def prune(self, keep: int, older_than: int | None = None, repository: str | None = None) -> list[ManifestEntry]:
        """Remove, per repository (or only in `repository`), every tag but the newest `keep` by seq;
        with `older_than` (seconds) only those published longer ago than that. Returns the removed."""
        now = int(time.time())
        removed: list[ManifestEntry] = []
        with self._tx() as c:
            self._lock_manifests(c)
            rows = self._x(c, "SELECT ref, seq, published FROM manifests ORDER BY seq DESC").fetchall()
            kept: dict[str, int] = {}
            for ref, _seq, published in rows:
                repo = str(ref).rpartition(":")[0]
                if repository is not None and repo != repository:
                    continue
                kept[repo] = kept.get(repo, 0) + 1
                if kept[repo] <= keep or (older_than is not None and now - int(published) <= older_than):
                    continue
                gone = self._remove(c, str(ref), now)
                if gone is not None:
                    removed.append(gone[0])
        return removed

    def repository_owner(self, repository: str) -> str | None:
        row = self._one("SELECT owner FROM repositories WHERE repository = ?", (repository,))
        return None if row is None else str(row[0])

    def is_retired_hash(self, announce_hash: bytes) -> bool:
        return self._one("SELECT 1 FROM retired_torrents WHERE announce_hash = ?", (announce_hash,)) is not None

    def repositories(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self._all("SELECT repository, owner FROM repositories ORDER BY repository")]

    def transfer_repository(self, repository: str, owner: str) -> bool:
        """Give `repository` to token `owner` (creating the record if nobody published there yet);
        False when `owner` is no builder token."""
        with self._tx() as c:
            row = self._x(c, "SELECT role FROM tokens WHERE name = ?", (owner,)).fetchone()
            if row is None or row[0] != "builder":
                return False
            if self._x(c, "UPDATE repositories SET owner = ? WHERE repository = ?", (owner, repository)).rowcount == 0:
                self._x(c, "INSERT INTO repositories (repository, owner) VALUES (?, ?)", (repository, owner))
        return True

    def key_document(self) -> bytes | None:
        row = self._one("SELECT envelope FROM key_document WHERE id = 1")
        return bytes(row[0]) if row else None

    def store_key_document(self, version: int, envelope: bytes) -> None:
        """Keep the newest key document; one whose version is not above the stored one is a Conflict."""
        with self._tx() as c:
            row = self._x(c, "SELECT version FROM key_document WHERE id = 1").fetchone()
            if row is not None and int(row[0]) >= version:
                raise Conflict(
                    f"the tracker holds key document version {int(row[0])}, not older than "
                    f"{version}: sign the new one with a higher version"
                )
            self._x(c, "DELETE FROM key_document WHERE id = 1")
            self._x(c, "INSERT INTO key_document (id, version, envelope) VALUES (1, ?, ?)", (version, envelope))

    _ignore_tail = ""

    def envelope(self, ref: str) -> bytes | None:
        row = self._one("SELECT envelope FROM manifests WHERE ref = ?", (ref,))
        return bytes(row[0]) if row else None

    def manifests(self, since: int = 0) -> list[ManifestEntry]:
        rows = self._all(
            "SELECT ref, image_id, seq, published, publisher, grp FROM manifests WHERE seq > ? ORDER BY seq", (since,)
        )
        return [ManifestEntry(r[0], r[1], int(r[2]), int(r[3]), r[4], r[5]) for r in rows]

    def manifest_count(self) -> int:
        return int(self._one("SELECT count(*) FROM manifests")[0])

    def current_seq(self) -> int:
        return int(self._one(_MAX_SEQ)[0])

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


_MAX_SEQ = (
    "SELECT coalesce(max(s), 0) FROM (SELECT max(seq) AS s FROM manifests"
    " UNION ALL SELECT max(seq) AS s FROM removed_tags) AS seqs"
)
_SELECT_TOKEN = (
    "SELECT t.name, t.role, t.created, t.revoked_at, t.builder_key, p.patterns FROM tokens t "
    "LEFT JOIN publish_patterns p ON p.name = t.name"
)


def _token(row: Any) -> TokenRecord:
    name, role, created, revoked_at, key, publish = row
    return TokenRecord(
        name,
        role,
        int(created),
        None if revoked_at is None else int(revoked_at),
        None if key is None else bytes(key),
        tuple(str(publish or "").split()),
    )
