"""The agent's blob cache and its record of verified blobs and known manifests.

A blob counts as verified only after its sha256 matched; the record keeps
(size, mtime) so a blob changed behind the agent's back is hashed again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import stat
import threading
import time
from pathlib import Path

from swarm.agent.paths import AgentPaths
from swarm.core import wire
from swarm.core.digest import digest_hex, file_digest
from swarm.core.errors import DigestMismatch, InvalidInput
from swarm.core.files import write_atomic
from swarm.core.manifest import Manifest
from swarm.core.redact import escape_path
from swarm.core.signing import SignedManifest

log = logging.getLogger(__name__)


class BlobStore:
    def __init__(self, paths: AgentPaths) -> None:
        self._paths = paths
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[int, int]] = {}
        self._used: dict[str, float] = {}
        self._pending: list[str] = []
        self._load()

    def _load(self) -> None:
        if not self._paths.state.exists():
            return
        try:
            state = wire.unpack_map(self._paths.state.read_bytes())
            self._verified = {str(k): (int(v[0]), int(v[1])) for k, v in state.get("verified", {}).items()}
            self._used = {str(k): float(v) for k, v in state.get("used", {}).items()}
            self._pending = [str(r) for r in state.get("pending", [])]
        except (InvalidInput, TypeError, ValueError, IndexError, AttributeError):
            log.warning("agent state unreadable: every blob will be hashed again")

    def _save(self) -> None:
        try:
            write_atomic(
                self._paths.state,
                wire.pack(
                    {
                        "verified": {k: list(v) for k, v in self._verified.items()},
                        "used": self._used,
                        "pending": self._pending,
                    }
                ),
            )
        except OSError as exc:
            # the old state stays whole (atomic rename); at worst a blob is hashed again
            log.error("cannot save agent state: %s", exc.strerror)

    # -- pulls in flight survive a crash: the agent resumes them on start --------

    def pending_pulls(self) -> list[str]:
        with self._lock:
            return list(self._pending)

    def set_pending(self, ref: str, pending: bool) -> None:
        with self._lock:
            if pending and ref not in self._pending:
                self._pending.append(ref)
            elif not pending and ref in self._pending:
                self._pending.remove(ref)
            self._save()

    # -- least-recently-used bookkeeping for the cache budget --------------------

    def touch(self, digests: list[str]) -> None:
        now = time.time()
        with self._lock:
            for d in digests:
                self._used[d] = now
            self._save()

    def last_used(self, digest: str) -> float:
        with self._lock:
            return self._used.get(digest, 0.0)

    def verified(self) -> list[str]:
        with self._lock:
            return list(self._verified)

    @property
    def blobs_dir(self) -> Path:
        return self._paths.blobs_dir

    def path(self, digest: str) -> Path:
        return self._paths.blob(digest_hex(digest))

    def _stamp(self, digest: str) -> tuple[int, int] | None:
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns

    def is_verified(self, digest: str) -> bool:
        stamp = self._stamp(digest)
        with self._lock:
            return stamp is not None and self._verified.get(digest) == stamp

    def mark_verified(self, digest: str) -> None:
        stamp = self._stamp(digest)
        if stamp is None:
            raise DigestMismatch(f"blob {digest} is missing")
        with self._lock:
            self._verified[digest] = stamp
            self._save()

    async def verify(self, digest: str) -> None:
        """Hash the blob; record it when it matches, delete it when it does not."""
        actual = await asyncio.to_thread(file_digest, self.path(digest))
        if actual != digest:
            self.forget(digest, delete=True)
            raise DigestMismatch(f"blob {digest[:19]} arrived with sha256 {actual[:19]}: discarded")
        self.mark_verified(digest)

    def forget(self, digest: str, delete: bool = False) -> None:
        if delete:  # first: on a full disk the state file may only be writable after this
            self.path(digest).unlink(missing_ok=True)
        with self._lock:
            self._verified.pop(digest, None)
            self._used.pop(digest, None)
            self._save()

    def sizes(self) -> dict[str, int]:
        """Every blob file on disk (verified or still downloading) and its size."""
        out = {}
        for f in self._paths.blobs_dir.iterdir():
            if len(f.name) == 64:
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue  # evicted or discarded meanwhile
                if stat.S_ISREG(st.st_mode):
                    out["sha256:" + f.name] = st.st_size
        return out

    def usage(self) -> tuple[int, int]:
        """(bytes, blobs) on disk."""
        sizes = self.sizes()
        return sum(sizes.values()), len(sizes)


class ManifestStore:
    """Signed manifests this host has pulled or published, one file per tag."""

    def __init__(self, paths: AgentPaths) -> None:
        self._dir = paths.manifests

    def _file(self, ref: str) -> Path:
        return self._dir / (hashlib.sha256(ref.encode()).hexdigest()[:32] + ".msgpack")

    def save(self, envelope: SignedManifest) -> None:
        manifest = Manifest.from_bytes(envelope.manifest)
        write_atomic(self._file(str(manifest.ref)), envelope.to_bytes())

    def saved_at(self, ref: str) -> float:
        """When this host last pulled or published `ref` (0 if never)."""
        try:
            return self._file(ref).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def all(self) -> list[tuple[SignedManifest, Manifest]]:
        out = []
        for f in sorted(self._dir.glob("*.msgpack")):
            try:
                env = SignedManifest.from_bytes(f.read_bytes())
                out.append((env, env.verify(None)))
            except Exception as exc:  # a damaged record must not stop the agent
                log.warning("ignoring unreadable manifest record %s: %s", escape_path(f.name), exc)
        return out
