"""Load receipts: a host's signature, with its TLS key, over "I loaded IMAGE_ID as REF at T".

The host signs with the private key that never left it (the one its swarm
certificate certifies); the tracker checks the signature against that
certificate and the certificate against its own CA, and keeps the receipt so
that anyone holding the CA certificate can check it again later
(`verify_receipt`). What a receipt proves, and what not: docs/security.md.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from swarm.core import wire
from swarm.core.api import Receipt
from swarm.core.certs import load_cert
from swarm.core.errors import InvalidInput

RECEIPT_VERSION = 1


@dataclass(frozen=True)
class LoadClaim:
    host: str
    ref: str
    image_id: str
    loaded_at: int  # unix seconds


def sign_receipt(key: ec.EllipticCurvePrivateKey, certificate_pem: str, claim: LoadClaim) -> Receipt:
    payload = wire.pack_canonical(
        {
            "v": RECEIPT_VERSION,
            "host": claim.host,
            "ref": claim.ref,
            "image_id": claim.image_id,
            "loaded_at": claim.loaded_at,
        }
    )
    return Receipt(payload, key.sign(payload, ec.ECDSA(hashes.SHA256())), certificate_pem)


def read_claim(receipt: Receipt) -> LoadClaim:
    m = wire.unpack_map(receipt.payload, 1024)
    try:
        if m["v"] != RECEIPT_VERSION:
            raise InvalidInput(f"unsupported receipt version {m['v']!r}")
        claim = LoadClaim(m["host"], m["ref"], m["image_id"], m["loaded_at"])
    except KeyError as exc:
        raise InvalidInput(f"receipt without {exc.args[0]}") from exc
    if not (
        isinstance(claim.host, str)
        and isinstance(claim.ref, str)
        and isinstance(claim.image_id, str)
        and isinstance(claim.loaded_at, int)
    ):
        raise InvalidInput("malformed receipt payload")
    if wire.pack_canonical(m) != receipt.payload:
        raise InvalidInput("receipt payload is not in canonical form")
    return claim


def verify_receipt(receipt: Receipt, ca_cert: x509.Certificate) -> LoadClaim:
    """The claim, if the receipt is signed by the key of a certificate `ca_cert` issued to the claim's
    host and valid when it was signed; InvalidInput otherwise."""
    claim = read_claim(receipt)
    cert = load_cert(receipt.certificate)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise InvalidInput("the receipt's certificate is not from this swarm's CA") from exc
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [claim.host]:
        raise InvalidInput(f"the receipt's certificate belongs to {names[0] if names else '?'!s}, not to {claim.host}")
    when = dt.datetime.fromtimestamp(claim.loaded_at, dt.UTC)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise InvalidInput("the receipt was signed outside its certificate's validity")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise InvalidInput("receipts are signed with EC keys only")
    try:
        public.verify(receipt.signature, receipt.payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise InvalidInput("the receipt's signature does not verify") from exc
    return claim
