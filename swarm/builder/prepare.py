"""`swarm seed`, first half: image → blobs → torrents → an unsigned manifest.

Runs inside the builder's agent (it owns the blob store and knows the CA);
the signing key stays with the `swarm seed` command, which signs the
manifest's canonical bytes and hands the envelope back for publishing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarm.core.digest import digest_hex
from swarm.core.manifest import Layer, Manifest
from swarm.core.refs import ImageRef
from swarm.core.torrent import inspect_torrent
from swarm.engine.metainfo import make_torrent
from swarm.images.export import ExportedImage, export_image, read_archive

Progress = Callable[[str], None]


def manifest_for(
    exported: ExportedImage,
    ref: ImageRef,
    blobs_dir: Path,
    ca_pem: str,
    key_id: str,
    publisher: str,
    progress: Progress,
) -> Manifest:
    """The unsigned manifest; `publisher` is the name of the builder token that will publish it."""
    torrents: dict[str, tuple[bytes, bytes]] = {}
    layers = []
    for i, x in enumerate(exported.layers, 1):
        if x.blob not in torrents:
            progress(f"{ref}: hashing layer {i}/{len(exported.layers)} into a torrent")
            meta = make_torrent(blobs_dir / digest_hex(x.blob), ca_pem)
            torrents[x.blob] = (inspect_torrent(meta).info_hash, meta)
        info_hash, meta = torrents[x.blob]
        layers.append(
            Layer(
                diff_id=x.diff_id,
                size=x.size,
                blob=x.blob,
                blob_size=x.blob_size,
                compression=x.compression,
                info_hash=info_hash,
                torrent=meta,
            )
        )
    return Manifest(
        repository=ref.repository,
        tag=ref.tag,
        config=exported.config,
        layers=tuple(layers),
        key_id=key_id,
        created_ms=time.time_ns() // 1_000_000,
        publisher=publisher,
    )


def prepare_image(
    api: Any, image: str, blobs_dir: Path, ca_pem: str, key_id: str, publisher: str, progress: Progress
) -> Manifest:
    ref = ImageRef.parse(image)
    progress(f"{ref}: exporting from Docker")
    exported = export_image(api, str(ref), blobs_dir)
    return manifest_for(exported, ref, blobs_dir, ca_pem, key_id, publisher, progress)


def prepare_archive(
    archive: Path, image: str, blobs_dir: Path, ca_pem: str, key_id: str, publisher: str, progress: Progress
) -> Manifest:
    ref = ImageRef.parse(image)
    progress(f"{ref}: reading {archive.name}")
    with open(archive, "rb") as f:
        exported = read_archive(f, blobs_dir)
    return manifest_for(exported, ref, blobs_dir, ca_pem, key_id, publisher, progress)
