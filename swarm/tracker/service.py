"""The tracker's protocol logic, with no web framework: the HTTP layer only maps to it.

Authentication: every authenticated call reads the storage's generation (one
small query: the revocation counter and the latest manifest seq). Token
records and "is this hash published" answers are cached in-process for
`token_cache_ttl` seconds, but the whole cache is dropped as soon as the
revocation counter moves, so a token revoked by `swarm tracker token revoke`
(another process, maybe through another replica's database connection) is
refused on its very next request, and its peers leave every handout.

Announce policy: complete peers first, then a random sample of the rest,
never the requester itself, never a revoked host, at most MAX_NUMWANT. A
host that announces again (a regular announce, no event) sooner than `min
interval` gets its previous answer back from memory, without touching the
peer store. Peers that stop announcing expire after two intervals (the seeds'
interval where it is longer: `announce.seed_interval`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

from swarm.core import groups as grp
from swarm.core.api import (
    MAX_PEER_ENTRIES,
    MAX_WATCH_TIMEOUT,
    RETIRED_TORRENT,
    EnrollResponse,
    ManifestEntry,
    PeerEntry,
)
from swarm.core.errors import (
    Forbidden,
    InvalidInput,
    LegacyTorrent,
    NotFound,
    RateLimited,
    SwarmError,
    Unauthorized,
    UsageError,
)
from swarm.core.peerid import claims_other_identity
from swarm.core.refs import ImageRef, matches, validate_pattern
from swarm.core.signing import SignedManifest, format_public_key, key_id
from swarm.core.tokens import ROLES, JoinToken, hash_secret, is_secret_shaped
from swarm.core.torrent import check_layer_torrent
from swarm.core.trust import SignedKeyDocument
from swarm.tracker import announce as bt
from swarm.tracker.ca import CertificateAuthority
from swarm.tracker.metrics import TrackerMetrics
from swarm.tracker.options import (
    DEFAULT_AUTH_FAILURE_LIMIT,
    DEFAULT_CERT_LIFETIME,
    DEFAULT_INTERVAL,
    MIN_CERT_LIFETIME,
)
from swarm.tracker.peers.base import Peer, PeerStore, SwarmCounts
from swarm.tracker.ratelimit import DEFAULT_WINDOW, FailureLimiter
from swarm.tracker.storage.base import Generation, Storage, TokenRecord
from swarm.tracker.storage.groups import GroupRecord

log = logging.getLogger("swarm.tracker")

DEFAULT_TOKEN_CACHE_TTL = 5.0
#: remembered announce answers at most (for min interval); past that the memory starts over
MAX_CACHED_ANSWERS = 500_000
MAX_CACHED_HASHES = 100_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ANNOUNCE_HASH = re.compile(r"[0-9a-fA-F]{40}")
#: a builder token made without --publish may publish into any repository nobody owns yet
DEFAULT_PUBLISH = ("*",)
_UNAUTHORIZED = "missing, unknown or revoked token"
RATE_LIMITED = "too many failed authentications from this address: retry later"
PEER_ID_IMPERSONATION = "peer_id names another host: swarm peer ids carry the announcing token's role and name"


def _ref(ref: str) -> str:
    try:
        return str(ImageRef.parse(ref))
    except SwarmError as exc:
        raise InvalidInput(str(exc)) from exc


_AnswerKey = tuple[bytes, bytes, str, bool, bool]


def _patterns(publish: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(validate_pattern(p) for p in publish)
    except UsageError as exc:
        raise InvalidInput(exc.message) from exc


class TrackerService:
    """The tracker over its parts (see swarm/tracker/server.py, which puts them together)."""

    def __init__(
        self,
        storage: Storage,
        ca: CertificateAuthority,
        peers: PeerStore,
        data_dir: Path,
        *,
        cert_lifetime: int = DEFAULT_CERT_LIFETIME,
        interval: int = DEFAULT_INTERVAL,
        min_interval: int | None = None,
        seed_interval: int | None = None,
        public_url: str | None = None,
        auth_failure_limit: int = DEFAULT_AUTH_FAILURE_LIMIT,
        auth_failure_window: float = DEFAULT_WINDOW,
        token_cache_ttl: float = DEFAULT_TOKEN_CACHE_TTL,
        keep: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cert_lifetime < MIN_CERT_LIFETIME:
            raise InvalidInput(f"certificate lifetime must be at least {MIN_CERT_LIFETIME} seconds")
        if interval < 1:
            raise InvalidInput("announce interval must be at least 1 second")
        min_interval = max(1, interval // 2) if min_interval is None else min_interval
        if not 0 <= min_interval <= interval:
            raise InvalidInput("min interval must be between 0 and the announce interval")
        if auth_failure_limit < 0:
            raise InvalidInput("the auth failure limit must not be negative")
        self.data_dir = data_dir
        self.storage = storage
        self.shared = not storage.location.startswith("sqlite:")
        self.ca = ca
        self.cert_lifetime = cert_lifetime
        self.interval = interval
        self.min_interval = min_interval
        #: what seeds (left=0) are told (bt.seed_interval); peers live in the store at least as long
        self.seed_interval = interval if seed_interval is None else max(interval, seed_interval)
        self.public_url = public_url
        self.peers = peers
        self.metrics = TrackerMetrics()
        self.limiter = FailureLimiter(auth_failure_limit, auth_failure_window, clock)
        self.token_cache_ttl = token_cache_ttl
        #: retention per repository after each publish (None: keep every tag)
        self.keep = keep
        self._clock = clock
        self._published = asyncio.Event()
        self._closing = False
        self._generation: Generation | None = None
        self._tokens: dict[str, tuple[TokenRecord, float]] = {}
        self._hashes: dict[bytes, frozenset[str]] = {}
        #: token name -> its groups, reloaded whenever the `groups` counter moves
        self._members: tuple[dict[str, frozenset[str]], frozenset[str]] | None = None
        #: token name -> role, reloaded with `_members` (a new token bumps the same counter)
        self._roles: dict[str, str] | None = None
        self._answers: dict[_AnswerKey, tuple[float, bytes]] = {}
        self._revoked: set[str] = set()
        self._to_drop: set[str] = set()
        #: watch calls waiting for a publication right now
        self.watching = 0
        #: readiness checks failing at the last /readyz
        self._not_ready: set[str] = set()

    def shutdown(self) -> None:
        """Wake every watcher: they return at once, and new ones do not wait."""
        self._closing = True
        self._published.set()

    def close(self) -> None:
        self.storage.close()

    async def aclose(self) -> None:
        await self.peers.aclose()
        self.close()

    async def readiness(self) -> dict[str, bool]:
        """What /readyz reports: the database and the peer store both answer (logged when that changes)."""
        checks: dict[str, bool] = {}
        reasons: dict[str, str] = {}
        try:
            self.storage.ping()
            checks["database"] = True
        except Exception as exc:  # any driver's failure means "not ready", never a 500
            checks["database"], reasons["database"] = False, f"database {self.storage.location}: {exc}"
        try:
            await self.peers.ping()
            checks["peers"] = True
        except Exception as exc:
            checks["peers"], reasons["peers"] = False, f"peer store: {exc}"
        for name, ok in checks.items():
            if not ok and name not in self._not_ready:
                log.warning("not ready: %s", reasons[name])
            elif ok and name in self._not_ready:
                log.info("ready again: %s answers", name)
        self._not_ready = set(reasons)
        return checks

    def token_name(self, secret: str | None) -> str | None:
        """The name of the token `secret` is, for logs; None if none (never counted as a failure)."""
        if not secret or not is_secret_shaped(secret):
            return None
        try:
            record = self.storage.token_by_hash(hash_secret(secret))
        except Exception:
            return None
        return record.name if record else None

    # tokens

    def create_token(
        self,
        name: str,
        role: str,
        builder_key: bytes | None = None,
        publish: tuple[str, ...] = (),
        groups: tuple[str, ...] = (),
    ) -> JoinToken:
        """A new join token. A builder's is bound here to its signing key, for good (until `update_token`),
        and may publish only into its `publish` patterns (default: any repository nobody owns)."""
        if not _NAME.fullmatch(name):
            raise InvalidInput(f"invalid token name {name!r}: letters, digits, '.', '_', '-' (up to 63)")
        if grp.is_group_id(name):  # the certificate's CN: libtorrent would match it to that group's torrents
            raise InvalidInput(f"invalid token name {name!r}: it looks like a group id (g + 24 hex digits)")
        if role not in ROLES:
            raise InvalidInput(f"invalid role {role!r}: expected one of {', '.join(ROLES)}")
        if role == "builder" and builder_key is None:
            raise InvalidInput("a builder token needs its signing key: --key ed25519:... (from `swarm keygen`)")
        if role != "builder" and (builder_key is not None or publish):
            raise InvalidInput("only builder tokens take --key and --publish")
        patterns = _patterns(publish) if publish else (DEFAULT_PUBLISH if role == "builder" else ())
        groups = tuple(grp.check_name(g) for g in groups) or (grp.DEFAULT,)
        token = JoinToken.new(self.ca.fingerprint)
        self.storage.add_token(name, role, hash_secret(token.secret), builder_key, patterns, groups)
        return token

    def update_token(self, name: str, builder_key: bytes | None = None, publish: tuple[str, ...] | None = None) -> None:
        """Rebind a builder token to a new signing key (rotation) and/or replace its patterns."""
        record = self.storage.token(name)
        if record is None:
            raise NotFound(f"no token named {name!r}")
        if record.role != "builder":
            raise InvalidInput(f"token {name!r} is a {record.role} token: only builder tokens have a key and patterns")
        self.storage.update_token(name, builder_key, None if publish is None else _patterns(publish))
        self._refresh()

    def transfer_repository(self, repository: str, owner: str) -> None:
        """Hand `repository` (all its tags) over to builder token `owner`."""
        try:
            ImageRef.parse(f"{repository}:latest")
        except UsageError as exc:
            raise InvalidInput(f"invalid repository {repository!r}") from exc
        if not self.storage.transfer_repository(repository, owner):
            raise NotFound(f"no builder token named {owner!r}")

    def revoke_token(self, name: str) -> None:
        if not self.storage.revoke_token(name):
            raise NotFound(f"no token named {name!r}")
        self._refresh()

    def list_tokens(self) -> list[TokenRecord]:
        return self.storage.tokens()

    def _refresh(self) -> None:
        """Drop the caches that a revocation or publication made stale (maybe by another process)."""
        gen = self.storage.generation()
        old = self._generation
        if old == gen:
            return
        self._generation = gen
        if old is None or gen.revocations != old.revocations:
            self._tokens.clear()
            self._answers.clear()
            revoked = set(self.storage.revoked_names())
            self._to_drop |= revoked - self._revoked
            self._revoked = revoked
        if old is None or gen.seq != old.seq or gen.groups != old.groups or gen.removals != old.removals:
            self._hashes.clear()
            self._answers.clear()
        if old is None or gen.groups != old.groups:
            self._members = None
            self._roles = None

    # groups

    def _access(self) -> tuple[dict[str, frozenset[str]], frozenset[str]]:
        """(token name -> its groups, names of tokens that read every group), cached until any
        membership or token changes (both bump the `groups` counter)."""
        if self._members is None:
            everything = frozenset(t.name for t in self.storage.tokens() if t.role != "host")
            self._members = (self.storage.memberships(), everything)
        return self._members

    def token_groups(self, name: str) -> frozenset[str]:
        return self._access()[0].get(name, frozenset())

    def readable(self, record: TokenRecord) -> frozenset[str] | None:
        """The groups whose images `record` may read; None: every group (builders and admins)."""
        return self.token_groups(record.name) if record.role == "host" else None

    def _entitled(self, host: str, groups: frozenset[str]) -> bool:
        """May the peer of token `host` be handed out for a torrent of `groups`?"""
        members, everything = self._access()
        return host in everything or not members.get(host, frozenset()).isdisjoint(groups)

    def group_of(self, repository: str) -> str:
        return grp.resolve(repository, self.storage.group_patterns())

    def resolve_group(self, secret: str | None, repository: str, ip: str | None = None) -> tuple[str, str]:
        """(group, group id) of `repository`, for builders before they make torrents."""
        record = self.authenticate(secret, ip)
        if record.role == "host":
            raise Forbidden(f"token {record.name!r} has role host: only builders and admins resolve groups")
        try:
            repo = ImageRef.parse(repository).repository
        except SwarmError as exc:
            raise InvalidInput(str(exc)) from exc
        name = self.group_of(repo)
        return name, grp.group_id(name)

    def add_group(self, name: str) -> None:
        self.storage.add_group(grp.check_name(name))

    def remove_group(self, name: str) -> None:
        self.storage.remove_group(grp.check_name(name))

    def list_groups(self) -> list[GroupRecord]:
        return self.storage.group_records()

    def map_pattern(self, pattern: str, group: str) -> None:
        self.storage.map_pattern(grp.check_pattern(pattern), grp.check_name(group))

    def unmap_pattern(self, pattern: str) -> None:
        if not self.storage.unmap_pattern(grp.check_pattern(pattern)):
            raise NotFound(f"no group mapping for pattern {pattern!r}")

    def change_memberships(self, token: str, add: list[str], remove: list[str]) -> None:
        self.storage.change_memberships(token, [grp.check_name(g) for g in add], [grp.check_name(g) for g in remove])
        self._refresh()

    def authenticate(self, secret: str | None, ip: str | None = None) -> TokenRecord:
        """The token's record, or Unauthorized (same message for missing, malformed, unknown, revoked).

        With the caller's `ip`, guesses are counted and RateLimited refuses an address past the limit,
        but only requests without a valid token: a stranger behind the same NAT or proxy as the
        fleet must not lock the fleet out. (Secrets are 128-bit random: the limit saves work, it is
        not what stops guessing.)"""
        self._refresh()
        record = None
        if secret and is_secret_shaped(secret):
            # the lookup is by sha256 of the secret: timing reveals nothing about the secret itself
            digest = hash_secret(secret)
            now = self._clock()
            cached = self._tokens.get(digest)
            if cached is not None and now - cached[1] < self.token_cache_ttl:
                record = cached[0]
            else:
                record = self.storage.token_by_hash(digest)
                if record is not None:
                    if len(self._tokens) >= MAX_CACHED_HASHES:
                        self._tokens.clear()
                    self._tokens[digest] = (record, now)
        valid = record is not None and not record.revoked and record.name not in self._revoked
        if not valid and ip is not None and self.limiter.blocked(ip):
            self.metrics.auth_failures.labels("rate_limited").inc()
            raise RateLimited(RATE_LIMITED)
        if record is None:
            self.metrics.auth_failures.labels("unknown").inc()
            if ip is not None:
                self.limiter.failed(ip)
            raise Unauthorized(_UNAUTHORIZED)
        if not valid:
            self.metrics.auth_failures.labels("revoked").inc()
            raise Unauthorized(_UNAUTHORIZED)
        return record

    async def _drop_revoked(self) -> None:
        """Remove from the peer store the hosts revoked since last time (in any process)."""
        while self._to_drop:
            name = self._to_drop.pop()
            gone = await self.peers.drop_host(name)
            if gone:
                log.info("dropped %d peers of revoked host %s", gone, name)

    # CA

    def enroll(self, secret: str | None, csr_pem: str, ip: str | None = None) -> EnrollResponse:
        record = self.authenticate(secret, ip)
        if record.role == "admin":
            raise Forbidden(f"token {record.name!r} has role admin: it reads fleet state and joins no swarm")
        if grp.is_group_id(record.name):  # libtorrent matches the CN too: it must name no torrent
            raise Forbidden(f"token {record.name!r} is named like a group id: make a token with another name")
        issued = self.ca.sign_csr(csr_pem, record.name, self.cert_lifetime, self.certificate_names(record))
        self.storage.record_certificate(issued.serial, record.name, issued.not_after)
        self.metrics.certificates.inc()
        log.info("issued a certificate to %s, valid until %d", record.name, issued.not_after)
        return EnrollResponse(issued.pem, self.ca.cert_pem, issued.not_after, record.name, record.role)

    def certificate_names(self, record: TokenRecord) -> list[str]:
        """The SAN names of `record`'s certificate: the ids of the groups whose torrents it may join.
        A host's (and a relay's) groups; a builder's, the groups its publish patterns reach."""
        if record.role == "builder":
            return grp.certificate_names(grp.reachable_groups(record.publish, self.storage.group_patterns()))
        return grp.certificate_names(self.token_groups(record.name))

    # manifests

    def publish(self, secret: str | None, envelope: bytes, ip: str | None = None) -> ManifestEntry:
        """Accept a signed manifest only from the builder token bound to its signing key, naming that
        token as its publisher (inside the signed bytes), into a repository the token may publish to and
        owns, and newer than the tag's current manifest."""
        record = self.authenticate(secret, ip)
        if record.role != "builder":
            raise Forbidden(f"token {record.name!r} has role {record.role}: only builder tokens publish")
        signed = SignedManifest.from_bytes(envelope)
        try:
            manifest = signed.verify(None)
        except SwarmError as exc:
            raise InvalidInput(str(exc)) from exc
        if record.builder_key is None:
            raise Forbidden(
                f"builder token {record.name!r} has no signing key: "
                f"`swarm tracker token update {record.name} --key PUBKEY`"
            )
        if signed.public_key != record.builder_key:
            raise Forbidden(
                f"manifest signed by key {key_id(signed.public_key)}, but builder token "
                f"{record.name!r} is bound to key {key_id(record.builder_key)}"
            )
        if manifest.publisher != record.name:
            raise Forbidden(
                f"manifest was signed for publisher {manifest.publisher[:63]!r}, not for token "
                f"{record.name!r}: a replayed envelope"
            )
        if not any(matches(p, manifest.ref) for p in record.publish):
            raise Forbidden(
                f"builder token {record.name!r} may publish only into {' '.join(record.publish) or '(none)'}"
                f", not {manifest.ref}"
            )
        if manifest.expired(int(time.time() * 1000)):
            raise InvalidInput(f"manifest for {manifest.ref} has expired")
        group = self.group_of(manifest.repository)
        gid = grp.group_id(group)
        try:
            for layer in manifest.layers:
                check_layer_torrent(layer.torrent, layer.info_hash, layer.blob_size, self.ca.cert_pem, gid)
        except LegacyTorrent as exc:
            raise InvalidInput(
                f"the layer torrents of {manifest.ref} must be named after its group {group!r} ({gid}), "
                "not by digest: prepare it with a swarm agent that knows host groups"
            ) from exc
        entry = self.storage.publish(
            str(manifest.ref),
            signed.to_bytes(),
            manifest.image_id,
            record.name,
            manifest.created_ms,
            [(layer.announce_hash, layer.blob) for layer in manifest.layers],
            group=group,
        )
        log.info("%s published %s (seq %d)", record.name, entry.ref, entry.seq)
        if self.keep is not None:
            self.prune(self.keep, repository=manifest.repository)
        self.metrics.publications.inc()
        self._refresh()
        self._published.set()
        self._published = asyncio.Event()
        return entry

    # the root-signed key document (swarm/core/trust.py)

    def publish_key_document(self, envelope: bytes) -> int:
        """Store a signed key document (operator command on the data dir); returns its version.

        The tracker does not know the root: it checks that the document is well formed, signed by
        the root key it names, by the same root as the one it holds, and newer."""
        try:
            signed = SignedKeyDocument.from_bytes(envelope)
            document = signed.verify(None)
        except SwarmError as exc:
            raise InvalidInput(f"not a valid signed key document: {exc}") from exc
        held = self.storage.key_document()
        if held is not None and SignedKeyDocument.from_bytes(held).root != signed.root:
            raise Forbidden(
                f"the tracker's key document is signed by another root than {format_public_key(signed.root)}"
            )
        self.storage.store_key_document(document.version, signed.to_bytes())
        log.info("key document version %d published (%d keys)", document.version, len(document.keys))
        return document.version

    def get_key_document(self, secret: str | None, ip: str | None = None) -> bytes:
        self.authenticate(secret, ip)
        envelope = self.storage.key_document()
        if envelope is None:
            raise NotFound("no key document published on this tracker")
        return envelope

    def remove_manifest(self, secret: str | None, ref: str, ip: str | None = None) -> ManifestEntry:
        """Remove tag `ref`: its repository's owner builder or an admin."""
        record = self.authenticate(secret, ip)
        if record.role == "host":
            raise Forbidden(f"token {record.name!r} has role host: only the owner builder and admins remove tags")
        key = _ref(ref)
        if record.role == "builder":
            owner = self.storage.repository_owner(key.rpartition(":")[0])
            if owner is not None and owner != record.name:
                raise Forbidden(
                    f"repository {key.rpartition(':')[0]} belongs to builder {owner!r}, not {record.name!r}"
                )
        return self.remove_tag(key, by=record.name)

    def remove_tag(self, ref: str, by: str = "operator") -> ManifestEntry:
        """Remove tag `ref` (no permission check: the operator on the data dir, or after one)."""
        removed = self.storage.remove_manifest(_ref(ref))
        if removed is None:
            raise NotFound(f"no manifest for {_ref(ref)}")
        entry, retired = removed
        log.info("%s removed %s (seq %d), %d torrents retired", by, entry.ref, entry.seq, len(retired))
        self._refresh()
        return entry

    def prune(self, keep: int, older_than: int | None = None, repository: str | None = None) -> list[ManifestEntry]:
        """Keep the newest `keep` tags per repository (by seq); see Storage.prune."""
        if keep < 0:
            raise InvalidInput("--keep must not be negative")
        removed = self.storage.prune(keep, older_than, repository)
        for e in removed:
            log.info("retention removed %s (seq %d)", e.ref, e.seq)
        if removed:
            self._refresh()
        return removed

    def list_repositories(self) -> list[tuple[str, str]]:
        return self.storage.repositories()

    def get_manifest(self, secret: str | None, ref: str, ip: str | None = None) -> bytes:
        record = self.authenticate(secret, ip)
        try:
            key = str(ImageRef.parse(ref))
        except SwarmError as exc:
            raise InvalidInput(str(exc)) from exc
        readable = self.readable(record)
        # outside the host's groups reads as absent: a 404 does not tell that the image exists
        envelope = self.storage.envelope(key)
        if envelope is None or (readable is not None and self.storage.manifest_group(key) not in readable):
            raise NotFound(f"no manifest for {key}")
        return envelope

    def _visible(self, record: TokenRecord, entries: list[ManifestEntry]) -> list[ManifestEntry]:
        readable = self.readable(record)
        return entries if readable is None else [e for e in entries if e.group in readable]

    def list_manifests(self, secret: str | None, ip: str | None = None) -> list[ManifestEntry]:
        record = self.authenticate(secret, ip)
        return self._visible(record, self.storage.manifests())

    async def watch(
        self, secret: str | None, since: int, timeout: float, ip: str | None = None
    ) -> tuple[int, list[ManifestEntry]]:
        """Entries published after `since`, waiting up to `timeout` s (max 60) for one; (seq, entries).

        With a shared database another replica may publish: the database is polled every second too."""
        record = self.authenticate(secret, ip)
        timeout = max(0.0, min(float(timeout), MAX_WATCH_TIMEOUT))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            published = self._published
            entries = self._visible(record, self.storage.manifests(since))
            remaining = deadline - loop.time()
            if entries or remaining <= 0 or self._closing:
                break
            self.watching += 1
            try:
                await asyncio.wait_for(published.wait(), min(remaining, 1.0) if self.shared else remaining)
            except TimeoutError:
                pass
            finally:
                self.watching -= 1
        record = self.authenticate(secret)  # revoked while waiting: nothing more
        return self.storage.current_seq(), self._visible(record, entries)

    # BitTorrent

    def _hash_groups(self, info_hash: bytes) -> frozenset[str]:
        """The groups of the manifests that publish this torrent (empty: not published)."""
        known = self._hashes.get(info_hash)
        if known is None:
            known = self.storage.hash_groups(info_hash)
            if len(self._hashes) >= MAX_CACHED_HASHES:
                self._hashes.clear()
            self._hashes[info_hash] = known
        return known

    def _may_swarm(self, record: TokenRecord, info_hash: bytes) -> bool:
        """Published, and in one of the token's groups (outside them reads as unknown)."""
        groups = self._hash_groups(info_hash)
        readable = self.readable(record)
        return bool(groups) and (readable is None or not readable.isdisjoint(groups))

    def _bt_auth(self, secret: str | None, ip: str | None) -> TokenRecord | bytes:
        try:
            return self.authenticate(secret, ip)
        except RateLimited:
            return bt.failure(RATE_LIMITED)
        except Unauthorized:
            return bt.failure("unauthorized")

    async def announce(self, secret: str | None, raw_query: str, remote_ip: str) -> bytes:
        announces = self.metrics.announces
        record = self._bt_auth(secret, remote_ip or None)
        if isinstance(record, bytes):
            announces.labels("rate_limited" if RATE_LIMITED.encode() in record else "unauthorized").inc()
            return record
        try:
            req = bt.parse_announce(raw_query)
            ip = bt.normalize_ip(remote_ip)
        except InvalidInput as exc:
            announces.labels("invalid").inc()
            return bt.failure(str(exc))
        if claims_other_identity(req.peer_id, record.name, record.role):
            announces.labels("refused").inc()
            return bt.failure(PEER_ID_IMPERSONATION)
        key: _AnswerKey = (req.info_hash, req.peer_id, record.name, req.compact, req.no_peer_id)
        now = self._clock()
        if req.event in ("", "paused"):
            cached = self._answers.get(key)
            if cached is not None and now - cached[0] < self.min_interval:
                announces.labels("cached").inc()
                return cached[1]
        if not self._may_swarm(record, req.info_hash):
            if self.storage.is_retired_hash(req.info_hash):
                announces.labels("retired_torrent").inc()
                return bt.failure(RETIRED_TORRENT)
            announces.labels("unknown_torrent").inc()
            return bt.failure("unknown torrent")
        await self._drop_revoked()
        peer = Peer(ip, req.port, req.peer_id, req.left, record.name)
        handout = await self.peers.handle(req.info_hash, peer, req.event, req.numwant)
        if handout.refused:
            announces.labels("refused").inc()
            return bt.failure(handout.refused)
        groups = self._hash_groups(req.info_hash)
        # only peers entitled now: a host removed from the group leaves every handout at once
        peers = [p for p in handout.peers if p.host not in self._revoked and self._entitled(p.host, groups)]
        body = bt.announce_response(
            peers,
            handout.counts,
            bt.interval_for(req.left, self.interval, self.seed_interval),
            req.compact,
            req.no_peer_id,
            self.min_interval,
        )
        if req.event == "stopped":
            self._answers.pop(key, None)
            announces.labels("stopped").inc()
        else:
            if len(self._answers) >= MAX_CACHED_ANSWERS:
                self._answers.clear()
            self._answers[key] = (now, body)
            announces.labels("ok").inc()
        return body

    async def list_peers(self, secret: str | None, info_hash: str, ip: str | None = None) -> list[PeerEntry]:
        """The entries of torrent `info_hash` (announce hash, hex) with the token each belongs to:
        what agents label their peers with, since a peer id in a handshake proves nothing.

        Only for a token that may announce the torrent (another reads as unknown, as in announce),
        and only entries the announce handout would show (not revoked, entitled now)."""
        record = self.authenticate(secret, ip)
        if not _ANNOUNCE_HASH.fullmatch(info_hash):
            raise InvalidInput("info_hash must be 40 hex digits (the 20-byte announce hash)")
        raw = bytes.fromhex(info_hash)
        if not self._may_swarm(record, raw):
            raise NotFound("unknown torrent")
        await self._drop_revoked()
        groups = self._hash_groups(raw)
        roles = self._token_roles()
        return [
            PeerEntry(p.ip, p.port, p.peer_id, p.host, roles[p.host])
            for p in await self.peers.entries(raw, MAX_PEER_ENTRIES)
            if p.host in roles and p.host not in self._revoked and self._entitled(p.host, groups)
        ]

    def _token_roles(self) -> dict[str, str]:
        if self._roles is None:
            self._roles = {t.name: t.role for t in self.storage.tokens()}
        return self._roles

    async def scrape(self, secret: str | None, raw_query: str, remote_ip: str | None = None) -> bytes:
        scrapes = self.metrics.scrapes
        record = self._bt_auth(secret, remote_ip)
        if isinstance(record, bytes):
            scrapes.labels("rate_limited" if RATE_LIMITED.encode() in record else "unauthorized").inc()
            return record
        try:
            hashes = bt.parse_scrape(raw_query)
        except InvalidInput as exc:
            scrapes.labels("invalid").inc()
            return bt.failure(str(exc))
        if not all(self._may_swarm(record, h) for h in hashes):
            scrapes.labels("unknown_torrent").inc()
            return bt.failure("unknown torrent")
        await self._drop_revoked()
        files: dict[bytes, SwarmCounts] = await self.peers.scrape(hashes)
        scrapes.labels("ok").inc()
        return bt.scrape_response(files)

    async def sweep(self) -> int:
        """Periodic upkeep: expire peers, forget stale answers and failures, apply revocations."""
        self._refresh()
        await self._drop_revoked()
        now = self._clock()
        for key in [k for k, (t, _) in self._answers.items() if now - t >= self.min_interval]:
            del self._answers[key]
        self.limiter.prune()
        return await self.peers.sweep()

    async def render_metrics(self) -> bytes:
        m = self.metrics
        m.active_peers.set(await self.peers.active())
        m.enrolled_hosts.set(self.storage.active_token_count())
        m.revoked_tokens.set(self.storage.revoked_count())
        m.manifests.set(self.storage.manifest_count())
        return m.render()
