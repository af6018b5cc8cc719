"""What a host believes of a manifest before it pulls: who signed it, and that it is not older.

- `TagHistory` remembers, per tag and on disk, the newest manifest this host accepted (its signed
  creation time and digest). A manifest older than that, or as old but different, is refused,
  whatever the tracker says: a compromised tracker cannot roll a host back or swap a tag.
- `KeyDocumentFollower` keeps the root-signed key document (swarm/core/trust.py) the tracker
  serves, checked against the pinned root, never going back to a lower version; it is fetched again
  before each pull (at most every REFRESH_INTERVAL seconds, and at once when it does not name the
  manifest's key), so hosts follow a builder key's rotation or revocation with no restart.
- `HostTrust` puts both together with the keys pinned with --trust.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from swarm.core import wire
from swarm.core.errors import InvalidInput, NotFound, SwarmError, TrackerError, UntrustedManifest
from swarm.core.files import write_atomic
from swarm.core.manifest import Manifest
from swarm.core.refs import ImageRef
from swarm.core.signing import SignedManifest
from swarm.core.trust import KeyDocument, SignedKeyDocument, TrustPolicy

log = logging.getLogger(__name__)

#: seconds a fetched key document is used before the next pull fetches it again
REFRESH_INTERVAL = 5.0


class TagHistory:
    """The newest accepted manifest per tag: ref -> (created_ms, sha256 of the manifest bytes)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._newest: dict[str, tuple[int, str]] = {}
        try:
            raw = wire.unpack_map(path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, InvalidInput) as exc:
            # refusing to start would need an operator; starting empty only forgets what was seen
            log.warning("ignoring unreadable %s: %s", path, exc)
            return
        for ref, entry in raw.items():
            if isinstance(ref, str) and isinstance(entry, list) and len(entry) == 2:
                created, digest = entry
                if isinstance(created, int) and isinstance(digest, str):
                    self._newest[ref] = (created, digest)

    def newest(self, ref: str) -> int | None:
        held = self._newest.get(ref)
        return held[0] if held else None

    def check(self, manifest: Manifest, body: bytes) -> None:
        """Refuse `manifest` if this host accepted a newer one for its tag (or another as old)."""
        ref = str(manifest.ref)
        held = self._newest.get(ref)
        if held is None:
            return
        created, digest = held
        if manifest.created_ms < created or (manifest.created_ms == created and _digest(body) != digest):
            raise UntrustedManifest(
                f"refusing an older manifest for {ref} (created_ms {manifest.created_ms}; this host "
                f"already accepted one created_ms {created}): a rollback or a replay"
            )

    def record(self, manifest: Manifest, body: bytes) -> None:
        ref = str(manifest.ref)
        held = self._newest.get(ref)
        if held is not None and held[0] >= manifest.created_ms:
            return
        self._newest[ref] = (manifest.created_ms, _digest(body))
        write_atomic(self._path, wire.pack({r: list(v) for r, v in self._newest.items()}))


class KeyDocumentFollower:
    """The newest key document signed by the pinned `root`, kept on disk at `path`."""

    def __init__(self, root: bytes, path: Path, fetch: Callable[[], Awaitable[bytes]]) -> None:
        self.root = root
        self._path = path
        self._fetch = fetch
        self._fetched_at = -REFRESH_INTERVAL
        self._lock = asyncio.Lock()
        self.document: KeyDocument | None = None
        try:
            self.document = SignedKeyDocument.from_bytes(path.read_bytes()).verify(root)
        except FileNotFoundError:
            pass
        except (OSError, SwarmError) as exc:
            log.warning("ignoring unusable %s: %s", path, exc)

    async def refresh(self, force: bool = False) -> KeyDocument | None:
        """Fetch the tracker's document if the last fetch is older than REFRESH_INTERVAL (or `force`);
        keep it if it verifies and is not older. A tracker away or without one keeps what is held."""
        async with self._lock:
            if not force and time.monotonic() - self._fetched_at < REFRESH_INTERVAL:
                return self.document
            try:
                data = await self._fetch()
            except NotFound:
                self._fetched_at = time.monotonic()
                return self.document
            except TrackerError as exc:
                log.warning("key document not refreshed (%s): using version %s", exc, self.version or "none")
                return self.document
            self._fetched_at = time.monotonic()
            self.accept(data)
            return self.document

    def accept(self, data: bytes) -> None:
        try:
            document = SignedKeyDocument.from_bytes(data).verify(self.root)
        except SwarmError as exc:
            log.warning("refusing the tracker's key document: %s", exc)
            return
        held = self.document
        if held is not None and document.version < held.version:
            log.warning("refusing key document version %d: this host holds version %d", document.version, held.version)
            return
        if held is not None and document.version == held.version:
            if document != held:
                log.warning("refusing a different key document with the same version %d", held.version)
            return
        write_atomic(self._path, data)
        self.document = document
        log.info("key document version %d: %d builder keys", document.version, len(document.keys))

    @property
    def version(self) -> int:
        return self.document.version if self.document else 0


class HostTrust:
    """Whether this host takes a signed manifest: signed by a trusted key (pinned, or listed for its
    repository in the root's key document), for the tag asked, not expired, not older than before."""

    def __init__(self, pinned: list[bytes], history: TagHistory, keys: KeyDocumentFollower | None = None) -> None:
        self.pinned = pinned  # the daemon's live list: a SIGHUP reload changes it in place
        self.history = history
        self.keys = keys

    async def verify(self, envelope: SignedManifest, ref: ImageRef) -> Manifest:
        if not self.pinned and self.keys is None:
            raise UntrustedManifest("no trusted builder keys: start the agent with --trust PUBKEY or --trust-root")
        manifest = envelope.verify(None)  # the signature itself, by whichever key it names
        if manifest.ref != ref:
            raise UntrustedManifest(f"the tracker answered {ref} with a manifest for {manifest.ref}")
        document = await self.keys.refresh() if self.keys else None
        try:
            TrustPolicy(self.pinned, document).check(envelope.public_key, ref, time.time())
        except UntrustedManifest:
            if self.keys is None:
                raise
            # a key delegated a moment ago: look again before refusing
            document = await self.keys.refresh(force=True)
            TrustPolicy(self.pinned, document).check(envelope.public_key, ref, time.time())
        if manifest.expired(time.time_ns() // 1_000_000):
            raise UntrustedManifest(f"the manifest for {ref} has expired: the tracker serves no newer one")
        self.history.check(manifest, envelope.manifest)
        # remembered now, not after the load: once a newer manifest verified, an older one never loads
        self.history.record(manifest, envelope.manifest)
        return manifest


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
