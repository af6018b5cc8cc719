"""The swarm CA: signs each host's TLS certificate for the SSL torrents.

`<data>/ca.key` (EC P-256, mode 0600) and `<data>/ca.pem` (self-signed, 10
years) are made on first use, under a file lock so that `serve` and `token
create` started together agree on one CA. With a shared database (replicas,
PostgreSQL) the CA is kept in the database instead (`Storage.shared_ca`):
replicas share no disk, and one CA must sign every host's certificate.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from swarm.core.certs import ca_fingerprint, load_cert, new_private_key, private_key_pem
from swarm.core.errors import InvalidInput
from swarm.core.files import write_atomic

if TYPE_CHECKING:
    from swarm.tracker.storage.base import Storage

CA_KEY = "ca.key"
CA_CERT = "ca.pem"
CA_LIFETIME = dt.timedelta(days=3650)
#: certificates start a minute in the past, for clocks a little behind
BACKDATE = dt.timedelta(seconds=60)
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class IssuedCertificate:
    pem: str
    serial: int
    not_after: int  # unix seconds


class CertificateAuthority:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        self.fingerprint = ca_fingerprint(self.cert_pem)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> CertificateAuthority:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(data_dir / "ca.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            key_path, cert_path = data_dir / CA_KEY, data_dir / CA_CERT
            if not key_path.exists():
                _create(key_path, cert_path)
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise InvalidInput(f"{key_path} is not an EC private key")
            return cls(key, load_cert(cert_path.read_bytes()))

    @classmethod
    def from_pem(cls, key_pem: str | bytes, cert_pem: str | bytes) -> CertificateAuthority:
        key = serialization.load_pem_private_key(
            key_pem.encode() if isinstance(key_pem, str) else key_pem, password=None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidInput("the CA key is not an EC private key")
        return cls(key, load_cert(cert_pem))

    @classmethod
    def for_storage(cls, storage: Storage, data_dir: Path) -> CertificateAuthority:
        """The database's CA where the storage keeps one (made by the first tracker), else the data dir's."""
        key_pem, cert_pem = _new_ca()
        shared = storage.shared_ca(key_pem.decode(), cert_pem.decode())
        if shared is not None:
            return cls.from_pem(*shared)
        return cls.load_or_create(data_dir)

    def derive_secret(self, purpose: str) -> bytes:
        """A 32-byte secret for `purpose`, the same in every process and replica sharing this CA
        (e.g. the key that signs the fleet page's session cookies)."""
        der = self._key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return hmac.new(der, b"swarm/" + purpose.encode(), hashlib.sha256).digest()

    def sign_csr(self, csr_pem: str, name: str, lifetime_s: int, dns_names: Sequence[str]) -> IssuedCertificate:
        """Issue a certificate for the CSR's key: CN=name, one SAN DNS name per entry of `dns_names`
        (the ids of the holder's groups; none: no SAN, and the CN, a token name, names no torrent),
        server+client auth."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode("utf-8", "surrogateescape"))
        except (ValueError, UnicodeError) as exc:
            raise InvalidInput("not a PEM certificate signing request") from exc
        try:
            # a damaged CSR parses lazily: its key or algorithm may fail only here (found by fuzzing)
            valid = csr.is_signature_valid
            public = csr.public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise InvalidInput("the CSR's key or signature is malformed or unsupported") from exc
        if not valid:
            raise InvalidInput("the CSR signature does not verify")
        if isinstance(public, ec.EllipticCurvePublicKey):
            if not isinstance(public.curve, ec.SECP256R1):
                raise InvalidInput("the CSR key must be EC P-256 or RSA of 2048 bits or more")
        elif isinstance(public, rsa.RSAPublicKey):
            if public.key_size < MIN_RSA_BITS:
                raise InvalidInput("the CSR key must be EC P-256 or RSA of 2048 bits or more")
        else:
            raise InvalidInput("the CSR key must be EC P-256 or RSA of 2048 bits or more")
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        not_after = now + dt.timedelta(seconds=lifetime_s)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(serial)
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if dns_names:
            san = x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names])
            builder = builder.add_extension(san, critical=False)
        cert = (
            builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=True,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(
            cert.public_bytes(serialization.Encoding.PEM).decode(), serial, int(not_after.timestamp())
        )

    def issue_server_certificate(self, names: list[str], lifetime_s: int) -> tuple[bytes, bytes]:
        """A TLS server certificate for the tracker itself, from the swarm CA: (cert PEM, key PEM).

        Hosts pin the CA by the fingerprint in their join token, so this is what
        lets a token cross the network only inside TLS. Host certificates carry
        only group ids (`g` + 24 hex digits) as SAN names, which no host name
        the tracker is dialled by looks like, so a host cannot pose as the tracker.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swarm-tracker")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(seconds=lifetime_s))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def server_names(listen_host: str, public_url: str | None) -> list[str]:
    """The names a tracker's HTTPS certificate must carry: what hosts dial."""
    names = {"localhost", "127.0.0.1"}
    if listen_host not in ("0.0.0.0", "::", ""):
        names.add(listen_host)
    if public_url:
        hostname = urlsplit(public_url).hostname
        if hostname:
            names.add(hostname)
    return sorted(names)


def _create(key_path: Path, cert_path: Path) -> None:
    key_pem, cert_pem = _new_ca()
    # the certificate first: a key file is the sign that both are complete
    write_atomic(cert_path, cert_pem, 0o644)
    write_atomic(key_path, key_pem, 0o600)


def _new_ca() -> tuple[bytes, bytes]:
    """A new CA: (key PEM, self-signed certificate PEM)."""
    key = new_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swarm CA")])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return private_key_pem(key), cert.public_bytes(serialization.Encoding.PEM)
