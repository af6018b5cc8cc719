"""sha256 digests in the `sha256:<64 hex>` form Docker uses."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from swarm.core.errors import InvalidInput

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
CHUNK = 1024 * 1024


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def validate_digest(value: object, what: str = "digest") -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise InvalidInput(f"{what} is not a sha256:<hex> digest")
    return value


def digest_hex(digest: str) -> str:
    return validate_digest(digest)[len("sha256:") :]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
