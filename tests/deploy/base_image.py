"""A Python base image made from Debian packages, for building swarm's images
where no registry is reachable.

    tarball = rootfs_tarball()                # debootstrap once, cached
    tag = import_base_image(api, tarball)     # `docker import` + the host's CA bundle

`debootstrap --variant=minbase bookworm` with python3, python3-venv and
ca-certificates makes a root file system (about 200 MB); it is kept as a
tarball in $SWARM_TEST_CACHE (default /var/cache/swarm-test), so only the
first run pays for the download (about a minute here); later runs import the
tarball in a few seconds. The Debian mirror is the one this machine's apt
uses ($SWARM_TEST_DEBIAN_MIRROR overrides it).

The image gets this machine's CA bundle and PIP_CERT pointing at it: pip
inside `docker build` then trusts whatever the host trusts (a TLS-inspecting
egress proxy, for one).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.dockerd import unmount_under

SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
ROOTFS_TAG = "swarm-base:rootfs"
BASE_TAG = "swarm-base:test"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBOOTSTRAP_TIMEOUT = 900


def cache_dir() -> Path:
    return Path(os.environ.get("SWARM_TEST_CACHE", "/var/cache/swarm-test"))


def tarball_path() -> Path:
    key = hashlib.sha256(" ".join((SUITE, "minbase", *PACKAGES)).encode()).hexdigest()[:12]
    return cache_dir() / f"debian-{SUITE}-minbase-python3-{key}.tar"


def debian_mirror() -> str | None:
    """The mirror apt uses here for SUITE main, or None (debootstrap's own default)."""
    explicit = os.environ.get("SWARM_TEST_DEBIAN_MIRROR")
    if explicit:
        return explicit
    candidates: list[tuple[str, list[str], list[str]]] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", _read(path)):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split():
                candidates.append((uri, fields.get("suites", "").split(), fields.get("components", "").split()))
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for path in lists:
        for line in _read(path).splitlines():
            parts = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(parts) >= 4 and parts[0] == "deb":
                candidates.append((parts[1], [parts[2]], parts[3:]))
    for uri, suites, components in candidates:
        if SUITE in suites and "main" in components and uri.startswith(("http://", "https://", "file:/")):
            return uri
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def rootfs_tarball(timings: dict[str, float] | None = None) -> Path:
    """The cached root file system tarball; made with debootstrap if missing."""
    target = tarball_path()
    with _locked(cache_dir() / ".lock"):
        if target.exists():
            return target
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if not os.path.exists(debootstrap):
            raise RuntimeError("debootstrap is missing (apt-get install debootstrap)")
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir()))
        log = cache_dir() / "debootstrap.log"
        try:
            cmd = [debootstrap, "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(work)]
            mirror = debian_mirror()
            if mirror:
                cmd.append(mirror)
            with open(log, "wb") as out:
                result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=DEBOOTSTRAP_TIMEOUT,
                                        check=False)
            if result.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"debootstrap failed ({' '.join(cmd)}), see {log}:\n{tail}")
            # downloaded packages and index files are not part of the image
            for deb in (work / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            lists = work / "var/lib/apt/lists"
            if lists.exists():
                for entry in lists.iterdir():
                    if entry.is_file():
                        entry.unlink()
            partial = target.with_name(target.name + ".partial")
            subprocess.run(["tar", "-C", str(work), "--numeric-owner", "-cf", str(partial), "."], check=True,
                           timeout=600)
            os.replace(partial, target)
        finally:
            unmount_under(work)
            shutil.rmtree(work, ignore_errors=True)
        if timings is not None:
            timings["debootstrap"] = time.monotonic() - started
    return target


def import_base_image(api: Any, tarball: Path) -> str:
    """`docker import` the root file system, then add this host's CA bundle; returns BASE_TAG."""
    api.import_image_from_file(str(tarball), repository=ROOTFS_TAG.split(":")[0], tag=ROOTFS_TAG.split(":")[1],
                               changes=[f"ENV PATH={IMAGE_PATH}", "ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]'])
    dockerfile = [f"FROM {ROOTFS_TAG}"]
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        if HOST_CA_BUNDLE.is_file():
            tar.add(str(HOST_CA_BUNDLE), arcname="ca-certificates.crt")
            dockerfile += [f"COPY ca-certificates.crt {HOST_CA_BUNDLE}",
                           f"ENV PIP_CERT={HOST_CA_BUNDLE} SSL_CERT_FILE={HOST_CA_BUNDLE}"]
        text = ("\n".join(dockerfile) + "\n").encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    context.seek(0)
    errors: list[str] = []
    for event in api.build(fileobj=context, custom_context=True, tag=BASE_TAG, rm=True, forcerm=True,
                           network_mode="none", decode=True):
        if isinstance(event, dict) and ("error" in event or "errorDetail" in event):
            errors.append(str(event.get("error") or event.get("errorDetail")))
    if errors:
        raise RuntimeError(f"building {BASE_TAG} failed: {errors[-1]}")
    return BASE_TAG
