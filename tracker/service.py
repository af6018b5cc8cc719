"""The tracker's protocol logic, with no web framework: the HTTP layer only maps to it.

Every authenticated call looks the token up in the database, so a token
revoked by `swarm tracker token revoke` (another process) is refused at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from swarm.core.api import MAX_WATCH_TIMEOUT, EnrollResponse, ManifestEntry
from swarm.core.digest import digest_hex
from swarm.core.errors import Forbidden, InvalidInput, NotFound, SwarmError, Unauthorized
from swarm.core.refs import ImageRef
from swarm.core.signing import SignedManifest
from swarm.core.tokens import ROLES, JoinToken, hash_secret, is_secret_shaped
from swarm.engine.metainfo import check_layer_torrent
from tracker import announce as bt
from tracker.ca import CertificateAuthority
from tracker.peers import MemoryPeerStore, Peer, PeerStore, SwarmCounts
from tracker.storage import Storage, TokenRecord

log = logging.getLogger("swarm.tracker")

DEFAULT_CERT_LIFETIME = 3600
DEFAULT_INTERVAL = 30
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_UNAUTHORIZED = "missing, unknown or revoked token"


class TrackerService:
    def __init__(self, data_dir: Path, *, cert_lifetime: int = DEFAULT_CERT_LIFETIME,
                 interval: int = DEFAULT_INTERVAL, peer_store: PeerStore | None = None,
                 public_url: str | None = None) -> None:
        if cert_lifetime < 60:
            raise InvalidInput("certificate lifetime must be at least 60 seconds")
        if interval < 1:
            raise InvalidInput("announce interval must be at least 1 second")
        self.data_dir = data_dir
        self.storage = Storage(data_dir)
        self.ca = CertificateAuthority.load_or_create(data_dir)
        self.cert_lifetime = cert_lifetime
        self.interval = interval
        self.public_url = public_url
        self.peers: PeerStore = peer_store or MemoryPeerStore(ttl=2 * interval)
        self._published = asyncio.Event()
        self._closing = False
        self._revoked_seen = -1
        #: watch calls waiting for a publication right now
        self.watching = 0

    def shutdown(self) -> None:
        """Wake every watcher: they return at once, and new ones do not wait."""
        self._closing = True
        self._published.set()

    def close(self) -> None:
        self.storage.close()

    # tokens

    def create_token(self, name: str, role: str) -> JoinToken:
        if not _NAME.match(name):
            raise InvalidInput(f"invalid token name {name!r}: letters, digits, '.', '_', '-' (up to 63)")
        if role not in ROLES:
            raise InvalidInput(f"invalid role {role!r}: expected one of {', '.join(ROLES)}")
        token = JoinToken.new(self.ca.fingerprint)
        self.storage.add_token(name, role, hash_secret(token.secret))
        return token

    def revoke_token(self, name: str) -> None:
        if not self.storage.revoke_token(name):
            raise NotFound(f"no token named {name!r}")
        self._sync_revocations()

    def list_tokens(self) -> list[TokenRecord]:
        return self.storage.tokens()

    def authenticate(self, secret: str | None) -> TokenRecord:
        """The token's record, or Unauthorized (same message for missing, malformed, unknown, revoked)."""
        if not secret or not is_secret_shaped(secret):
            raise Unauthorized(_UNAUTHORIZED)
        # the lookup is by sha256 of the secret: timing reveals nothing about the secret itself
        record = self.storage.token_by_hash(hash_secret(secret))
        if record is None or record.revoked:
            raise Unauthorized(_UNAUTHORIZED)
        return record

    def _sync_revocations(self) -> None:
        """Drop from the peer store the hosts whose tokens were revoked (maybe by another process)."""
        count = self.storage.revoked_count()
        if count != self._revoked_seen:
            for name in self.storage.revoked_names():
                self.peers.remove_host(name)
            self._revoked_seen = count

    # CA

    def enroll(self, secret: str | None, csr_pem: str) -> EnrollResponse:
        record = self.authenticate(secret)
        issued = self.ca.sign_csr(csr_pem, record.name, self.cert_lifetime)
        self.storage.record_certificate(issued.serial, record.name, issued.not_after)
        log.info("issued a certificate to %s, valid until %d", record.name, issued.not_after)
        return EnrollResponse(issued.pem, self.ca.cert_pem, issued.not_after, record.name, record.role)

    # manifests

    def publish(self, secret: str | None, envelope: bytes) -> ManifestEntry:
        record = self.authenticate(secret)
        if record.role != "builder":
            raise Forbidden(f"token {record.name!r} has role {record.role}: only builder tokens publish")
        signed = SignedManifest.from_bytes(envelope)
        try:
            manifest = signed.verify(None)
        except SwarmError as exc:
            raise InvalidInput(str(exc)) from exc
        for layer in manifest.layers:
            check_layer_torrent(layer.torrent, layer.info_hash, digest_hex(layer.blob), layer.blob_size,
                                self.ca.cert_pem)
        entry = self.storage.publish(
            str(manifest.ref), signed.to_bytes(), manifest.image_id, record.name, signed.public_key,
            [(layer.announce_hash, layer.blob) for layer in manifest.layers])
        log.info("%s published %s (seq %d)", record.name, entry.ref, entry.seq)
        self._published.set()
        self._published = asyncio.Event()
        return entry

    def get_manifest(self, secret: str | None, ref: str) -> bytes:
        self.authenticate(secret)
        try:
            key = str(ImageRef.parse(ref))
        except SwarmError as exc:
            raise InvalidInput(str(exc)) from exc
        envelope = self.storage.envelope(key)
        if envelope is None:
            raise NotFound(f"no manifest for {key}")
        return envelope

    def list_manifests(self, secret: str | None) -> list[ManifestEntry]:
        self.authenticate(secret)
        return self.storage.manifests()

    async def watch(self, secret: str | None, since: int, timeout: float) -> tuple[int, list[ManifestEntry]]:
        """Entries published after `since`, waiting up to `timeout` s (max 60) for one; (seq, entries)."""
        self.authenticate(secret)
        timeout = max(0.0, min(float(timeout), MAX_WATCH_TIMEOUT))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            published = self._published
            entries = self.storage.manifests(since)
            remaining = deadline - loop.time()
            if entries or remaining <= 0 or self._closing:
                break
            self.watching += 1
            try:
                await asyncio.wait_for(published.wait(), remaining)
            except TimeoutError:
                pass
            finally:
                self.watching -= 1
        self.authenticate(secret)  # revoked while waiting: nothing more
        return self.storage.current_seq(), entries

    # BitTorrent

    def announce(self, secret: str | None, raw_query: str, remote_ip: str) -> bytes:
        try:
            record = self.authenticate(secret)
        except Unauthorized:
            return bt.failure("unauthorized")
        try:
            req = bt.parse_announce(raw_query)
            ip = bt.normalize_ip(remote_ip)
        except InvalidInput as exc:
            return bt.failure(str(exc))
        if not self.storage.is_published_hash(req.info_hash):
            return bt.failure("unknown torrent")
        self._sync_revocations()
        peer = Peer(ip, req.port, req.peer_id, req.left, record.name)
        if req.event == "stopped":
            self.peers.remove(req.info_hash, peer)
            return bt.announce_response([], self.peers.counts(req.info_hash), self.interval, req.compact,
                                        req.no_peer_id)
        self.peers.announce(req.info_hash, peer)
        if req.event == "completed":
            self.peers.completed(req.info_hash)
        handout = self.peers.peers(req.info_hash, peer, req.numwant)
        return bt.announce_response(handout, self.peers.counts(req.info_hash), self.interval, req.compact,
                                    req.no_peer_id)

    def scrape(self, secret: str | None, raw_query: str) -> bytes:
        try:
            self.authenticate(secret)
        except Unauthorized:
            return bt.failure("unauthorized")
        try:
            hashes = bt.parse_scrape(raw_query)
        except InvalidInput as exc:
            return bt.failure(str(exc))
        if not all(self.storage.is_published_hash(h) for h in hashes):
            return bt.failure("unknown torrent")
        self._sync_revocations()
        files: dict[bytes, SwarmCounts] = {h: self.peers.counts(h) for h in hashes}
        return bt.scrape_response(files)

    def expire_peers(self) -> int:
        return self.peers.expire()
