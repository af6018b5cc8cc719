"""Image references `repository[:tag]` and watch patterns."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from swarm.core.errors import UsageError

_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True, order=True)
class ImageRef:
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        repo, sep, tag = text.rpartition(":")
        if not sep or "/" in tag:
            repo, tag = text, "latest"
        if not _REPO.match(repo) or len(repo) > 255:
            raise UsageError(f"invalid image name {text!r}: expected repository[:tag], lowercase")
        if not _TAG.match(tag):
            raise UsageError(f"invalid tag in {text!r}")
        return cls(repo, tag)


def matches(pattern: str, ref: ImageRef) -> bool:
    """`myapp/*` matches every tag of repositories under myapp/; `myapp:prod-*` matches tags."""
    if ":" in pattern:
        return fnmatch.fnmatchcase(str(ref), pattern)
    return fnmatch.fnmatchcase(ref.repository, pattern)


_PATTERN = re.compile(r"[A-Za-z0-9_.\-/:*?\[\]!]{1,300}")


def validate_pattern(pattern: str) -> str:
    """A watch or repository pattern: image-name characters and fnmatch wildcards, nothing else."""
    if not _PATTERN.fullmatch(pattern):
        raise UsageError(f"invalid pattern {pattern[:40]!r}: image-name characters and * ? [] only")
    return pattern
