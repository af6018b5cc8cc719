"""The root-signed key document: which builder keys hosts trust, for which repositories, until when.

TUF's root -> targets delegation, kept small. An operator keeps one Ed25519
root key offline; hosts pin its public half (`swarm agent --trust-root`). The
root signs a document listing builder keys, each with the repository
patterns it may sign for and an expiry, plus a version that only grows. The
tracker serves the newest document (`GET /v1/keys`); hosts verify it against
the root, never accept a lower version than one they saw, and so follow a
rotation or revocation of builder keys without a restart. The tracker cannot
forge a document; the worst it can do is withhold a newer one, which the
per-key expiry bounds.

Spec file for `swarm keys sign` (JSON):
  {"version": 2, "keys": [{"key": "ed25519:...", "repositories": ["myapp/*", "base:*"],
                           "expires": "2027-06-30"}]}
`expires` is an ISO 8601 date or time (UTC unless it says otherwise) or unix seconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from swarm.core import wire
from swarm.core.errors import InvalidInput, UntrustedManifest, UsageError
from swarm.core.manifest import MAX_INT
from swarm.core.refs import ImageRef, matches, validate_pattern
from swarm.core.signing import SigningKey, format_public_key, parse_public_key, signature_holds

DOMAIN = b"swarm-keys-v1\x00"
FORMAT = 1
#: keys one document may list
MAX_KEYS = 1000
MAX_PATTERNS = 100


@dataclass(frozen=True)
class DelegatedKey:
    public_key: bytes  # raw Ed25519
    repositories: tuple[str, ...]  # patterns as for --watch (`myapp/*`, `base:*`)
    expires: int  # unix seconds

    def allows(self, ref: ImageRef, now: float) -> bool:
        return now < self.expires and any(matches(p, ref) for p in self.repositories)

    def to_map(self) -> dict[str, Any]:
        return {"key": self.public_key, "repositories": list(self.repositories), "expires": self.expires}

    @classmethod
    def from_map(cls, m: object) -> DelegatedKey:
        if not isinstance(m, dict) or set(m) != {"key", "repositories", "expires"}:
            raise InvalidInput("a key entry needs exactly key, repositories and expires")
        key, repos, expires = m["key"], m["repositories"], m["expires"]
        if not isinstance(key, bytes) or len(key) != 32:
            raise InvalidInput("a key entry's key must be 32 raw bytes")
        if (
            not isinstance(repos, list)
            or not 0 < len(repos) <= MAX_PATTERNS
            or not all(isinstance(p, str) for p in repos)
        ):
            raise InvalidInput(f"a key entry needs 1 to {MAX_PATTERNS} repository patterns")
        return cls(key, tuple(_pattern(p) for p in repos), _int(expires, "expires"))


@dataclass(frozen=True)
class KeyDocument:
    version: int
    keys: tuple[DelegatedKey, ...]

    def to_bytes(self) -> bytes:
        return wire.pack_canonical({"format": FORMAT, "version": self.version, "keys": [k.to_map() for k in self.keys]})

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyDocument:
        m = wire.unpack(data)
        if not isinstance(m, dict) or set(m) != {"format", "version", "keys"}:
            raise InvalidInput("a key document needs exactly format, version and keys")
        if m["format"] != FORMAT:
            raise InvalidInput(f"unsupported key document format {m['format']!r}")
        keys = m["keys"]
        if not isinstance(keys, list) or len(keys) > MAX_KEYS:
            raise InvalidInput(f"a key document lists at most {MAX_KEYS} keys")
        doc = cls(_int(m["version"], "version"), tuple(DelegatedKey.from_map(k) for k in keys))
        if doc.version < 1:
            raise InvalidInput("a key document's version starts at 1")
        if doc.to_bytes() != data:
            raise InvalidInput("key document is not in canonical form")
        return doc

    @classmethod
    def from_spec(cls, spec: object) -> KeyDocument:
        """From the JSON an operator writes (see the module's docstring)."""
        if not isinstance(spec, dict) or set(spec) != {"version", "keys"} or not isinstance(spec["keys"], list):
            raise UsageError('the key spec needs exactly {"version": N, "keys": [...]}')
        keys = []
        for entry in spec["keys"]:
            if not isinstance(entry, dict) or set(entry) != {"key", "repositories", "expires"}:
                raise UsageError("each key in the spec needs exactly key, repositories and expires")
            repos = entry["repositories"]
            if not isinstance(repos, list) or not repos or not all(isinstance(p, str) for p in repos):
                raise UsageError("a key's repositories must be a non-empty list of patterns")
            keys.append(
                DelegatedKey(
                    parse_public_key(str(entry["key"])),
                    tuple(validate_pattern(p) for p in repos),
                    parse_expiry(entry["expires"]),
                )
            )
        version = spec["version"]
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_INT:
            raise UsageError("the key spec's version must be a positive integer")
        return cls(version, tuple(keys))

    def describe(self) -> list[str]:
        return [
            f"{format_public_key(k.public_key)} {','.join(k.repositories)} until "
            f"{dt.datetime.fromtimestamp(k.expires, dt.UTC):%Y-%m-%d %H:%M:%SZ}"
            for k in self.keys
        ]


@dataclass(frozen=True)
class SignedKeyDocument:
    """What the tracker stores and serves: the document's bytes, the root's signature and public key."""

    document: bytes
    signature: bytes
    root: bytes

    @classmethod
    def sign(cls, document: KeyDocument, root: SigningKey) -> SignedKeyDocument:
        body = document.to_bytes()
        return cls(body, root.sign_bytes(DOMAIN, body), root.public_raw)

    def to_bytes(self) -> bytes:
        return wire.pack({"document": self.document, "signature": self.signature, "root": self.root})

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedKeyDocument:
        m = wire.unpack_map(data)
        body, sig, root = m.get("document"), m.get("signature"), m.get("root")
        if (
            set(m) != {"document", "signature", "root"}
            or not isinstance(body, bytes)
            or not isinstance(sig, bytes)
            or not isinstance(root, bytes)
            or len(sig) != 64
            or len(root) != 32
        ):
            raise InvalidInput("a signed key document needs document, signature (64 bytes) and root (32 bytes)")
        return cls(body, sig, root)

    def verify(self, root: bytes | None) -> KeyDocument:
        """The document, if signed by `root` (None: by the key it names, for the tracker's sanity check)."""
        if root is not None and self.root != root:
            raise UntrustedManifest(f"key document signed by {format_public_key(self.root)}, not the pinned root")
        if not signature_holds(self.root, self.signature, DOMAIN, self.document):
            raise UntrustedManifest("key document signature does not verify")
        return KeyDocument.from_bytes(self.document)


class TrustPolicy:
    """Which builder key may sign which image: keys pinned with --trust sign anything; keys of the
    root-signed document sign what their patterns match, until they expire."""

    def __init__(self, pinned: Iterable[bytes], document: KeyDocument | None = None) -> None:
        self.pinned = frozenset(pinned)
        self.document = document

    def check(self, public_key: bytes, ref: ImageRef, now: float) -> None:
        if public_key in self.pinned:
            return
        listed = [k for k in self.document.keys if k.public_key == public_key] if self.document else []
        if any(k.allows(ref, now) for k in listed):
            return
        name = format_public_key(public_key)
        if not listed:
            raise UntrustedManifest(f"manifest for {ref} signed by untrusted key {name}")
        if all(now >= k.expires for k in listed):
            raise UntrustedManifest(f"manifest for {ref} signed by {name}, whose delegation expired")
        raise UntrustedManifest(f"manifest for {ref} signed by {name}, which may not sign that repository")


def parse_expiry(value: object) -> int:
    """Unix seconds from an int or an ISO 8601 date/time (UTC unless given)."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise UsageError(f"invalid expiry {value[:40]!r}: expected an ISO 8601 date or unix seconds") from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = int(when.timestamp())
    else:
        raise UsageError("an expiry is an ISO 8601 date or unix seconds")
    if not 0 < seconds <= MAX_INT:
        raise UsageError("an expiry must be after 1970")
    return seconds


def _pattern(p: str) -> str:
    try:
        return validate_pattern(p)
    except UsageError as exc:
        raise InvalidInput(exc.message) from exc


def _int(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_INT:
        raise InvalidInput(f"{what} must be a non-negative 64-bit integer")
    return v
