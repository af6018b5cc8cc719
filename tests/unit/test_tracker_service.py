"""TrackerService with a real data dir: tokens, CA, publishing, watch, announce."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_from_bytes

import libtorrent as lt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from swarm.core.certs import ca_fingerprint, dns_names, load_cert, make_csr, new_private_key
from swarm.core.groups import group_id
from swarm.core.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from swarm.core.signing import SignedManifest, SigningKey
from swarm.core.tokens import hash_secret
from swarm.tracker.options import ServeOptions
from swarm.tracker.server import open_service
from swarm.tracker.service import TrackerService
from swarm.tracker.storage import migrations
from swarm.tracker.storage.sqlite import SCHEMA_VERSION, migrate
from tests.support.bt import announce_query
from tests.support.manifests import make_signed_manifest


@pytest.fixture
def service(tmp_path: Path) -> Iterator[TrackerService]:
    svc = open_service(ServeOptions(tmp_path / "data", cert_lifetime=600, interval=30))
    yield svc
    svc.close()

def test_ca_files(service: TrackerService) -> None:
    data = service.data_dir
    assert stat.S_IMODE(os.stat(data / "ca.key").st_mode) == 0o600
    cert = load_cert((data / "ca.pem").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 3649
    # a second service over the same dir keeps the same CA
    again = open_service(ServeOptions(data))
    assert again.ca.fingerprint == service.ca.fingerprint == ca_fingerprint(service.ca.cert_pem)
    again.close()


def test_schema_version(service: TrackerService) -> None:
    conn = sqlite3.connect(service.storage.path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert migrate(conn) == SCHEMA_VERSION  # idempotent
    conn.close()


def test_migrate_a_v1_database(tmp_path: Path) -> None:
    """A database written by the first schema opens, keeps its rows and gains the v2 tables."""
    data = tmp_path / "old"
    data.mkdir()
    conn = sqlite3.connect(data / "tracker.db")
    conn.executescript(migrations.scripts("sqlite")[1] + "CREATE TABLE schema_version (version INTEGER NOT NULL);"
                       "INSERT INTO schema_version VALUES (1);")
    with conn:
        conn.execute("INSERT INTO tokens VALUES ('h1', 'host', ?, 1, NULL, NULL)", (hash_secret("a" * 40),))
        conn.execute("INSERT INTO tokens VALUES ('h2', 'host', ?, 1, 5, NULL)", (hash_secret("b" * 40),))
        conn.execute("INSERT INTO manifests VALUES ('demo/app:v1', x'00', 'sha256:1', 7, 1, 'b1')")
        conn.execute("INSERT INTO torrents VALUES (?, 'sha256:2', 'demo/app:v1')", (bytes(20),))
    conn.close()
    svc = open_service(ServeOptions(data))
    try:
        assert sqlite3.connect(data / "tracker.db").execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION,)]
        assert svc.authenticate("a" * 40).name == "h1"
        with pytest.raises(Unauthorized):
            svc.authenticate("b" * 40)
        assert svc.storage.generation().revocations == 1  # the counter starts at the revocations made
        assert svc.storage.current_seq() == 7 and svc.storage.is_published_hash(bytes(20))
        svc.revoke_token("h1")
        assert svc.storage.generation().revocations == 2
    finally:
        svc.close()
    # a database from a newer tracker is refused, not guessed at
    conn = sqlite3.connect(data / "tracker.db")
    with conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(InvalidInput, match="newer"):
        open_service(ServeOptions(data))


def test_token_lifecycle_and_hashes_only(service: TrackerService) -> None:
    tok = service.create_token("b1", "builder", SigningKey.generate().public_raw)
    assert tok.ca_fingerprint == service.ca.fingerprint
    assert service.authenticate(tok.secret).name == "b1"
    with pytest.raises(InvalidInput):
        service.create_token("b1", "host")
    with pytest.raises(InvalidInput):
        service.create_token("x", "root")
    with pytest.raises(InvalidInput):
        service.create_token("bad name", "host")
    h = service.create_token("h1", "host")
    assert [(t.name, t.role, t.revoked) for t in service.list_tokens()] == [("b1", "builder", False),
                                                                          ("h1", "host", False)]
    service.revoke_token("h1")
    assert [t.revoked for t in service.list_tokens()] == [False, True]
    with pytest.raises(NotFound):
        service.revoke_token("nobody")
    for bad in (None, "", "nothex", h.secret, "0" * 40, str(tok)):
        with pytest.raises(Unauthorized, match="missing, unknown or revoked token"):
            service.authenticate(bad)
    raw = b"".join(p.read_bytes() for p in service.data_dir.iterdir() if p.name.startswith("tracker.db"))
    assert hash_secret(tok.secret).encode() in raw  # what is kept instead
    for secret in (tok.secret, h.secret):
        assert secret.encode() not in raw
        assert bytes.fromhex(secret) not in raw


def test_certificates_name_the_groups_of_the_token(service: TrackerService) -> None:
    for g in ("web", "pci", "base"):
        service.add_group(g)
    service.map_pattern("payments/*", "pci")
    service.map_pattern("shop/*", "web")
    service.map_pattern("base", "base")

    def names(token_name: str) -> frozenset[str]:
        token = next(t for t in tokens if t[0] == token_name)[1]
        return dns_names(service.enroll(token.secret, make_csr(new_private_key(), "x")).certificate)

    builder_key = SigningKey.generate().public_raw
    tokens = [
        ("web-01", service.create_token("web-01", "host", groups=("web",))),
        ("both-01", service.create_token("both-01", "host", groups=("web", "pci"))),
        ("relay-01", service.create_token("relay-01", "host", groups=("pci", "base"))),
        ("b-shop", service.create_token("b-shop", "builder", builder_key, ("shop/*",))),
        ("b-pay", service.create_token("b-pay", "builder", builder_key, ("payments/cards", "tools/*"))),
        ("b-any", service.create_token("b-any", "builder", builder_key)),
    ]
    assert names("web-01") == {group_id("web")}
    assert names("both-01") == {group_id("web"), group_id("pci")}
    assert names("relay-01") == {group_id("pci"), group_id("base")}
    assert names("b-shop") == {group_id("web")}  # shop/* lies inside the web mapping: no default
    assert names("b-pay") == {group_id("pci"), group_id("default")}  # tools/* is unmapped
    assert names("b-any") == {group_id(g) for g in ("web", "pci", "base", "default")}
    # membership changes show in the next certificate
    service.change_memberships("both-01", [], ["pci"])
    assert names("both-01") == {group_id("web")}
    service.change_memberships("web-01", [], ["web"])
    cert = load_cert(service.enroll(tokens[0][1].secret, make_csr(new_private_key(), "x")).certificate)
    with pytest.raises(x509.ExtensionNotFound):  # in no group: no SAN, and its CN names no torrent
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_token_names_that_look_like_group_ids_are_refused(service: TrackerService) -> None:
    # libtorrent accepts a certificate whose CN (the token name) equals the torrent name
    with pytest.raises(InvalidInput, match="looks like a group id"):
        service.create_token(group_id("pci"), "host")
    service.create_token("g" + "0" * 23, "host")  # one digit short: not an id


def test_enroll_certificate(service: TrackerService) -> None:
    tok = service.create_token("host-7", "host")
    key = new_private_key()
    resp = service.enroll(tok.secret, make_csr(key, "whatever"))
    assert (resp.name, resp.role, resp.ca) == ("host-7", "host", service.ca.cert_pem)
    cert = load_cert(resp.certificate)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "host-7"
    # one SAN per group of the token (here `default`), never `*`: libtorrent admits it to those torrents only
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [group_id("default")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert abs(resp.not_after - (time.time() + 600)) < 5
    assert int(cert.not_valid_after_utc.timestamp()) == resp.not_after
    assert cert.not_valid_before_utc.timestamp() <= time.time() - 59
    assert cert.issuer == service.ca.cert.subject
    cert.verify_directly_issued_by(service.ca.cert)
    assert cert.public_key() == key.public_key()
    assert len(service.storage.certificates("host-7")) == 1
    # RSA 2048 is fine; small RSA, other curves and junk are not
    assert service.enroll(tok.secret, make_csr(rsa.generate_private_key(65537, 2048), "x"))  # type: ignore[arg-type]
    for bad_key in (rsa.generate_private_key(65537, 1024), ec.generate_private_key(ec.SECP384R1())):
        with pytest.raises(InvalidInput):
            service.enroll(tok.secret, make_csr(bad_key, "x"))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        service.enroll(tok.secret, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    service.revoke_token("host-7")
    with pytest.raises(Unauthorized):
        service.enroll(tok.secret, make_csr(key, "x"))


def test_publish_roles_tamper_and_key_binding(service: TrackerService, tmp_path: Path) -> None:
    key = SigningKey.generate()
    builder = service.create_token("b1", "builder", key.public_raw)
    host = service.create_token("h1", "host")
    signed = make_signed_manifest(tmp_path, service.ca.cert_pem, key, "demo/app", "v1")
    with pytest.raises(Forbidden):
        service.publish(host.secret, signed.to_bytes())
    with pytest.raises(Unauthorized):
        service.publish(None, signed.to_bytes())
    # tampered: a flipped byte in the signed body
    body = bytearray(signed.manifest)
    body[-1] ^= 1
    tampered = SignedManifest(bytes(body), signed.signature, signed.public_key)
    with pytest.raises(InvalidInput):
        service.publish(builder.secret, tampered.to_bytes())
    with pytest.raises(InvalidInput):
        service.publish(builder.secret, b"\x93garbage")
    # a torrent bound to another CA
    other_ca = open_service(ServeOptions(tmp_path / "other"))
    foreign = make_signed_manifest(tmp_path, other_ca.ca.cert_pem, key, "demo/app", "v1")
    other_ca.close()
    with pytest.raises(InvalidInput, match="CA"):
        service.publish(builder.secret, foreign.to_bytes())
    assert service.list_manifests(host.secret) == []

    entry = service.publish(builder.secret, signed.to_bytes())
    assert (entry.ref, entry.seq, entry.publisher) == ("demo/app:v1", 1, "b1")
    assert service.storage.token("b1").builder_key == key.public_raw  # type: ignore[union-attr]
    assert service.get_manifest(host.secret, "demo/app:v1") == signed.to_bytes()
    with pytest.raises(NotFound):
        service.get_manifest(host.secret, "demo/app:v2")
    with pytest.raises(InvalidInput):
        service.get_manifest(host.secret, "Not A Ref")

    # the same token with another key: refused, even for a valid manifest
    other = make_signed_manifest(tmp_path, service.ca.cert_pem, SigningKey.generate(), "demo/app", "v2")
    with pytest.raises(Forbidden, match="bound"):
        service.publish(builder.secret, other.to_bytes())
    # the bound key publishes again: republishing a ref bumps its seq
    again = service.publish(builder.secret, make_signed_manifest(
        tmp_path, service.ca.cert_pem, key, "demo/app", "v1", payloads=[b"new layer"]).to_bytes())
    assert again.seq == 2
    assert [e.seq for e in service.list_manifests(host.secret)] == [2]


async def test_watch(service: TrackerService, tmp_path: Path) -> None:
    key = SigningKey.generate()
    builder = service.create_token("b1", "builder", key.public_raw)
    host = service.create_token("h1", "host")
    assert await service.watch(host.secret, 0, 0) == (0, [])
    waiter = asyncio.create_task(service.watch(host.secret, 0, 30))
    await asyncio.sleep(0)  # let it start waiting (not needed for correctness: it checks the db first)
    entry = service.publish(builder.secret, make_signed_manifest(tmp_path, service.ca.cert_pem, key).to_bytes())
    seq, entries = await asyncio.wait_for(waiter, 10)
    assert seq == 1 and entries == [entry]
    # something newer than `since` already exists: at once
    assert await service.watch(host.secret, 0, 30) == (1, [entry])
    with pytest.raises(Unauthorized):
        await service.watch("0" * 40, 0, 0)


async def test_announce_and_revocation(service: TrackerService, tmp_path: Path) -> None:
    key = SigningKey.generate()
    builder = service.create_token("b1", "builder", key.public_raw)
    h1 = service.create_token("h1", "host")
    h2 = service.create_token("h2", "host")
    signed = make_signed_manifest(tmp_path, service.ca.cert_pem, key)
    ih = signed.verify(None).layers[0].announce_hash

    def decode(b: bytes) -> dict[bytes, object]:
        d = lt.bdecode(b)
        assert isinstance(d, dict)
        return d

    assert decode(await service.announce(h1.secret, announce_query(ih, 7001, b"1" * 20), "127.0.0.1")) == {
        b"failure reason": b"unknown torrent"}
    service.publish(builder.secret, signed.to_bytes())
    d = decode(await service.announce(h1.secret, announce_query(ih, 7001, b"1" * 20), "127.0.0.1"))
    assert d[b"peers"] == b"" and d[b"incomplete"] == 1
    d = decode(await service.announce(h2.secret, announce_query(ih, 7002, b"2" * 20), "::ffff:127.0.0.1"))
    assert d[b"peers"] == bytes([127, 0, 0, 1]) + (7001).to_bytes(2, "big")
    scrape = decode(await service.scrape(h1.secret, f"info_hash={quote_from_bytes(ih)}"))
    assert scrape == {b"files": {ih: {b"complete": 0, b"downloaded": 0, b"incomplete": 2}}}

    service.revoke_token("h2")
    for secret in (h2.secret, "junk", None):
        assert decode(await service.announce(secret, announce_query(ih, 7002, b"2" * 20), "127.0.0.1")) == {
            b"failure reason": b"unauthorized"}
        assert decode(await service.scrape(secret, f"info_hash={quote_from_bytes(ih)}")) == {
            b"failure reason": b"unauthorized"}
    # h2's peer is gone from the handout at once
    d = decode(await service.announce(h1.secret, announce_query(ih, 7001, b"1" * 20), "127.0.0.1"))
    assert d[b"peers"] == b"" and d[b"incomplete"] == 1
    with pytest.raises(Unauthorized):
        service.list_manifests(h2.secret)
    with pytest.raises(Unauthorized):
        service.get_manifest(h2.secret, "demo/app:latest")
    with pytest.raises(Unauthorized):
        await service.watch(h2.secret, 0, 0)


async def test_revocation_by_another_process_drops_peers(service: TrackerService, tmp_path: Path) -> None:
    key = SigningKey.generate()
    builder = service.create_token("b1", "builder", key.public_raw)
    h1, h2 = service.create_token("h1", "host"), service.create_token("h2", "host")
    signed = make_signed_manifest(tmp_path, service.ca.cert_pem, key)
    ih = signed.verify(None).layers[0].announce_hash
    service.publish(builder.secret, signed.to_bytes())
    await service.announce(h2.secret, announce_query(ih, 7002, b"2" * 20), "127.0.0.1")
    # the CLI revokes through its own connection
    cli = open_service(ServeOptions(service.data_dir))
    cli.revoke_token("h2")
    cli.close()
    d = lt.bdecode(await service.announce(h1.secret, announce_query(ih, 7001, b"1" * 20), "127.0.0.1"))
    assert d[b"peers"] == b"" and d[b"incomplete"] == 1  # h2's entry is gone, not just hidden
