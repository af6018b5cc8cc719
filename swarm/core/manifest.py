"""The image manifest: what a builder signs and every host verifies.

One msgpack document per image tag. `Manifest.to_bytes()` is the one function
that produces the canonical bytes that are signed and verified;
`Manifest.from_bytes()` is its strict inverse (unknown or missing fields are
refused, so two different documents never verify as one).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from swarm.core import wire
from swarm.core.digest import validate_digest
from swarm.core.errors import InvalidInput
from swarm.core.refs import ImageRef

FORMAT_VERSION = 1
COMPRESSIONS = ("zstd", "none")


@dataclass(frozen=True)
class Layer:
    diff_id: str  # sha256 of the uncompressed layer tar (what Docker checks)
    size: int  # bytes of the uncompressed layer tar
    blob: str  # sha256 of the transport blob (content address)
    blob_size: int
    compression: str  # how the blob encodes the layer tar
    info_hash: bytes  # 32-byte BitTorrent v2 info-hash of `torrent`
    torrent: bytes  # bencoded metainfo of the blob's private SSL torrent

    def to_map(self) -> dict[str, Any]:
        return {
            "diff_id": self.diff_id,
            "size": self.size,
            "blob": self.blob,
            "blob_size": self.blob_size,
            "compression": self.compression,
            "info_hash": self.info_hash,
            "torrent": self.torrent,
        }

    @classmethod
    def from_map(cls, m: object) -> Layer:
        fields = _exact_map(m, ("diff_id", "size", "blob", "blob_size", "compression", "info_hash", "torrent"), "layer")
        layer = cls(
            diff_id=validate_digest(fields["diff_id"], "layer diff_id"),
            size=_nonneg_int(fields["size"], "layer size"),
            blob=validate_digest(fields["blob"], "layer blob"),
            blob_size=_nonneg_int(fields["blob_size"], "layer blob_size"),
            compression=_str(fields["compression"], "compression"),
            info_hash=_bytes(fields["info_hash"], "info_hash"),
            torrent=_bytes(fields["torrent"], "torrent"),
        )
        if layer.compression not in COMPRESSIONS:
            raise InvalidInput(f"unknown layer compression {layer.compression!r}")
        if len(layer.info_hash) != 32:
            raise InvalidInput("info_hash must be a 32-byte v2 info-hash")
        return layer

    @property
    def announce_hash(self) -> bytes:
        """The 20 bytes a v2-only torrent announces (the v2 hash truncated)."""
        return self.info_hash[:20]


@dataclass(frozen=True)
class Manifest:
    repository: str
    tag: str
    config: bytes  # the image config JSON, byte for byte
    layers: tuple[Layer, ...]
    key_id: str  # which builder key signed it
    created: int  # unix seconds
    version: int = FORMAT_VERSION

    @property
    def ref(self) -> ImageRef:
        return ImageRef(self.repository, self.tag)

    @property
    def image_id(self) -> str:
        """Docker's image ID is the sha256 of the config bytes."""
        return "sha256:" + hashlib.sha256(self.config).hexdigest()

    @property
    def total_blob_size(self) -> int:
        return sum(layer.blob_size for layer in self.layers)

    def to_bytes(self) -> bytes:
        return wire.pack_canonical(
            {
                "version": self.version,
                "repository": self.repository,
                "tag": self.tag,
                "config": self.config,
                "layers": [layer.to_map() for layer in self.layers],
                "key_id": self.key_id,
                "created": self.created,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        fields = ("version", "repository", "tag", "config", "layers", "key_id", "created")
        m = _exact_map(wire.unpack(data), fields, "manifest")
        if m["version"] != FORMAT_VERSION:
            raise InvalidInput(f"unsupported manifest version {m['version']!r}")
        layers = m["layers"]
        if not isinstance(layers, list) or not layers:
            raise InvalidInput("manifest has no layers")
        manifest = cls(
            repository=_str(m["repository"], "repository"),
            tag=_str(m["tag"], "tag"),
            config=_bytes(m["config"], "config"),
            layers=tuple(Layer.from_map(x) for x in layers),
            key_id=_str(m["key_id"], "key_id"),
            created=_nonneg_int(m["created"], "created"),
        )
        try:
            ImageRef.parse(str(manifest.ref))
        except Exception as exc:
            raise InvalidInput(f"manifest names an invalid image {manifest.ref}") from exc
        if manifest.to_bytes() != data:
            raise InvalidInput("manifest is not in canonical form")
        return manifest


def _exact_map(m: object, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise InvalidInput(f"{what} is not a map")
    if set(m) != set(keys):
        missing = sorted(set(keys) - set(m))
        extra = sorted(set(m) - set(keys))
        raise InvalidInput(f"{what} fields wrong (missing {missing}, unexpected {extra})")
    return m


def _str(v: object, what: str) -> str:
    if not isinstance(v, str) or not v:
        raise InvalidInput(f"{what} must be a non-empty string")
    return v


def _bytes(v: object, what: str) -> bytes:
    if not isinstance(v, bytes) or not v:
        raise InvalidInput(f"{what} must be non-empty bytes")
    return v


def _nonneg_int(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise InvalidInput(f"{what} must be a non-negative integer")
    return v
