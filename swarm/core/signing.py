"""Ed25519 builder keys, and the signed manifest envelope.

A public key is written `ed25519:<base64 of the 32 raw bytes>`; its key id is
the first 16 hex digits of the sha256 of those bytes. The signature covers a
domain prefix plus the manifest's canonical bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from swarm.core import wire
from swarm.core.errors import InvalidInput, UntrustedManifest, UsageError
from swarm.core.files import write_atomic
from swarm.core.manifest import Manifest

_DOMAIN = b"swarm-manifest-v1\x00"
_PREFIX = "ed25519:"


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def format_public_key(public_raw: bytes) -> str:
    return _PREFIX + base64.b64encode(public_raw).decode()


def parse_public_key(text: str) -> bytes:
    text = text.strip()
    if not text.startswith(_PREFIX):
        raise UsageError(f"invalid public key {text[:20]!r}: expected ed25519:<base64>")
    try:
        raw = base64.b64decode(text[len(_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UsageError("invalid public key: bad base64") from exc
    if len(raw) != 32:
        raise UsageError("invalid public key: an Ed25519 key has 32 bytes")
    return raw


class SigningKey:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id(self.public_raw)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read signing key {path}: {exc.strerror}") from exc
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{path} is not a PEM private key") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise UsageError(f"{path} is not an Ed25519 key")
        return cls(private)

    def save(self, path: Path) -> None:
        """Write the key (mode 0600); never over an existing file."""
        pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            write_atomic(path, pem, 0o600, exclusive=True)
        except FileExistsError as exc:
            raise UsageError(f"{path} already exists: refusing to overwrite a key") from exc
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from exc

    @property
    def public_text(self) -> str:
        return format_public_key(self.public_raw)

    def sign(self, manifest: Manifest) -> SignedManifest:
        if manifest.key_id != self.key_id:
            raise InvalidInput("manifest key_id does not match the signing key")
        body = manifest.to_bytes()
        return SignedManifest(body, self._private.sign(_DOMAIN + body), self.public_raw)


@dataclass(frozen=True)
class SignedManifest:
    """The envelope published to the tracker and fetched by hosts."""

    manifest: bytes
    signature: bytes
    public_key: bytes

    def to_bytes(self) -> bytes:
        return wire.pack({"manifest": self.manifest, "signature": self.signature, "key": self.public_key})

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedManifest:
        m = wire.unpack_map(data)
        body, sig, key = m.get("manifest"), m.get("signature"), m.get("key")
        if not isinstance(body, bytes) or not isinstance(sig, bytes) or not isinstance(key, bytes):
            raise InvalidInput("signed manifest needs manifest, signature and key as bytes")
        if len(key) != 32 or len(sig) != 64:
            raise InvalidInput("signed manifest has a malformed key or signature")
        return cls(body, sig, key)

    def verify(self, trusted: Iterable[bytes] | None) -> Manifest:
        """Check the signature; with `trusted`, the key must be one of them.

        Returns the decoded manifest only when everything holds.
        """
        if trusted is not None and self.public_key not in set(trusted):
            raise UntrustedManifest(f"manifest signed by untrusted key {format_public_key(self.public_key)}")
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(self.signature, _DOMAIN + self.manifest)
        except InvalidSignature as exc:
            raise UntrustedManifest("manifest signature does not verify") from exc
        manifest = Manifest.from_bytes(self.manifest)
        if manifest.key_id != key_id(self.public_key):
            raise UntrustedManifest("manifest key_id does not match its signing key")
        return manifest
