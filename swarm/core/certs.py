"""X.509 helpers shared by the tracker's CA and the agent's identity (pure: no I/O)."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from swarm.core.errors import InvalidInput


def ca_fingerprint(cert_pem: str | bytes) -> str:
    """sha256 of the certificate's DER, hex: what a join token pins."""
    cert = load_cert(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def load_cert(pem: str | bytes) -> x509.Certificate:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise InvalidInput("not a PEM certificate") from exc


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def dns_names(pem: str | bytes) -> frozenset[str]:
    """The SAN DNS names of a certificate (a host's: its group ids)."""
    try:
        san = load_cert(pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(san.value.get_values_for_type(x509.DNSName))
