"""Blobs -> a legacy-layout image tarball, streamed into `docker load`.

`image_tar_stream` yields the tarball piece by piece (headers built with
`tarfile.TarInfo.tobuf`, each layer.tar decompressed from its zstd blob on the
fly), so it never exists whole on disk or in memory; `load_image` posts that
generator as the body of `POST /images/load`. Every layer is sent, even those
the engine already has (`docker load` opens a layer file whenever it lacks the
layer), except the ones `in_docker` names: layers this pull registered in an
earlier stage (swarm/agent/staged_load.py), which Docker skips by chain ID.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import docker.errors
import zstandard

from swarm.core.digest import digest_hex
from swarm.core.errors import DigestMismatch, DockerError, InvalidInput
from swarm.images.docker_client import api_error_message, docker_errors

CHUNK = 1024 * 1024
BLOCK = 512

#: (diff_id, size of the uncompressed layer tar, blob path, compression)
LayerSource = tuple[str, int, Path, str]


def image_tar_stream(
    repo_tag: str, config: bytes, layers: Sequence[LayerSource], in_docker: frozenset[str] = frozenset()
) -> Iterator[bytes]:
    """A `docker save`-style (legacy layout) tarball of one image, in chunks; the layer
    files of the diff_ids in `in_docker` are left out (Docker must already hold that chain).

    Raises DigestMismatch (from the generator) when a blob does not decompress
    to its diff_id / size; the consumer then sees a truncated upload.
    """
    for diff_id, size, _path, compression in layers:
        digest_hex(diff_id)
        if compression not in ("zstd", "none"):
            raise InvalidInput(f"unknown layer compression {compression!r}")
        if size < 0:
            raise InvalidInput("negative layer size")
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [
        {
            "Config": config_name,
            "RepoTags": [repo_tag] if repo_tag else None,
            "Layers": [f"{digest_hex(diff_id)}/layer.tar" for diff_id, _s, _p, _c in layers],
        }
    ]
    return _generate(config_name, config, json.dumps(manifest).encode(), layers, in_docker)


def _generate(
    config_name: str, config: bytes, manifest: bytes, layers: Sequence[LayerSource], in_docker: frozenset[str]
) -> Iterator[bytes]:
    yield from _small_file(config_name, config)
    sent = {digest_hex(diff_id) for diff_id in in_docker}
    for diff_id, size, path, compression in layers:
        hex_ = digest_hex(diff_id)
        if hex_ in sent:  # a layer used twice is stored once
            continue
        sent.add(hex_)
        yield _header(hex_ + "/", 0, tarfile.DIRTYPE, 0o755)
        yield _header(hex_ + "/layer.tar", size)
        yield from _layer_body(diff_id, size, path, compression)
        yield _padding(size)
    yield from _small_file("manifest.json", manifest)
    yield b"\0" * (2 * BLOCK)


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.mode = mode
    info.mtime = 0
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def _small_file(name: str, data: bytes) -> Iterator[bytes]:
    yield _header(name, len(data))
    yield data
    yield _padding(len(data))


def _layer_body(diff_id: str, size: int, path: Path, compression: str) -> Iterator[bytes]:
    sha = hashlib.sha256()
    sent = 0
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed in the generator's finally)
    except FileNotFoundError as exc:
        raise InvalidInput(f"blob for layer {diff_id[:19]} is missing: {path}") from exc
    with f:
        reader: IO[bytes]
        if compression == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        else:
            reader = f
        try:
            while sent < size:
                chunk = reader.read(min(CHUNK, size - sent))
                if not chunk:
                    break
                sha.update(chunk)
                sent += len(chunk)
                yield chunk
            extra = reader.read(1)
        except zstandard.ZstdError as exc:
            raise DigestMismatch(f"layer {diff_id[:19]}: blob {path.name[:12]} is not valid zstd: {exc}") from exc
    if sent != size or extra:
        raise DigestMismatch(
            f"layer {diff_id[:19]}: blob {path.name[:12]} decompresses to "
            f"{'more' if extra else sent} bytes, expected {size}"
        )
    actual = "sha256:" + sha.hexdigest()
    if actual != diff_id:
        raise DigestMismatch(
            f"layer {diff_id[:19]}: blob {path.name[:12]} decompresses to {actual[:19]}…, expected {diff_id}"
        )


def load_image(api: Any, stream: Iterable[bytes]) -> str:
    """POST the tarball `stream` to `docker load`; returns what Docker reports
    loaded (the repo:tag, or the image ID when untagged)."""
    loaded: list[str] = []
    with docker_errors(api, "docker load"):
        # The body upload and Docker's unpacking may take longer than the
        # client's per-read timeout before the first answer byte: no timeout.
        res = api._post(api._url("/images/load"), data=stream, stream=True, timeout=None)
        for event in api._stream_helper(res, decode=True):
            _check_event(event)
            text = event.get("stream") if isinstance(event, dict) else None
            if isinstance(text, str):
                for prefix in ("Loaded image: ", "Loaded image ID: "):
                    if text.startswith(prefix):
                        loaded.append(text[len(prefix) :].strip())
    if not loaded:
        raise DockerError("docker load: Docker reported no loaded image")
    return loaded[-1]


def _check_event(event: Any) -> None:
    if not isinstance(event, dict):
        return
    if "errorDetail" in event or "error" in event:
        detail = event.get("errorDetail") or {}
        message = detail.get("message") if isinstance(detail, dict) else None
        raise DockerError(f"docker load: {message or event.get('error')}")


def image_id(api: Any, ref: str) -> str | None:
    """The image ID (sha256:...) `ref` names in Docker, or None if none."""
    with docker_errors(api, f"docker inspect {ref}"):
        try:
            info = api.inspect_image(ref)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            # a malformed reference is "no such image" too, for our purposes
            if exc.status_code == 400:
                return None
            raise DockerError(f"docker inspect {ref}: {api_error_message(exc)}") from exc
    value = info.get("Id") if isinstance(info, dict) else None
    return value if isinstance(value, str) else None


def remove_untagged(api: Any, image: str) -> bool:
    """Delete image ID `image` if it exists and no tag names it; True if it was deleted."""
    with docker_errors(api, f"docker rmi {image[:19]}"):
        try:
            if api.inspect_image(image).get("RepoTags"):
                return False
            api.remove_image(image)
        except docker.errors.NotFound:
            return False
    return True


def has_image(api: Any, ref: str) -> bool:
    return image_id(api, ref) is not None
