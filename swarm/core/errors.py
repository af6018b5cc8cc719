"""One exception tree for swarm; every error carries its user-facing message.

    SwarmError                      exit 1, message printed on one line
    ├── UsageError                  exit 2 (bad option values, malformed refs)
    ├── AgentNotRunning             no agent on the local socket
    ├── TrackerError                the tracker refused or failed
    │   ├── TrackerUnreachable      no HTTP answer at all
    │   ├── Unauthorized            missing, unknown or revoked token (401)
    │   ├── Forbidden               valid token, role not allowed (403)
    │   ├── NotFound                no such manifest (404)
    │   └── RateLimited             too many failed attempts from one address (429)
    ├── ImageNotFound               unknown image (tracker or Docker)
    ├── InvalidInput                a malformed message, manifest or file
    │   └── LegacyTorrent           a layer torrent from before host groups (named by digest)
    ├── UntrustedManifest           signature missing, bad or not by a pinned key
    ├── DigestMismatch              bytes whose sha256 is not the expected one
    ├── DockerError                 Docker refused or failed
    │   └── DockerUnreachable       no Docker engine at the given address
    └── TorrentError                libtorrent reported a failure

Errors from libraries underneath are converted at the boundary
(`raise SwarmError(...) from exc`) so the CLI maps them in one place.
Between the tracker and its clients an error travels as an HTTP status:
`HTTP_STATUS` below is that one table, read by both sides.
"""

from __future__ import annotations


class SwarmError(Exception):
    exit_code = 1
    #: short machine-readable name, carried over the agent socket
    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(SwarmError):
    exit_code = 2
    kind = "usage"


class AgentNotRunning(SwarmError):
    kind = "agent-not-running"


class TrackerError(SwarmError):
    kind = "tracker"


class TrackerUnreachable(TrackerError):
    kind = "tracker-unreachable"


class Unauthorized(TrackerError):
    kind = "unauthorized"


class Forbidden(TrackerError):
    kind = "forbidden"


class NotFound(TrackerError):
    kind = "not-found"


class RateLimited(TrackerError):
    kind = "rate-limited"


class Conflict(TrackerError):
    """The tracker holds something newer (a manifest of the tag, a key document)."""

    kind = "conflict"


class ImageNotFound(SwarmError):
    kind = "image-not-found"


class InvalidInput(SwarmError):
    kind = "invalid-input"


class LegacyTorrent(InvalidInput):
    """A layer torrent named by its blob's digest: published before host groups, so no certificate
    names it and no peer serves it; the image must be seeded again."""

    kind = "legacy-torrent"


class UntrustedManifest(SwarmError):
    kind = "untrusted-manifest"


class DigestMismatch(SwarmError):
    kind = "digest-mismatch"


class DockerError(SwarmError):
    kind = "docker"


class DockerUnreachable(DockerError):
    kind = "docker-unreachable"


class TorrentError(SwarmError):
    kind = "torrent"


#: the HTTP status of each error the tracker answers with (a subclass inherits its parent's);
#: any other SwarmError is the caller's fault: 400
HTTP_STATUS: dict[type[SwarmError], int] = {
    InvalidInput: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    RateLimited: 429,
    TrackerError: 502,
}


def status_for(exc: SwarmError) -> int:
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 400


def error_for_status(status: int) -> type[TrackerError]:
    """The error a tracker client raises for an error answer: the tracker's refusals by their own
    class, any other status a plain TrackerError."""
    for cls, code in HTTP_STATUS.items():
        if code == status and issubclass(cls, TrackerError):
            return cls
    return TrackerError


_BY_KIND: dict[str, type[SwarmError]] = {}


def _register(cls: type[SwarmError]) -> None:
    _BY_KIND[cls.kind] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(SwarmError)


def error_from_kind(kind: str, message: str) -> SwarmError:
    """Rebuild an error sent over a wire as (kind, message)."""
    return _BY_KIND.get(kind, SwarmError)(message)
