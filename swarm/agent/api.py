"""The agent's local socket API, defined once for the agent and its clients.

`<data>/agent.sock`, mode 0600. One connection carries one request, a msgpack
map {"op": <name>, **request.to_map()}. The agent answers with a stream of
msgpack maps: any number of {"type": "progress", **progress.to_map()}, then
exactly one {"type": "result", "data": response.to_map()} or
{"type": "error", "kind": SwarmError.kind, "message": <one line>}.

  op        request           progress        response
  status    StatusRequest     -               StatusResponse
  pull      PullRequest       PullProgress    PullResponse
  prepare   PrepareRequest    Note            PrepareResponse (unsigned manifests)
  publish   PublishRequest    Note            PublishResponse

`swarm seed` signs between `prepare` and `publish`, so the signing key never
enters the agent.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Any, ClassVar, Self, Union, get_args, get_origin, get_type_hints

from swarm.core.api import ManifestEntry
from swarm.core.errors import InvalidInput


class Message:
    """A dataclass that maps to and from a msgpack map, field by field.

    Fields are str, int, float, bool, bytes, `X | None`, `tuple[X, ...]`, or
    dataclasses with to_map/from_map; unknown keys are ignored.
    """

    def to_map(self) -> dict[str, Any]:
        return {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_map(cls, m: Any) -> Self:
        if not isinstance(m, dict):
            raise InvalidInput(f"malformed {cls.__name__}: not a map")
        hints = get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in m:
                values[f.name] = _decode(hints[f.name], m[f.name], f"{cls.__name__}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InvalidInput(f"malformed {cls.__name__}: no {f.name}")
        return cls(**values)


def _encode(v: Any) -> Any:
    if isinstance(v, (Message, ManifestEntry)):
        return v.to_map()
    if isinstance(v, (tuple, list)):
        return [_encode(x) for x in v]
    return v


def _decode(tp: Any, v: Any, what: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if v is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _decode(inner, v, what)
    if origin is tuple:
        if not isinstance(v, list):
            raise InvalidInput(f"malformed {what}: expected a list")
        (item, _ellipsis) = get_args(tp)
        return tuple(_decode(item, x, what) for x in v)
    if isinstance(tp, type) and issubclass(tp, (Message, ManifestEntry)):
        return tp.from_map(v)
    if tp is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if tp is int and isinstance(v, bool):
        raise InvalidInput(f"malformed {what}: expected int")
    if isinstance(tp, type) and isinstance(v, tp):
        return v
    raise InvalidInput(f"malformed {what}: expected {getattr(tp, '__name__', tp)}")


def _non_empty(what: str, items: tuple[Any, ...]) -> None:
    if not items:
        raise InvalidInput(f"{what} must not be empty")


# -- progress ---------------------------------------------------------------------


@dataclass(frozen=True)
class Note(Message):
    """A line of text for the user (prepare, publish)."""

    message: str


@dataclass(frozen=True)
class LayerProgress(Message):
    blob: str  # sha256:...
    total: int  # blob bytes
    done: int
    rate: int  # bytes/s
    peers: int  # connected now
    state: str  # cached, waiting, queued (below in image order first), in-docker, or the torrent's state


@dataclass(frozen=True)
class PullProgress(Message):
    ref: str
    stage: str  # resolving → downloading → verifying → loading (→ waiting-for-docker) → done
    note: str
    layers: tuple[LayerProgress, ...]


# -- status -------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusRequest(Message):
    op: ClassVar[str] = "status"


@dataclass(frozen=True)
class PeerInfo(Message):
    name: str
    address: str  # "" once disconnected
    downloaded: int  # payload bytes received from it (whole life of the torrent)
    uploaded: int  # payload bytes sent to it while connected now
    connected: bool


@dataclass(frozen=True)
class TorrentInfo(Message):
    blob: str
    info_hash: str
    state: str
    progress: float
    total: int
    done: int
    download_rate: int
    upload_rate: int
    downloaded: int
    uploaded: int
    failed_pieces: int
    error: str
    peers: tuple[PeerInfo, ...]


#: ImageInfo.cache: every blob of the image is in the cache (so this host seeds it), some, or none
CACHED, PARTLY_CACHED, NOT_CACHED = "cached", "partial", "none"


@dataclass(frozen=True)
class ImageInfo(Message):
    ref: str
    image_id: str
    layers: int
    blobs: int = 0  # distinct blobs (a layer repeated in the image is one blob)
    cached_blobs: int = 0  # of those, in the cache and verified
    cache: str = NOT_CACHED  # CACHED, PARTLY_CACHED or NOT_CACHED
    #: the host group its layer torrents are named after: its name when the tracker said it, else its id
    group: str = ""
    group_id: str = ""  # "" for an image published before host groups


@dataclass(frozen=True)
class CacheInfo(Message):
    bytes: int
    blobs: int
    budget: int  # 0: none
    over_budget: int  # bytes over the budget that nothing evictable is left to cover (reserved counted)
    reserved: int = 0  # bytes of the blobs downloads under way fetch, counted whole (part of them on disk)


@dataclass(frozen=True)
class StatusResponse(Message):
    name: str
    role: str
    tracker: str
    tracker_reachable: bool
    certificate_expires: int  # unix seconds
    certificate_error: str  # the last renewal failure, "" if none
    peer_port: int
    trusted_keys: tuple[str, ...]
    images: tuple[ImageInfo, ...]
    pulls: tuple[PullProgress, ...]
    torrents: tuple[TorrentInfo, ...]
    cache: CacheInfo
    relay: bool = False  # `swarm agent --relay`: no Docker, pulls end cached and seeding


# -- pull -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PullRequest(Message):
    op: ClassVar[str] = "pull"
    refs: tuple[str, ...]
    seed: bool = False  # fetch the blobs even of an image Docker already holds, to seed them

    def __post_init__(self) -> None:
        _non_empty("refs", self.refs)


@dataclass(frozen=True)
class PulledImage(Message):
    ref: str
    image_id: str
    #: or "already-in-docker": Docker held this image id, nothing was fetched; "cached": a relay's pull
    outcome: str = "loaded"
    seeding: bool = True  # every blob of it is cached here and served to peers


@dataclass(frozen=True)
class PullResponse(Message):
    images: tuple[PulledImage, ...]


# -- prepare and publish (swarm seed) -----------------------------------------------------


@dataclass(frozen=True)
class PrepareRequest(Message):
    op: ClassVar[str] = "prepare"
    images: tuple[str, ...]
    key_id: str  # of the key that will sign the manifests
    archive: str | None = None  # a `docker save`/OCI archive on the agent's host instead of Docker

    def __post_init__(self) -> None:
        _non_empty("images", self.images)


@dataclass(frozen=True)
class PrepareResponse(Message):
    manifests: tuple[bytes, ...]  # Manifest.to_bytes(), unsigned, one per image


@dataclass(frozen=True)
class PublishRequest(Message):
    op: ClassVar[str] = "publish"
    envelopes: tuple[bytes, ...]  # SignedManifest.to_bytes()


@dataclass(frozen=True)
class PublishResponse(Message):
    published: tuple[ManifestEntry, ...]
