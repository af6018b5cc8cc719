"""Swarm peer ids: `-SW0100-` + role letter + up to 8 characters of the token name + `-` + random.

The tracker refuses an announce whose peer id has this shape but names
another token or role (tracker/service.py). A peer connection proves no peer
id: the BitTorrent handshake carries whatever the peer sends, and libtorrent
does not tell which certificate a connection presented. So a peer id is a
claim only. The agent labels its per-peer statistics from the tracker's peer
store instead (`attest` below, fed by GET /v1/peers through
swarm/agent/peer_names.py): an entry records the address, port and peer id a
token announced with. A connection we opened is vouched for by the entry at
its exact address and port; one the peer opened (from a random port) by an
entry of its address whose peer id makes the same claim (libtorrent 2.1
sends a fresh random suffix on every connection, so only the tag, role and
name, can be compared). A peer nothing vouches for is `unverified`: role "?",
never "builder".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from swarm.core.api import PeerEntry
from swarm.core.errors import InvalidInput

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


def unverified(pid: bytes) -> PeerIdentity:
    """A peer no tracker entry vouches for: role "?", named "?" + the name its peer id claims."""
    claim = peer_identity(pid).name
    return PeerIdentity("?", "?" if claim == "?" else f"?{claim}")


def canonical_ip(ip: str) -> str:
    """The form the tracker records addresses in: IPv4-mapped IPv6 addresses become IPv4."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError as exc:
        raise InvalidInput("invalid peer address") from exc
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def attest(entries: Iterable[PeerEntry], ip: str, port: int, pid: bytes) -> PeerIdentity | None:
    """Who the tracker says the peer at `ip`:`port` sending `pid` is; None if no entry vouches for it.

    The entry at exactly (ip, port) wins: a connection we opened reaches the address its owner
    announced, whatever peer id comes back. Else an entry of that address whose announced peer id
    makes the same swarm claim (role and name) as `pid`: a connection the peer opened."""
    try:
        ip = canonical_ip(ip)
    except InvalidInput:
        return None
    claim = peer_identity(pid)
    same_claim: PeerEntry | None = None
    for e in entries:
        if e.ip != ip:
            continue
        if e.port == port:
            return PeerIdentity(e.role, e.token)
        if claim.role != "?" and peer_identity(e.peer_id) == claim:
            same_claim = e
    return PeerIdentity(same_claim.role, same_claim.token) if same_claim is not None else None


def peer_name(pid: bytes) -> str:
    return peer_identity(pid).name


def claims_other_identity(pid: bytes, name: str, role: str) -> bool:
    """A swarm-shaped peer id that is not `name`'s with `role` (foreign clients' ids claim nothing)."""
    return pid.startswith(PEER_ID_PREFIX.encode()) and not pid.startswith(peer_tag(name, role).encode("latin-1"))
