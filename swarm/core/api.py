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

MSGPACK = "application/msgpack"
MAX_BODY = 32 * 1024 * 1024
MAX_WATCH_TIMEOUT = 60.0


@dataclass(frozen=True)
class EnrollResponse:
    certificate: str   # PEM, signed by the swarm CA, SAN DNS "*"
    ca: str            # PEM of the swarm CA
    not_after: int     # unix seconds
    name: str          # the token's name, also the certificate CN
    role: str

    def to_map(self) -> dict[str, Any]:
        return {"certificate": self.certificate, "ca": self.ca, "not_after": self.not_after,
                "name": self.name, "role": self.role}

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> EnrollResponse:
        try:
            return cls(str(m["certificate"]), str(m["ca"]), int(m["not_after"]), str(m["name"]), str(m["role"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput("malformed enroll response") from exc


@dataclass(frozen=True)
class ManifestEntry:
    ref: str           # repository:tag
    image_id: str
    seq: int           # publication sequence number, grows by one per publish
    published: int     # unix seconds
    publisher: str     # token name of the builder

    def to_map(self) -> dict[str, Any]:
        return {"ref": self.ref, "image_id": self.image_id, "seq": self.seq,
                "published": self.published, "publisher": self.publisher}

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> ManifestEntry:
        try:
            return cls(str(m["ref"]), str(m["image_id"]), int(m["seq"]), int(m["published"]), str(m["publisher"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput("malformed manifest entry") from exc
