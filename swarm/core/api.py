"""The tracker's HTTP API, defined once for the tracker and its clients.

All bodies are msgpack (`application/msgpack`) unless noted. Authenticated
endpoints take `Authorization: Bearer <token secret>`; the announce and scrape
URLs carry the secret in their path, because BitTorrent clients cannot send
headers. Errors are 4xx with a msgpack body {"error": "<one line>"};
announce/scrape errors are bencoded {"failure reason": ...} with status 200
(BEP 3: clients only read failure reasons from a bencoded body).

  GET  /v1/health                     -> {"ok": True}
  GET  /v1/ca                         -> CA certificate, PEM text (public)
  POST /v1/enroll      any role       {"csr": PEM} -> EnrollResponse
  POST /v1/manifests   builder only   SignedManifest bytes -> ManifestEntry; 403 unless signed by the
                                      token's bound key, for this token (manifest `publisher`), into
                                      its patterns and a repository it owns; 409 if not newer
                                      (`created_ms`) than the tag's current manifest
  GET  /v1/manifests   any role       -> {"manifests": [ManifestEntry...]}
  GET  /v1/manifests/<repo>:<tag>     -> SignedManifest bytes
  GET  /v1/watch?since=N&timeout=S    -> {"seq": N', "manifests": [entries with seq > N]}
                                         (long-poll: waits up to S seconds, max 60,
                                         for a publication after N)
  GET  /v1/keys        any role       -> SignedKeyDocument bytes (swarm/core/trust.py), 404 if none
  GET  /v1/peers?info_hash=H          -> {"peers": [PeerEntry...]}: who the tracker saw announce
                                      torrent H (the 20-byte announce hash, 40 hex digits), with the
                                      token each entry belongs to; only for a token that may announce
                                      H (else 404, as for an unknown torrent). Agents label per-peer
                                      stats from it (swarm/agent/peer_names.py)
  GET  /v1/groups/resolve?repository=R  builder, admin -> {"group": name, "id": group id}
                                      (hosts see, in manifests, watch, announce and scrape, only
                                      the images of their groups: see swarm/core/groups.py)
  GET  /announce/<secret>?...         BEP 3/23/7 announce (v2 hashes truncated to 20 bytes)
  GET  /scrape/<secret>?info_hash=... BEP 48 scrape
  GET  /t/<secret>/announce, /t/<secret>/scrape
                                      the same, for clients that derive the scrape URL
                                      by replacing a trailing "announce"
  GET  /metrics                       Prometheus text (unauthenticated)

Too many failed authentications from one address within a minute get 429
(announce/scrape: a bencoded failure reason) until the minute has passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swarm.core.errors import InvalidInput
from swarm.core.tokens import ROLES

MSGPACK = "application/msgpack"
MAX_BODY = 32 * 1024 * 1024
MAX_WATCH_TIMEOUT = 60.0
#: the bencoded announce failure for a torrent only removed manifests named: agents stop announcing it
RETIRED_TORRENT = "retired torrent"


@dataclass(frozen=True)
class EnrollResponse:
    certificate: str  # PEM, signed by the swarm CA, one SAN DNS name per group id of the token
    ca: str  # PEM of the swarm CA
    not_after: int  # unix seconds
    name: str  # the token's name, also the certificate CN
    role: str

    def to_map(self) -> dict[str, Any]:
        return {
            "certificate": self.certificate,
            "ca": self.ca,
            "not_after": self.not_after,
            "name": self.name,
            "role": self.role,
        }

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> EnrollResponse:
        try:
            return cls(str(m["certificate"]), str(m["ca"]), int(m["not_after"]), str(m["name"]), str(m["role"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput("malformed enroll response") from exc


@dataclass(frozen=True)
class ManifestEntry:
    ref: str  # repository:tag
    image_id: str
    seq: int  # publication sequence number, grows by one per publish
    published: int  # unix seconds
    publisher: str  # token name of the builder
    group: str = "default"  # the host group whose hosts may read it (swarm/core/groups.py)

    def to_map(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "image_id": self.image_id,
            "seq": self.seq,
            "published": self.published,
            "publisher": self.publisher,
            "group": self.group,
        }

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> ManifestEntry:
        try:
            return cls(
                str(m["ref"]),
                str(m["image_id"]),
                int(m["seq"]),
                int(m["published"]),
                str(m["publisher"]),
                str(m.get("group", "default")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput("malformed manifest entry") from exc


#: most entries one /v1/peers answer lists (a swarm holds at most this many entries per token anyway)
MAX_PEER_ENTRIES = 10_000


@dataclass(frozen=True)
class PeerEntry:
    """One peer-store entry as the tracker recorded it: the announcing address, the peer id it
    announced with, and the token it announced with (attested by the tracker, not by the peer)."""

    ip: str
    port: int
    peer_id: bytes
    token: str  # the token name, also the name in the peer's certificate
    role: str  # the token's role: "builder", "host" (or "admin")

    def to_map(self) -> dict[str, Any]:
        return {"ip": self.ip, "port": self.port, "peer_id": self.peer_id, "token": self.token, "role": self.role}

    @classmethod
    def from_map(cls, m: Any) -> PeerEntry:
        if not isinstance(m, dict):
            raise InvalidInput("malformed peer entry")
        ip, port, pid, token, role = (m.get(k) for k in ("ip", "port", "peer_id", "token", "role"))
        if (
            not isinstance(ip, str)
            or not 0 < len(ip) <= 64
            or not isinstance(port, int)
            or isinstance(port, bool)
            or not 0 < port < 65536
            or not isinstance(pid, bytes)
            or len(pid) != 20
            or not isinstance(token, str)
            or not 0 < len(token) <= 63
            or role not in ROLES
        ):
            raise InvalidInput("malformed peer entry")
        return cls(ip, port, pid, token, str(role))


# Rollout: agents report their pulls and a heartbeat; admins and builders read fleet state.
#
#   POST /v1/reports          host/builder    ReportBatch -> {"ok": True}; the host is the token's name
#   GET  /v1/hosts            admin           -> {"hosts": [HostView...]}
#   GET  /v1/rollouts         admin, builder  -> {"rollouts": [RolloutView without hosts...]}
#   GET  /v1/rollouts/<ref>   admin, builder  -> RolloutView (a builder: only repositories it publishes)
#
# Host tokens get 403 on the three GETs. Views are built by swarm/tracker/rollout.py.

#: the states of a pull as agents report them, in the order a pull goes through them;
#: "cached" ends a relay's pull (`swarm agent --relay`: verified and seeding, no Docker)
PULL_STATES = (
    "resolving",
    "downloading",
    "verifying",
    "loading",
    "waiting-for-docker",
    "loaded",
    "cached",
    "failed",
)
MAX_REPORT_BODY = 64 * 1024
MAX_PULLS_PER_REPORT = 32
MAX_STAGES = 16
MAX_TEXT = 300


def _text(m: dict[str, Any], key: str, limit: int = MAX_TEXT) -> str:
    v = m.get(key, "")
    if not isinstance(v, str) or len(v) > limit:
        raise InvalidInput(f"malformed report: {key} must be a string of at most {limit} characters")
    return v


def _count(m: dict[str, Any], key: str) -> int:
    v = m.get(key, 0)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**63:
        raise InvalidInput(f"malformed report: {key} must be a non-negative integer")
    return v


def _time(m: dict[str, Any], key: str) -> float:
    v = m.get(key, 0.0)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 2**40:
        raise InvalidInput(f"malformed report: {key} must be a unix time")
    return float(v)


@dataclass(frozen=True)
class Receipt:
    """A host's signed statement "I loaded this image": see swarm/core/receipts.py."""

    payload: bytes  # canonical msgpack of {"v", "host", "ref", "image_id", "loaded_at"}
    signature: bytes  # ECDSA P-256 / SHA-256 by the host's TLS key
    certificate: str  # the host's certificate (PEM) from the swarm CA

    def to_map(self) -> dict[str, Any]:
        return {"payload": self.payload, "signature": self.signature, "certificate": self.certificate}

    @classmethod
    def from_map(cls, m: Any) -> Receipt:
        if not isinstance(m, dict):
            raise InvalidInput("malformed receipt")
        payload, signature = m.get("payload"), m.get("signature")
        if (
            not isinstance(payload, bytes)
            or not isinstance(signature, bytes)
            or len(payload) > 1024
            or len(signature) > 160
        ):
            raise InvalidInput("malformed receipt")
        return cls(payload, signature, _text(m, "certificate", 4096))


@dataclass(frozen=True)
class Stage:
    name: str  # one of PULL_STATES but "loaded"/"failed"
    started: float  # unix time
    seconds: float  # time spent in it (so far, for the current one)

    def to_map(self) -> dict[str, Any]:
        return {"name": self.name, "started": self.started, "seconds": self.seconds}

    @classmethod
    def from_map(cls, m: Any) -> Stage:
        if not isinstance(m, dict) or m.get("name") not in PULL_STATES:
            raise InvalidInput("malformed report: unknown stage")
        return cls(str(m["name"]), _time(m, "started"), _time(m, "seconds"))


@dataclass(frozen=True)
class PullReport:
    """One pull's latest state on one host."""

    ref: str
    state: str  # PULL_STATES
    image_id: str = ""  # known once the manifest verified
    done: int = 0  # blob bytes here (cached ones included)
    total: int = 0  # blob bytes of the image
    from_peers: int = 0  # bytes received from other hosts during this pull
    from_builder: int = 0  # bytes received from builders during this pull
    stages: tuple[Stage, ...] = ()
    error: str = ""  # the one-line reason, when failed
    started: float = 0.0  # unix time the pull started
    updated: float = 0.0  # unix time of this state
    receipt: Receipt | None = None  # with "loaded"

    def to_map(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "state": self.state,
            "image_id": self.image_id,
            "done": self.done,
            "total": self.total,
            "from_peers": self.from_peers,
            "from_builder": self.from_builder,
            "stages": [s.to_map() for s in self.stages],
            "error": self.error,
            "started": self.started,
            "updated": self.updated,
            "receipt": self.receipt.to_map() if self.receipt else None,
        }

    @classmethod
    def from_map(cls, m: Any) -> PullReport:
        if not isinstance(m, dict):
            raise InvalidInput("malformed report: a pull is not a map")
        state = m.get("state")
        if state not in PULL_STATES:
            raise InvalidInput(f"malformed report: unknown state {str(state)[:40]!r}")
        stages = m.get("stages", [])
        if not isinstance(stages, list) or len(stages) > MAX_STAGES:
            raise InvalidInput(f"malformed report: at most {MAX_STAGES} stages")
        receipt = m.get("receipt")
        return cls(
            _text(m, "ref", 256),
            str(state),
            _text(m, "image_id", 80),
            _count(m, "done"),
            _count(m, "total"),
            _count(m, "from_peers"),
            _count(m, "from_builder"),
            tuple(Stage.from_map(s) for s in stages),
            _text(m, "error"),
            _time(m, "started"),
            _time(m, "updated"),
            None if receipt is None else Receipt.from_map(receipt),
        )


@dataclass(frozen=True)
class Heartbeat:
    version: str
    cache_bytes: int
    cache_budget: int  # 0: no budget
    cert_not_after: int  # unix time the host's certificate expires

    def to_map(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cache_bytes": self.cache_bytes,
            "cache_budget": self.cache_budget,
            "cert_not_after": self.cert_not_after,
        }

    @classmethod
    def from_map(cls, m: Any) -> Heartbeat:
        if not isinstance(m, dict):
            raise InvalidInput("malformed report: heartbeat is not a map")
        return cls(
            _text(m, "version", 64), _count(m, "cache_bytes"), _count(m, "cache_budget"), _count(m, "cert_not_after")
        )


@dataclass(frozen=True)
class ReportBatch:
    """What an agent sends: its heartbeat and the latest state of the pulls that changed."""

    heartbeat: Heartbeat | None
    pulls: tuple[PullReport, ...]

    def to_map(self) -> dict[str, Any]:
        return {
            "heartbeat": self.heartbeat.to_map() if self.heartbeat else None,
            "pulls": [p.to_map() for p in self.pulls],
        }

    @classmethod
    def from_map(cls, m: Any) -> ReportBatch:
        if not isinstance(m, dict):
            raise InvalidInput("malformed report: not a map")
        pulls = m.get("pulls", [])
        if not isinstance(pulls, list) or len(pulls) > MAX_PULLS_PER_REPORT:
            raise InvalidInput(f"malformed report: at most {MAX_PULLS_PER_REPORT} pulls per report")
        hb = m.get("heartbeat")
        return cls(None if hb is None else Heartbeat.from_map(hb), tuple(PullReport.from_map(p) for p in pulls))
