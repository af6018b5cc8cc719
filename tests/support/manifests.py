"""Test data for the tracker (its tests, others' and bench/): real torrents and signed manifests on the spot."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

from swarm.core import groups
from swarm.core.digest import sha256_digest
from swarm.core.manifest import Layer, Manifest
from swarm.core.signing import SignedManifest, SigningKey
from swarm.core.torrent import inspect_torrent
from swarm.engine.metainfo import make_torrent


def make_layer(workdir: Path, ca_pem: str, payload: bytes, group: str = groups.DEFAULT) -> Layer:
    """A layer whose blob is `payload` itself (compression "none"), written to workdir/<sha256 hex>;
    its torrent is named after `group`'s id (add it with `file_name=` the blob's hex digest)."""
    blob_hex = hashlib.sha256(payload).hexdigest()
    path = workdir / blob_hex
    path.write_bytes(payload)
    torrent = make_torrent(path, ca_pem, groups.group_id(group))
    return Layer(diff_id=sha256_digest(payload), size=len(payload), blob="sha256:" + blob_hex,
                 blob_size=len(payload), compression="none", info_hash=inspect_torrent(torrent).info_hash,
                 torrent=torrent)


_last_created_ms = 0


def created_now_ms() -> int:
    """Unix milliseconds, strictly growing within this process (two manifests of a tag never tie)."""
    global _last_created_ms
    _last_created_ms = max(time.time_ns() // 1_000_000, _last_created_ms + 1)
    return _last_created_ms


def make_signed_manifest(workdir: Path, ca_pem: str, key: SigningKey, repository: str = "demo/app",
                         tag: str = "latest", payloads: Sequence[bytes] = (b"layer one\n",),
                         publisher: str = "b1", created_ms: int | None = None,
                         group: str = groups.DEFAULT) -> SignedManifest:
    """Signed by `key` for builder token `publisher` (the tracker takes it only from that token); its
    torrents named after `group`, which must be the repository's group on the tracker it goes to."""
    layers = tuple(make_layer(workdir, ca_pem, p, group) for p in payloads)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [la.diff_id for la in layers]}},
                        sort_keys=True).encode()
    manifest = Manifest(repository=repository, tag=tag, config=config, layers=layers, key_id=key.key_id,
                        created_ms=created_now_ms() if created_ms is None else created_ms, publisher=publisher)
    return key.sign(manifest)


def register_announce_hash(db_path: Path, announce_hash: bytes, ref: str = "interop/test:v1") -> None:
    """TEST-ONLY: make the SQLite tracker at `db_path` accept announces for an arbitrary 20-byte hash.

    Real swarm torrents are v2-only SSL torrents, published in a signed manifest.
    Interop tests with BitTorrent clients that only speak v1 (aria2c, transmission)
    need a v1 info-hash the tracker accepts: this writes a placeholder manifest row
    (an empty envelope no agent could verify) and the hash straight into the
    database the test owns. No tracker code path does this.
    """
    import sqlite3

    if len(announce_hash) != 20:
        raise ValueError("an announce hash has 20 bytes")
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM manifests").fetchone()[0]
            conn.execute("INSERT OR REPLACE INTO manifests (ref, envelope, image_id, seq, published, publisher) "
                         "VALUES (?, x'', 'sha256:interop', ?, ?, 'test')", (ref, seq, int(time.time())))
            conn.execute("INSERT OR IGNORE INTO torrents (announce_hash, blob, ref) VALUES (?, 'sha256:interop', ?)",
                         (announce_hash, ref))
    finally:
        conn.close()
