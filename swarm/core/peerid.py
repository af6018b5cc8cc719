"""Swarm peer ids: `-SW0100-` + role letter + up to 8 characters of the token name + `-` + random.

The tracker refuses an announce whose peer id has this shape but names
another token or role (tracker/service.py). Peer connections do not prove a
peer id (the BitTorrent handshake carries whatever the peer sends), so the
agent's per-peer statistics are labelled from certificates instead
(engine/session.py); a peer id is only a hint.
"""

from __future__ import annotations

from dataclasses import dataclass

PEER_ID_PREFIX = "-SW0100-"
_ROLE_LETTERS = {"b": "builder", "h": "host"}


def peer_tag(name: str, role: str = "host") -> str:
    """The fingerprint prefix of this host's peer id: role letter and name (rest random)."""
    clean = "".join(c for c in name if c.isalnum() or c in "._")[:8]
    return f"{PEER_ID_PREFIX}{role[:1]}{clean}-"


@dataclass(frozen=True)
class PeerIdentity:
    role: str  # "builder", "host" or "?" for a peer id swarm did not make
    name: str


def peer_identity(pid: bytes) -> PeerIdentity:
    """Who a swarm peer id says it is (a claim, not a proof)."""
    text = pid.decode("latin-1")
    rest = text[len(PEER_ID_PREFIX) :]
    if not text.startswith(PEER_ID_PREFIX) or "-" not in rest:
        return PeerIdentity("?", "?")
    tag = rest.split("-", 1)[0]
    role = _ROLE_LETTERS.get(tag[:1], "?")
    return PeerIdentity(role, tag[1:] or "?")


def peer_name(pid: bytes) -> str:
    return peer_identity(pid).name


def claims_other_identity(pid: bytes, name: str, role: str) -> bool:
    """A swarm-shaped peer id that is not `name`'s with `role` (foreign clients' ids claim nothing)."""
    return pid.startswith(PEER_ID_PREFIX.encode()) and not pid.startswith(peer_tag(name, role).encode("latin-1"))
