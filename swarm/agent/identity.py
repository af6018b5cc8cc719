"""The host's TLS identity: a key made here, a certificate from the swarm CA.

The private key never leaves the host: enrollment sends a CSR. The tracker's
CA is pinned by the fingerprint carried in the join token, so a host talking
to an impostor tracker stops before sending anything of value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from swarm.agent.paths import AgentPaths
from swarm.agent.tracker_client import TrackerClient
from swarm.core.api import EnrollResponse
from swarm.core.certs import dns_names, make_csr, new_private_key, private_key_pem
from swarm.core.errors import Forbidden, SwarmError, TrackerError, UntrustedManifest
from swarm.core.files import write_atomic
from swarm.core.tokens import JoinToken

log = logging.getLogger(__name__)

#: renew when this share of the certificate's life has passed
RENEW_AT = 2 / 3


class Identity:
    def __init__(self, paths: AgentPaths, client: TrackerClient, token: JoinToken) -> None:
        self._paths = paths
        self._client = client
        self._token = token
        self.name = ""
        self.role = ""
        self.ca_pem = ""
        self.not_after = 0
        self.issued_at = 0
        self.last_error = ""
        #: the SAN DNS names of the certificate: the ids of the groups this host is in
        self.names: frozenset[str] = frozenset()
        #: told after every renewal (the engine takes the new certificate)
        self.on_renewed: Callable[[], None] = lambda: None

    def _private_key(self) -> ec.EllipticCurvePrivateKey:
        if self._paths.key.exists():
            key = serialization.load_pem_private_key(self._paths.key.read_bytes(), password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return key
        key = new_private_key()
        write_atomic(self._paths.key, private_key_pem(key), 0o600)
        return key

    async def enroll(self) -> EnrollResponse:
        """Pin the CA, send a CSR, store the certificate. Raises on any failure."""
        pinned = await self._client.pin_ca()
        key = await asyncio.to_thread(self._private_key)
        answer = await self._client.enroll(make_csr(key, "swarm-host"))
        if "".join(answer.ca.split()) != "".join(pinned.split()):
            raise UntrustedManifest("the tracker enrolled us with a CA other than the pinned one")
        write_atomic(self._paths.cert, answer.certificate.encode(), 0o600)
        write_atomic(self._paths.ca, answer.ca.encode(), 0o600)
        self.name, self.role, self.ca_pem = answer.name, answer.role, answer.ca
        self.names = dns_names(answer.certificate)
        self.not_after, self.issued_at = answer.not_after, int(time.time())
        self.last_error = ""
        log.info(
            "enrolled as %s (%s); certificate valid until %s",
            answer.name,
            answer.role,
            time.strftime("%H:%M:%S", time.localtime(answer.not_after)),
        )
        return answer

    async def ensure_name(self, group_id: str, what: str) -> None:
        """Make sure the certificate names `group_id`, renewing it now if not: a host added to a
        group (or a builder to a repository of a new group) needs the new SAN before its next
        scheduled renewal. Forbidden if even a fresh certificate lacks it."""
        if group_id in self.names or "*" in self.names:
            return
        log.info("certificate lacks group %s (for %s): renewing it now", group_id, what)
        await self.enroll()
        self.on_renewed()
        if group_id not in self.names:
            raise Forbidden(f"{what}: this host's certificate does not name its group ({group_id}); not a member?")

    def renew_delay(self) -> float:
        lifetime = max(1, self.not_after - self.issued_at)
        return max(1.0, self.issued_at + lifetime * RENEW_AT - time.time())

    async def renew_forever(self) -> None:
        """Renew before expiry; on failure retry every few seconds (a revoked host never succeeds).
        Each certificate names the groups of the token at the time: a membership change shows at
        the next renewal (sooner for additions, see `ensure_name`)."""
        while True:
            await asyncio.sleep(self.renew_delay())
            while True:
                try:
                    await self.enroll()
                    self.on_renewed()
                    break
                except (TrackerError, SwarmError) as exc:
                    self.last_error = str(exc)
                    log.warning("certificate renewal failed: %s", exc)
                    await asyncio.sleep(min(30.0, max(1.0, self.not_after - time.time())))
