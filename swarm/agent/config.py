"""What `swarm agent` is told: every option, with its one default."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swarm.core.layer_order import WINDOW_BYTES
from swarm.core.tokens import JoinToken


@dataclass
class AgentConfig:
    tracker: str  # the tracker's base URL
    token: JoinToken
    data: Path  # identity, blobs, manifests, state, agent.sock
    #: HOST:PORT for peer (TLS) connections; port 0 picks one
    listen: tuple[str, int] = ("0.0.0.0", 6881)
    #: builder public keys (raw Ed25519) whose manifests this host accepts
    trust: list[bytes] = field(default_factory=list)
    #: root public key (raw Ed25519) whose key document names more builder keys, per repository
    trust_root: bytes | None = None
    #: pull every newly published tag matching one of these patterns
    watch: list[str] = field(default_factory=list)
    #: Docker engine URL; None: $DOCKER_HOST, then the standard socket
    docker_host: str | None = None
    #: bytes/s, 0: no limit
    upload_limit: int = 0
    download_limit: int = 0
    #: blob cache budget in bytes, 0: none
    cache_size: int = 0
    #: seconds an image's blobs stay cached after it was pulled or published
    min_seed_time: float = 3600.0
    #: where to serve Prometheus /metrics; None: nowhere
    metrics_listen: tuple[str, int] | None = None
    #: seconds to keep retrying an unreachable tracker at start; 0: forever
    tracker_wait: float = 0.0
    #: a relay: no Docker; pulls download, verify and seed into the cache, ending "cached"
    relay: bool = False
    #: load each layer into Docker as soon as it and those below it are verified (downloading in image order)
    load_while_downloading: bool = True
    #: bytes of the lowest unfinished layers downloaded at once when loading while downloading
    load_window: int = WINDOW_BYTES
    #: debug, info, warning, error (swarm.core.logs)
    log_level: str = "info"
