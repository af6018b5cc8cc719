"""`docker save` stream -> zstd blobs + the image config, without the tarball on disk.

The save stream is read once, in order, with `tarfile` in stream mode. Every
layer file is piped through: (gunzip / unzstd if it is compressed) -> sha256
and byte count of the layer tar (its diff_id and size) -> zstd -> sha256 and
byte count of the blob -> a temp file in `blobs_dir`, renamed to
`blobs_dir/<blob sha256 hex>`. Two threads: the reader (tar stream, diff_id)
hands 1 MiB chunks through a short queue to a blob writer (zstd, blob sha256,
write); zstd and hashlib release the GIL, so both stages run at once.
`on_blob(path)` is told each blob as soon as it is written, so the caller can
hash it into a torrent while the next layer is exported. Small files (JSON) are kept in memory. Which
files are layers, and in which order, is only known at the end (manifest.json
or index.json come after the layers in the stream), so every layer-looking
member is processed when it passes and the layout is resolved afterwards.

Layouts:
  legacy (engine 20.10)  manifest.json -> Config, RepoTags, Layers "<id>/layer.tar";
                         a layer.tar may be a symlink or hardlink to another one.
  OCI (engines >= 25,    index.json -> manifest (possibly through a nested index)
  skopeo oci-archive)    -> config and layer blobs under blobs/sha256/; layers are
                         plain tar, gzip or zstd (detected by magic bytes).
Engines >= 25 write both index.json and a compatible manifest.json; the
manifest.json is used when present.

Compression: zstd level 3, single-threaded (the parallelism is the pipeline
above): the same layer gives the same blob on every builder. zstd's own
workers (`threads=-1`) cost 1.5-2x the CPU on a 2-core builder under a fixed
CPU share and compress worse (jobs do not share a window);
bench/results/fleet-findings.md.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import posixpath
import queue
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import docker.errors
import zstandard

from swarm.core.errors import DigestMismatch, ImageNotFound, InvalidInput
from swarm.images.docker_client import docker_errors, host_of

ZSTD_LEVEL = 3
CHUNK = 1024 * 1024
#: chunks in flight between the reader and the blob writer
QUEUE_CHUNKS = 8
#: members up to this size (other than */layer.tar) are kept in memory
SMALL = 4 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


@dataclass(frozen=True)
class ExportedLayer:
    diff_id: str  # sha256:<hex> of the uncompressed layer tar
    size: int  # bytes of the uncompressed layer tar
    blob: str  # sha256:<hex> of the zstd blob (its content address)
    blob_size: int
    compression: str  # always "zstd" here
    path: Path  # blobs_dir / <blob hex>


@dataclass(frozen=True)
class ExportedImage:
    config: bytes  # the image config JSON, byte for byte
    repo_tags: list[str]
    layers: list[ExportedLayer]  # in the config's rootfs.diff_ids order

    @property
    def image_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()


OnBlob = Callable[[Path], None]


def export_image(
    docker_client_api: Any,
    image_name: str,
    blobs_dir: Path,
    on_blob: OnBlob | None = None,
) -> ExportedImage:
    """`docker save image_name`, streamed into blobs in `blobs_dir`."""
    api = docker_client_api
    with docker_errors(api, f"docker save {image_name}"):
        try:
            chunks = api.get_image(image_name, chunk_size=CHUNK)
            return read_archive(chunks, blobs_dir, image=image_name, on_blob=on_blob)
        except docker.errors.NotFound as exc:
            raise ImageNotFound(f"no image {image_name} in Docker at {host_of(api)}") from exc


def read_archive(
    chunks_or_fileobj: Iterable[bytes] | IO[bytes],
    blobs_dir: Path,
    image: str | None = None,
    on_blob: OnBlob | None = None,
) -> ExportedImage:
    """Read a `docker save` / OCI image archive (plain or gzip'd tar) from a file
    object or an iterator of byte chunks. `image` picks the image when the
    archive holds several (matched against RepoTags / ref annotations).
    `on_blob` is called with each blob's path once written (from this thread;
    also for layer-looking files the image turns out not to use)."""
    blobs_dir.mkdir(parents=True, exist_ok=True)
    source: IO[bytes]
    if hasattr(chunks_or_fileobj, "read"):
        source = chunks_or_fileobj  # type: ignore[assignment]
    else:
        source = io.BufferedReader(_ChunkReader(iter(chunks_or_fileobj)), CHUNK)
    archive = _Archive(blobs_dir, on_blob)
    try:
        archive.scan(source)
        return archive.resolve(image)
    except (
        tarfile.TarError,
        EOFError,
        zlib.error,
        zstandard.ZstdError,
        gzip.BadGzipFile,
    ) as exc:
        raise InvalidInput(f"not a readable image archive: {exc}") from exc


class _ChunkReader(io.RawIOBase):
    """A readable raw stream over an iterator of bytes chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _HashingReader(io.RawIOBase):
    """Reads `head` then `raw`, hashing and counting everything read."""

    def __init__(self, head: bytes, raw: IO[bytes]) -> None:
        self._head = head
        self._raw = raw
        self.sha = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            data, self._head = self._head[: len(b)], self._head[len(b) :]
        else:
            data = self._raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.sha.update(data)
        self.count += n
        return n


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes | None: ...


@dataclass(frozen=True)
class _Processed:
    raw_digest: str  # sha256 of the member as stored in the archive
    layer: ExportedLayer


def _process_layer(member: IO[bytes], blobs_dir: Path, known_size: int | None) -> _Processed:
    head = member.read(4)
    raw = _HashingReader(head, member)
    tar_stream: _Readable
    if head.startswith(GZIP_MAGIC):
        tar_stream = gzip.GzipFile(fileobj=io.BufferedReader(raw, CHUNK), mode="rb")
        known_size = None
    elif head.startswith(ZSTD_MAGIC):
        tar_stream = zstandard.ZstdDecompressor().stream_reader(io.BufferedReader(raw, CHUNK), read_across_frames=True)
        known_size = None
    else:
        tar_stream = raw

    diff = hashlib.sha256()
    size = 0
    writer = _BlobWriter(blobs_dir, known_size)
    try:
        while chunk := tar_stream.read(CHUNK):
            diff.update(chunk)
            size += len(chunk)
            writer.put(chunk)
        blob_hex, blob_size, final = writer.finish()
    finally:
        writer.abort()
    # drain whatever the decompressor did not need (trailing garbage counts in the raw digest)
    while raw.read(CHUNK):
        pass
    return _Processed(
        raw_digest="sha256:" + raw.sha.hexdigest(),
        layer=ExportedLayer(
            diff_id="sha256:" + diff.hexdigest(),
            size=size,
            blob="sha256:" + blob_hex,
            blob_size=blob_size,
            compression="zstd",
            path=final,
        ),
    )


class _BlobWriter:
    """zstd, sha256 and the write of one blob, on a thread of its own fed by `put`."""

    def __init__(self, blobs_dir: Path, known_size: int | None) -> None:
        self._dir = blobs_dir
        self._cobj = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj(
            size=known_size if known_size is not None else -1
        )
        fd, tmp_name = tempfile.mkstemp(dir=blobs_dir, prefix=".export-", suffix=".tmp")
        self._tmp = Path(tmp_name)
        self._out = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self._size = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUE_CHUNKS)
        self._failed: BaseException | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blob-writer", daemon=True)
        self._thread.start()

    def put(self, chunk: bytes | None) -> None:
        """Queue a chunk (None: the end); raises what made the writer fail."""
        while not self._stopped.is_set():
            try:
                self._queue.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue
        self._raise()

    def finish(self) -> tuple[str, int, Path]:
        """Flush and close the blob; returns (sha256 hex, size, its path in the blob store)."""
        self.put(None)
        self._thread.join()
        self._raise()
        final = self._dir / self._sha.hexdigest()
        try:
            os.link(self._tmp, final)  # atomic, and never replaces an existing blob
        except FileExistsError:
            pass
        return self._sha.hexdigest(), self._size, final

    def abort(self) -> None:
        """Stop the thread (if still running) and remove the temp file: always called."""
        self._stopped.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()  # unblock a full queue, then tell it to stop
            except queue.Empty:
                pass
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(0.1)
        self._out.close()
        self._tmp.unlink(missing_ok=True)

    def _raise(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _run(self) -> None:
        try:
            while (chunk := self._queue.get()) is not None and not self._stopped.is_set():
                self._emit(self._cobj.compress(chunk))
            if chunk is None and not self._stopped.is_set():
                self._emit(self._cobj.flush())
                self._out.close()
        except BaseException as exc:  # handed to the reader thread by put/finish
            self._failed = exc
        finally:
            self._stopped.set()

    def _emit(self, data: bytes) -> None:
        if data:
            self._sha.update(data)
            self._size += len(data)
            self._out.write(data)


def _norm(name: str) -> str:
    name = posixpath.normpath(name.lstrip("/"))
    return "" if name == "." else name


class _Archive:
    def __init__(self, blobs_dir: Path, on_blob: OnBlob | None = None) -> None:
        self.blobs_dir = blobs_dir
        self.on_blob = on_blob
        self.small: dict[str, bytes] = {}
        self.layers: dict[str, _Processed] = {}
        self.links: dict[str, str] = {}

    def scan(self, source: IO[bytes]) -> None:
        with tarfile.open(fileobj=source, mode="r|*") as tar:
            for member in tar:
                name = _norm(member.name)
                if member.issym():
                    self.links[name] = _norm(posixpath.join(posixpath.dirname(name), member.linkname))
                elif member.islnk():
                    self.links[name] = _norm(member.linkname)
                elif member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    if posixpath.basename(name) == "layer.tar" or member.size > SMALL:
                        self.layers[name] = _process_layer(f, self.blobs_dir, member.size)
                        if self.on_blob is not None:
                            self.on_blob(self.layers[name].layer.path)
                    else:
                        self.small[name] = f.read()

    # --- resolving ---------------------------------------------------------

    def _follow(self, path: str) -> str:
        seen = set()
        path = _norm(path)
        while path in self.links:
            if path in seen:
                raise InvalidInput(f"image archive: link loop at {path}")
            seen.add(path)
            path = self.links[path]
        return path

    def _file(self, path: str, what: str) -> bytes:
        real = self._follow(path)
        if real not in self.small:
            raise InvalidInput(f"image archive lacks {what} {path}")
        return self.small[real]

    def _layer(self, path: str) -> ExportedLayer:
        real = self._follow(path)
        if real not in self.layers:
            if real not in self.small:
                raise InvalidInput(f"image archive lacks layer {path}")
            self.layers[real] = _process_layer(io.BytesIO(self.small[real]), self.blobs_dir, len(self.small[real]))
        processed = self.layers[real]
        _check_blob_name(real, processed.raw_digest)
        return processed.layer

    def _json(self, path: str, what: str) -> Any:
        data = self._file(path, what)
        _check_blob_name(self._follow(path), "sha256:" + hashlib.sha256(data).hexdigest())
        try:
            return json.loads(data)
        except ValueError as exc:
            raise InvalidInput(f"image archive: {what} {path} is not JSON") from exc

    def resolve(self, image: str | None) -> ExportedImage:
        if "manifest.json" in self.small:
            config_path, repo_tags, layer_paths = self._legacy(image)
        elif "index.json" in self.small:
            config_path, repo_tags, layer_paths = self._oci(image)
        else:
            raise InvalidInput("image archive has neither manifest.json nor index.json")
        config = self._file(config_path, "config")
        actual = "sha256:" + hashlib.sha256(config).hexdigest()
        expected_hex = posixpath.basename(config_path).removesuffix(".json")
        if len(expected_hex) == 64 and actual != "sha256:" + expected_hex:
            raise DigestMismatch(f"image config {config_path}: sha256 is {actual}")
        layers = [self._layer(p) for p in layer_paths]
        _check_diff_ids(config, layers)
        return ExportedImage(config=config, repo_tags=repo_tags, layers=layers)

    def _legacy(self, image: str | None) -> tuple[str, list[str], list[str]]:
        try:
            entries = json.loads(self.small["manifest.json"])
        except ValueError as exc:
            raise InvalidInput("image archive: manifest.json is not JSON") from exc
        if not isinstance(entries, list) or not entries:
            raise InvalidInput("image archive: manifest.json lists no image")
        entry = _pick(entries, image, lambda e: e.get("RepoTags") or [])
        config, tags, layers = (
            entry.get("Config"),
            entry.get("RepoTags") or [],
            entry.get("Layers"),
        )
        if (
            not isinstance(config, str)
            or not isinstance(layers, list)
            or not all(isinstance(x, str) for x in layers)
            or not isinstance(tags, list)
        ):
            raise InvalidInput("image archive: malformed manifest.json entry")
        return config, [str(t) for t in tags], layers

    def _oci(self, image: str | None) -> tuple[str, list[str], list[str]]:
        index = self._json("index.json", "index")
        descriptors = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(descriptors, list) or not descriptors:
            raise InvalidInput("image archive: index.json lists no manifest")
        top = _pick(descriptors, image, _descriptor_names)
        tags = _descriptor_names(top)[:1]
        desc = top
        for _ in range(8):
            manifest = self._json(_blob_path(desc), "manifest")
            if not isinstance(manifest, dict):
                raise InvalidInput("image archive: malformed manifest")
            if (
                manifest.get("mediaType") in _INDEX_TYPES
                or desc.get("mediaType") in _INDEX_TYPES
                or ("manifests" in manifest and "layers" not in manifest)
            ):
                desc = self._platform_manifest(manifest.get("manifests"))
                continue
            config = manifest.get("config")
            layers = manifest.get("layers")
            if not isinstance(config, dict) or not isinstance(layers, list):
                raise InvalidInput("image archive: manifest without config or layers")
            return _blob_path(config), tags, [_blob_path(x) for x in layers]
        raise InvalidInput("image archive: indexes nested too deeply")

    def _platform_manifest(self, descriptors: object) -> dict[str, Any]:
        if not isinstance(descriptors, list):
            raise InvalidInput("image archive: malformed nested index")
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        present = [
            d
            for d in descriptors
            if isinstance(d, dict) and _blob_path(d) in self.small and (d.get("platform") or {}).get("os") != "unknown"
        ]
        if not present:
            raise InvalidInput("image archive: no manifest of the nested index is in the archive")
        for d in present:
            if (d.get("platform") or {}).get("architecture") == arch:
                return d
        return present[0]


def _descriptor_names(d: dict[str, Any]) -> list[str]:
    ann = d.get("annotations") or {}
    names = [
        ann.get("io.containerd.image.name"),
        ann.get("org.opencontainers.image.ref.name"),
    ]
    return [n for n in names if isinstance(n, str) and n]


def _pick(entries: list[Any], image: str | None, names: Any) -> dict[str, Any]:
    dicts = [e for e in entries if isinstance(e, dict)]
    if not dicts:
        raise InvalidInput("image archive: malformed image list")
    if len(dicts) == 1:
        return dicts[0]
    if image is not None:
        wanted = {
            image,
            image + ":latest",
            "docker.io/" + image,
            "docker.io/library/" + image,
            "docker.io/library/" + image + ":latest",
        }
        for e in dicts:
            if wanted & set(names(e)):
                return e
        raise ImageNotFound(f"image archive holds no image {image}")
    raise InvalidInput(f"image archive holds {len(dicts)} images; say which one")


def _blob_path(descriptor: object) -> str:
    if not isinstance(descriptor, dict):
        raise InvalidInput("image archive: malformed descriptor")
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or ":" not in digest:
        raise InvalidInput("image archive: descriptor without digest")
    algo, hex_ = digest.split(":", 1)
    return f"blobs/{algo}/{hex_}"


def _check_blob_name(path: str, raw_digest: str) -> None:
    """Files under blobs/sha256/ are named by their digest: check it."""
    if path.startswith("blobs/sha256/"):
        expected = "sha256:" + path.rsplit("/", 1)[1]
        if raw_digest != expected:
            raise DigestMismatch(f"image archive: {path} has sha256 {raw_digest}")


def _check_diff_ids(config: bytes, layers: list[ExportedLayer]) -> None:
    try:
        parsed = json.loads(config)
        diff_ids = parsed["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput("image config has no rootfs.diff_ids") from exc
    if not isinstance(diff_ids, list):
        raise InvalidInput("image config rootfs.diff_ids is not a list")
    if len(diff_ids) != len(layers):
        raise DigestMismatch(f"image config lists {len(diff_ids)} layers, the archive has {len(layers)}")
    for i, (expected, layer) in enumerate(zip(diff_ids, layers, strict=False), 1):
        if expected != layer.diff_id:
            raise DigestMismatch(f"layer {i}: diff_id is {layer.diff_id}, the image config says {expected}")
