"""Bencoding and the checks on a layer's torrent, in pure Python (no libtorrent).

The tracker and the agent both need them; only swarm/engine, which creates
and serves torrents, uses libtorrent. Bencoding is `fastbencode` (the
Breezy/Dulwich project's, Apache-2.0): Rust-accelerated with a pure-Python
fallback, typed, and a strict decoder (sorted keys, no leading zeros, no
trailing bytes), which is what a checker wants.

Swarm torrents are v2-only (BEP 52) with one file: the info-hash is the
sha256 of the bencoded info dict, and they announce its first 20 bytes
(`Layer.announce_hash`). A layer torrent is named after the id of its image's
host group (swarm/core/groups.py), which is what libtorrent matches against a
peer certificate's SAN names; the blob stays on disk under its digest (the
agent renames the torrent's one file when it adds it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fastbencode

from swarm.core.errors import InvalidInput, LegacyTorrent
from swarm.core.groups import is_group_id

if TYPE_CHECKING:
    from swarm.core.manifest import Manifest

#: BEP 52: merkle leaves are 16 KiB blocks; a piece is a power of two of them
BLOCK = 16 * 1024
HASH = 32


def bencode(obj: Any) -> bytes:
    """Bencode dicts (bytes keys), lists, ints and bytes."""
    data: bytes = fastbencode.bencode(obj)
    return data


def bdecode(data: bytes) -> Any:
    try:
        return fastbencode.bdecode(data)
    except (ValueError, TypeError, IndexError) as exc:
        raise InvalidInput(f"not valid bencoding: {exc}") from exc


@dataclass(frozen=True)
class TorrentFacts:
    info_hash: bytes  # 32-byte v2 info-hash
    name: str  # the torrent's (and its one file's) name: the group id of its image
    size: int
    private: bool
    root_cert: str  # PEM of the CA in the info dict ("" if none)


def info_hash_v2(info: dict[bytes, Any]) -> bytes:
    return hashlib.sha256(bencode(info)).digest()


def inspect_torrent(metainfo: bytes) -> TorrentFacts:
    """The facts of a v2-only, single-file torrent; InvalidInput for anything else."""
    top = bdecode(metainfo)
    info = top.get(b"info") if isinstance(top, dict) else None
    if not isinstance(info, dict):
        raise InvalidInput("not a valid torrent: no info dict")
    if bencode(top) != metainfo:  # the info-hash below must be that of the bytes as sent
        raise InvalidInput("not a valid torrent: not in canonical bencoding")
    if info.get(b"meta version") != 2 or b"pieces" in info:
        raise InvalidInput("torrent must be v2-only")
    tree = info.get(b"file tree")
    if not isinstance(tree, dict) or len(tree) != 1:
        raise InvalidInput("torrent must hold exactly one file")
    ((file_name, node),) = tree.items()
    entry = node.get(b"") if isinstance(node, dict) and len(node) == 1 else None
    if not isinstance(entry, dict):
        raise InvalidInput("torrent must hold exactly one file")
    name = _text(info.get(b"name"), "name")
    if file_name != info[b"name"]:
        raise InvalidInput("not a valid torrent: its file is not named as the torrent")
    size = _positive_int(entry.get(b"length"), "file length")
    piece = _positive_int(info.get(b"piece length"), "piece length")
    if piece < BLOCK or piece & (piece - 1):
        raise InvalidInput("not a valid torrent: invalid piece length")
    root = entry.get(b"pieces root")
    if not isinstance(root, bytes) or len(root) != HASH:
        raise InvalidInput("not a valid torrent: invalid pieces root")
    if size > piece:
        layers = top.get(b"piece layers")
        layer = layers.get(root) if isinstance(layers, dict) else None
        if not isinstance(layer, bytes) or len(layer) != HASH * -(-size // piece) or _layer_root(layer, piece) != root:
            raise InvalidInput("not a valid torrent: its piece layer does not match its pieces root")
    private = info.get(b"private")
    cert = info.get(b"ssl-cert", b"")
    return TorrentFacts(
        info_hash=info_hash_v2(info),
        name=name,
        size=size,
        private=private == 1,
        root_cert=_text(cert, "ssl-cert") if cert else "",
    )


def check_layer_torrent(
    metainfo: bytes, info_hash: bytes, blob_size: int, ca_pem: str, group_id: str | None = None
) -> TorrentFacts:
    """Refuse a torrent that is not exactly the one a manifest layer claims: named after `group_id`
    (None: after some group id, for agents, which do not know the tracker's mapping)."""
    facts = inspect_torrent(metainfo)
    if facts.info_hash != info_hash:
        raise InvalidInput("layer info_hash does not match its torrent")
    if facts.size != blob_size:
        raise InvalidInput("layer torrent does not describe its blob")
    if not is_group_id(facts.name):
        raise LegacyTorrent(
            f"layer torrent named {facts.name[:12]!r}..., not after a host group: published before host groups, "
            "the image must be seeded again (`swarm seed`)"
        )
    if group_id is not None and facts.name != group_id:
        raise InvalidInput(f"layer torrent named {facts.name!r}, not after its repository's group ({group_id})")
    if not facts.private:
        raise InvalidInput("layer torrent is not private")
    if _normalise_pem(facts.root_cert) != _normalise_pem(ca_pem):
        raise InvalidInput("layer torrent is not bound to this swarm's CA")
    return facts


def manifest_group_id(manifest: Manifest) -> str | None:
    """The group id every layer torrent of `manifest` is named after; None for a manifest
    published before host groups (torrents named by digest). InvalidInput if they disagree."""
    names = {inspect_torrent(layer.torrent).name for layer in manifest.layers}
    if not all(is_group_id(n) for n in names):
        return None
    if len(names) != 1:
        raise InvalidInput(f"the layer torrents of {manifest.ref} are named after {len(names)} groups, not one")
    return names.pop()


def _layer_root(layer: bytes, piece: int) -> bytes:
    """The merkle root over a piece layer, padded to a power of two with the hashes of all-zero pieces."""
    pad = bytes(HASH)
    for _ in range((piece // BLOCK).bit_length() - 1):
        pad = hashlib.sha256(pad + pad).digest()
    level = [layer[i : i + HASH] for i in range(0, len(layer), HASH)]
    while len(level) > 1:
        if len(level) % 2:
            level.append(pad)
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
        pad = hashlib.sha256(pad + pad).digest()
    return level[0]


def _positive_int(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise InvalidInput(f"not a valid torrent: invalid {what}")
    return v


def _text(v: object, what: str) -> str:
    if not isinstance(v, bytes) or not v:
        raise InvalidInput(f"not a valid torrent: invalid {what}")
    try:
        return v.decode()
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"not a valid torrent: {what} is not UTF-8") from exc


def _normalise_pem(pem: str) -> str:
    return "".join(pem.split())
