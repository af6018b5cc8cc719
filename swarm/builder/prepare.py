"""`swarm seed`, first half: image → blobs → torrents → an unsigned manifest.

Runs inside the builder's agent (it owns the blob store and knows the CA);
the signing key stays with the `swarm seed` command, which signs the
manifest's canonical bytes and hands the envelope back for publishing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

from swarm.core.digest import digest_hex
from swarm.core.manifest import Layer, Manifest
from swarm.core.refs import ImageRef
from swarm.core.torrent import inspect_torrent
from swarm.engine.metainfo import make_torrent
from swarm.images.export import ExportedImage, export_image, read_archive

Progress = Callable[[str], None]


class TorrentMaker:
    """Hashes blobs into torrents on a thread of its own, while the next layer is exported."""

    def __init__(self, ca_pem: str, name: str) -> None:
        self._ca = ca_pem
        self._name = name  # the image's group id
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="torrent")
        self._made: dict[Path, Future[bytes]] = {}

    def submit(self, blob: Path) -> None:
        if blob not in self._made:
            self._made[blob] = self._pool.submit(make_torrent, blob, self._ca, self._name)

    def metainfo(self, blob: Path) -> bytes:
        self.submit(blob)
        return self._made[blob].result()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def manifest_for(
    exported: ExportedImage,
    ref: ImageRef,
    blobs_dir: Path,
    ca_pem: str,
    key_id: str,
    publisher: str,
    progress: Progress,
    group_id: str,
    maker: TorrentMaker | None = None,
) -> Manifest:
    """The unsigned manifest; `publisher` is the name of the builder token that will publish it,
    `group_id` the id of the repository's host group, which names every layer torrent."""
    if maker is None:
        with TorrentMaker(ca_pem, group_id) as own:
            return manifest_for(exported, ref, blobs_dir, ca_pem, key_id, publisher, progress, group_id, own)
    torrents: dict[str, tuple[bytes, bytes]] = {}
    layers = []
    for i, x in enumerate(exported.layers, 1):
        if x.blob not in torrents:
            progress(f"{ref}: hashing layer {i}/{len(exported.layers)} into a torrent")
            meta = maker.metainfo(blobs_dir / digest_hex(x.blob))
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
    api: Any,
    image: str,
    blobs_dir: Path,
    ca_pem: str,
    key_id: str,
    publisher: str,
    progress: Progress,
    group_id: str,
) -> Manifest:
    ref = ImageRef.parse(image)
    progress(f"{ref}: exporting from Docker")
    with TorrentMaker(ca_pem, group_id) as maker:
        exported = export_image(api, str(ref), blobs_dir, on_blob=maker.submit)
        return manifest_for(exported, ref, blobs_dir, ca_pem, key_id, publisher, progress, group_id, maker)


def prepare_archive(
    archive: Path,
    image: str,
    blobs_dir: Path,
    ca_pem: str,
    key_id: str,
    publisher: str,
    progress: Progress,
    group_id: str,
) -> Manifest:
    ref = ImageRef.parse(image)
    progress(f"{ref}: reading {archive.name}")
    with TorrentMaker(ca_pem, group_id) as maker:
        with open(archive, "rb") as f:
            exported = read_archive(f, blobs_dir, image=str(ref), on_blob=maker.submit)  # the named one of several
        return manifest_for(exported, ref, blobs_dir, ca_pem, key_id, publisher, progress, group_id, maker)
