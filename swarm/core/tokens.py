"""Join tokens: `swarm1.<secret>.<CA fingerprint>`.

The secret (40 hex) authenticates the host; the tracker keeps only its
sha256. The fingerprint (64 hex, sha256 of the CA certificate's DER) lets a
new host pin the tracker's CA on first contact, as kubeadm's CA hash does.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from swarm.core.errors import UsageError

_TOKEN = re.compile(r"swarm1\.([0-9a-f]{40})\.([0-9a-f]{64})")
_SECRET = re.compile(r"[0-9a-f]{40}")
#: builder: publishes; host: pulls; admin: reads fleet state (hosts, rollouts), joins no swarm
ROLES = ("builder", "host", "admin")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def is_secret_shaped(secret: str) -> bool:
    return bool(_SECRET.fullmatch(secret))


@dataclass(frozen=True)
class JoinToken:
    secret: str
    ca_fingerprint: str

    def __str__(self) -> str:
        return f"swarm1.{self.secret}.{self.ca_fingerprint}"

    def __repr__(self) -> str:  # never print the secret by accident
        return f"JoinToken(ca_fingerprint={self.ca_fingerprint[:12]}...)"

    @classmethod
    def new(cls, ca_fingerprint: str) -> JoinToken:
        return cls(secrets.token_hex(20), ca_fingerprint)

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        m = _TOKEN.fullmatch(text.strip())
        if not m:
            raise UsageError("malformed join token: expected swarm1.<secret>.<ca-fingerprint>")
        return cls(m.group(1), m.group(2))

    def fingerprint_matches(self, der_fingerprint: str) -> bool:
        return hmac.compare_digest(self.ca_fingerprint, der_fingerprint)
