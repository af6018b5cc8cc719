"""The tracker's durable state behind one small interface, `Storage`, and its records.

Two forms, chosen by `open_storage`:

- `SQLiteStorage` (sqlite.py): `<data>/tracker.db` (WAL mode), the default for one tracker process;
- `PostgresStorage` (postgres.py): one database shared by tracker replicas (`--database postgresql://...`).

Both run the same SQL (sql.py); only connections, transactions and a few
dialect words differ. Their schemas are the files in schema/<dialect>/, one
per version, applied by migrations.py. Token secrets are never stored, only
their sha256 (`swarm.core.tokens.hash_secret`). The CLI's `token` commands
and running trackers share the database: every revocation bumps the
`revocations` counter in `meta`, which trackers read on every authenticated
request, so a revocation counts at once even where a tracker caches token
records.

Tables:
  tokens        name PK, role, secret_hash UNIQUE, created, revoked_at, builder_key (bound at
                creation), publish (a builder's repository patterns, space-separated)
  manifests     ref PK ("repo:tag"), envelope, image_id, seq UNIQUE, published, publisher,
                created_ms (the signed creation time: a tag only moves forward)
  repositories  repository PK, owner: the builder token whose tags these are
  torrents      (announce_hash, ref) PK, blob: the 20-byte announce hashes each
                current manifest names (a blob shared by several manifests has one row each)
  removed_tags  ref PK, seq, created_ms, removed: tombstones of removed tags (no rollback by replay)
  retired_torrents announce_hash PK, retired: torrents only removed manifests named
  certificates  serial, name, not_after, issued_at
  meta          key PK, value: counters; `revocations` grows by one per revocation, `groups` by one
                per change of groups, memberships or patterns
  host_groups   name PK, created; token_groups (token, grp) PK: memberships;
  group_patterns pattern PK, grp: repository pattern -> group (storage/groups.py); manifests.grp
  host_reports  name PK, address, version, cache_bytes, cache_budget, cert_not_after, last_seen:
                each agent's latest heartbeat (storage/rollout.py)
  pull_reports  (host, ref) PK, report (msgpack PullReport), state, image_id, updated: the latest
                state of each pull on each host, at most MAX_PULLS_PER_HOST per host
  key_document  one row: the newest root-signed key document (version, envelope)
  ca            one row: the CA key and certificate, PEM (PostgreSQL only: in SQLite
                mode the CA lives in files beside the database, see swarm/tracker/ca.py)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from swarm.core.api import ManifestEntry
from swarm.tracker.storage.groups import GroupStore
from swarm.tracker.storage.rollout import RolloutStore


@dataclass(frozen=True)
class TokenRecord:
    name: str
    role: str
    created: int
    revoked_at: int | None
    builder_key: bytes | None
    #: repository patterns a builder may publish into
    publish: tuple[str, ...] = ()

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class Generation:
    """What a tracker's in-process caches depend on; both only grow."""

    revocations: int
    seq: int
    #: bumped by every change of groups, memberships or patterns (storage/groups.py)
    groups: int = 0
    #: bumped by every removal of a tag (retired torrents)
    removals: int = 0


class Storage(RolloutStore, GroupStore, Protocol):
    """Durable tracker state: tokens, manifests and their announce hashes, certificates, the CA."""

    #: where the state is, for logs ("sqlite:/path" or "postgresql://host/db")
    location: str

    def close(self) -> None: ...

    def ping(self) -> None:
        """Raise if the database cannot answer a query now (/readyz)."""

    def add_token(
        self,
        name: str,
        role: str,
        secret_hash: str,
        builder_key: bytes | None = None,
        publish: tuple[str, ...] = (),
        groups: tuple[str, ...] = ...,
    ) -> None: ...

    def update_token(self, name: str, builder_key: bytes | None, publish: tuple[str, ...] | None) -> bool: ...

    def token_by_hash(self, secret_hash: str) -> TokenRecord | None: ...

    def token(self, name: str) -> TokenRecord | None: ...

    def tokens(self) -> list[TokenRecord]: ...

    def revoke_token(self, name: str) -> bool: ...

    def revoked_names(self) -> list[str]: ...

    def revoked_count(self) -> int: ...

    def active_token_count(self) -> int: ...

    def generation(self) -> Generation: ...

    def publish(
        self,
        ref: str,
        envelope: bytes,
        image_id: str,
        publisher: str,
        created_ms: int,
        layers: Iterable[tuple[bytes, str]],
        group: str = ...,
    ) -> ManifestEntry: ...

    def repositories(self) -> list[tuple[str, str]]: ...

    def repository_owner(self, repository: str) -> str | None: ...

    def remove_manifest(self, ref: str) -> tuple[ManifestEntry, list[bytes]] | None: ...

    def prune(self, keep: int, older_than: int | None = None, repository: str | None = None) -> list[ManifestEntry]: ...

    def is_retired_hash(self, announce_hash: bytes) -> bool: ...

    def transfer_repository(self, repository: str, owner: str) -> bool: ...

    def key_document(self) -> bytes | None: ...

    def store_key_document(self, version: int, envelope: bytes) -> None: ...

    def envelope(self, ref: str) -> bytes | None: ...

    def manifests(self, since: int = 0) -> list[ManifestEntry]: ...

    def manifest_count(self) -> int: ...

    def current_seq(self) -> int: ...

    def is_published_hash(self, announce_hash: bytes) -> bool: ...

    def record_certificate(self, serial: int, name: str, not_after: int) -> None: ...

    def certificates(self, name: str) -> list[tuple[str, int, int]]: ...

    def shared_ca(self, key_pem: str, cert_pem: str) -> tuple[str, str] | None:
        """The CA kept in the database, storing (key_pem, cert_pem) first if there is none
        (the first replica's CA wins); None when this storage keeps no CA (SQLite: files)."""
