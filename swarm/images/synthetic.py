"""Deterministic test images built FROM scratch (no registry needed).

    tag = "demo/hello:1"
    image_id = build_image(api, tag, [
        {"hello.txt": b"hello from swarm\\n"},
        {"data/blob.bin": payload(5 << 20, seed=1)},
    ], cmd=["/bin/busybox", "cat", "/hello.txt"])

Each dict is one layer (`COPY layerN/ /`); with `with_busybox` a first layer
holds a static busybox (/usr/bin/busybox from Debian's busybox-static) as
/bin/busybox with /bin/sh, /bin/cat, /bin/echo, /bin/ls, /bin/sleep links.
File contents and mtimes are fixed, so layer diff_ids are the same on every
build; the image ID is not (the config carries the build time). Layer n's
files get mtime FIXED_MTIME + n, except that a layer equal to an earlier one
reuses that one's mtime: [A, B, A] then gives a duplicate layer (same
diff_id) on every storage driver. (With vfs, whose diff looks at size and
mtime only, a layer that changes nothing a previous one left is empty and
dropped, and its diff holds only the files that changed: for a duplicate,
the layer in between must change every file of the repeated one.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from swarm.core.errors import DockerError, InvalidInput
from swarm.images.docker_client import docker_errors

BUSYBOX = Path("/usr/bin/busybox")
BUSYBOX_APPLETS = ("sh", "cat", "echo", "ls", "sleep", "true")
FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z


def payload(size: int, seed: int = 0, compressible: bool = False) -> bytes:
    """`size` deterministic bytes: random (incompressible) or repetitive text."""
    if size < 0:
        raise InvalidInput("payload size must be >= 0")
    rng = random.Random(seed)
    if not compressible:
        return rng.randbytes(size)
    words = [f"swarm{rng.randrange(1000)}" for _ in range(64)]
    line_parts: list[str] = []
    out = bytearray()
    i = 0
    while len(out) < size:
        line_parts.append(words[i % len(words)])
        i += 1
        if len(line_parts) == 12:
            out += (" ".join(line_parts) + "\n").encode()
            line_parts.clear()
    return bytes(out[:size])


def write_context(
    context: Path, layers: Sequence[Mapping[str, bytes]], cmd: Sequence[str], with_busybox: bool = True
) -> None:
    """Write a build context (Dockerfile + files) for `build_image`."""
    lines = ["FROM scratch"]
    if with_busybox:
        if not BUSYBOX.is_file():
            raise DockerError(f"{BUSYBOX} is missing (apt-get install busybox-static)")
        bin_dir = context / "busybox" / "bin"
        bin_dir.mkdir(parents=True)
        shutil.copyfile(BUSYBOX, bin_dir / "busybox")
        (bin_dir / "busybox").chmod(0o755)
        for applet in BUSYBOX_APPLETS:
            (bin_dir / applet).symlink_to("busybox")
        lines.append("COPY busybox/ /")
    for n, files in enumerate(layers, 1):
        root = context / f"layer{n}"
        root.mkdir()
        for name, data in files.items():
            rel = PurePosixPath(name.lstrip("/"))
            if not rel.parts or ".." in rel.parts:
                raise InvalidInput(f"bad file name in synthetic layer: {name!r}")
            target = root.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        lines.append(f"COPY layer{n}/ /")
    if cmd:
        lines.append("CMD " + json.dumps(list(cmd)))
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")
    _set_mtimes(context / "busybox", FIXED_MTIME)
    for n, files in enumerate(layers):
        first = next(i for i, other in enumerate(layers) if other == files)
        _set_mtimes(context / f"layer{n + 1}", FIXED_MTIME + 1 + first)


def _set_mtimes(root: Path, mtime: int) -> None:
    if not root.exists():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in [*dirnames, *filenames]:
            os.utime(os.path.join(dirpath, entry), (mtime, mtime), follow_symlinks=False)
    os.utime(root, (mtime, mtime))


def build_image(
    api: Any, tag: str, layers: Sequence[Mapping[str, bytes]], cmd: Sequence[str], with_busybox: bool = True
) -> str:
    """Build a FROM-scratch image with one layer per dict (plus busybox first);
    returns its image ID (sha256:...)."""
    with tempfile.TemporaryDirectory(prefix="swarm-build-") as tmp:
        context = Path(tmp)
        write_context(context, layers, cmd, with_busybox)
        image: str | None = None
        errors: list[str] = []
        with docker_errors(api, f"docker build {tag}"):
            for event in api.build(path=str(context), tag=tag, rm=True, forcerm=True, decode=True, network_mode="none"):
                if not isinstance(event, dict):
                    continue
                if "error" in event or "errorDetail" in event:
                    detail = event.get("errorDetail") or {}
                    errors.append(str(detail.get("message") or event.get("error")).strip())
                aux = event.get("aux")
                if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
                    image = aux["ID"]
            if errors:
                raise DockerError(f"docker build {tag}: {errors[-1]}")
            if image is None:
                image = str(api.inspect_image(tag)["Id"])
    return image


def run_image(api: Any, image: str, cmd: Sequence[str] | None = None, timeout: float = 120) -> bytes:
    """Run `image` (no network) to completion and return its stdout+stderr.

    create -> start -> wait -> logs -> remove: unlike `containers.run(...)`,
    whose follow-mode log stream can miss the output of a container that exits
    at once (seen with engine 20.10), the logs are read after the exit.
    Raises DockerError if the container exits non-zero.
    """
    with docker_errors(api, f"docker run {image}"):
        container = api.create_container(
            image,
            command=list(cmd) if cmd is not None else None,
            host_config=api.create_host_config(network_mode="none"),
        )
        cid = container["Id"]
        try:
            api.start(cid)
            status = api.wait(cid, timeout=timeout)
            output = api.logs(cid, stdout=True, stderr=True, stream=False, follow=False)
        finally:
            api.remove_container(cid, force=True)
    code = status.get("StatusCode") if isinstance(status, dict) else None
    if code != 0:
        raise DockerError(f"docker run {image}: exited with {code}: {_tail(output)}")
    return bytes(output)


def _tail(output: object) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
    return " ".join(text.split())[-300:]
