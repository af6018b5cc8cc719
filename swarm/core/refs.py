"""Image references `repository[:tag][@digest]` (Docker's grammar, `swarm.core.reference`) and watch patterns."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from swarm.core import reference
from swarm.core.errors import UsageError


@dataclass(frozen=True, order=True)
class ImageRef:
    """`repository:tag` names a manifest (`str()` is that key); `digest` optionally pins its image ID."""

    repository: str
    tag: str
    # not part of the identity: `app:1@sha256:...` is the manifest app:1, with a pin to check
    digest: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def pinned(self) -> str:
        """The reference as written back: with `@digest` when there is one."""
        return f"{self}@{self.digest}" if self.digest else str(self)

    @classmethod
    def parse(cls, text: str, digest: bool = False) -> ImageRef:
        """Any name Docker accepts: `localhost:5000/team/app:1.2.3-rc.1`; tag `latest` when none.

        `digest`: also accept `name:tag@sha256:<image id>` (where a pin makes sense); a digest
        alone names no manifest, so the tag stays required then."""
        ref = reference.parse(text)
        if reference.is_identifier(ref.name):
            raise UsageError(f"invalid image name {text!r}: {reference.NAME_IS_IDENTIFIER}")
        if ref.digest is not None:
            if not digest:
                raise UsageError(f"invalid image name {text!r}: a digest is not accepted here, name a tag")
            if ref.tag is None:
                raise UsageError(f"invalid image name {text!r}: swarm finds images by tag: give NAME:TAG@{ref.digest}")
        return cls(ref.name, ref.tag or "latest", ref.digest)


def matches(pattern: str, ref: ImageRef) -> bool:
    """`myapp/*` matches every tag of repositories under myapp/; `myapp:prod-*` matches tags."""
    if pattern.rfind(":") > pattern.rfind("/"):  # a tag part; `localhost:5000/app` has none
        return fnmatch.fnmatchcase(str(ref), pattern)
    return fnmatch.fnmatchcase(ref.repository, pattern)
