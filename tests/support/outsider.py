"""An outsider: a real libtorrent client holding a stolen torrent and the peer
addresses, but no certificate from the swarm CA."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import libtorrent as lt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from swarm.engine.session import dh_params_path


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate with SAN `*` from a CA of the outsider's own."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "outsider")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("*")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = workdir / "outsider.pem", workdir / "outsider.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def steal(torrent: bytes, peers: list[tuple[str, int]], workdir: Path, with_cert: bool,
          timeout: float = 30) -> tuple[int, int, int]:
    """Try to download; returns (payload bytes, pieces, failed connections) once every
    peer has refused us or `timeout` passed."""
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "listen_interfaces": "127.0.0.1:0s", "enable_dht": False, "enable_lsd": False, "enable_upnp": False,
        "enable_natpmp": False, "enable_outgoing_utp": False, "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert_category.error | lt.alert_category.peer | lt.alert_category.connect,
    }
    session = lt.session(settings)
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = str(workdir)
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    handle = session.add_torrent(atp)
    if with_cert:
        cert, key = self_signed(workdir)
        handle.set_ssl_certificate(str(cert), str(key), dh_params_path())
    for peer in peers:
        handle.connect_peer(peer)
    failed: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout
    while len(failed) < len(peers) and time.monotonic() < deadline:
        session.wait_for_alert(200)
        for alert in session.pop_alerts():
            if isinstance(alert, (lt.peer_disconnected_alert, lt.peer_error_alert)):
                endpoint = tuple(alert.endpoint) if hasattr(alert, "endpoint") else tuple(alert.ip)
                if endpoint in peers:
                    failed.add(endpoint)  # type: ignore[arg-type]
    status = handle.status()
    result = (int(status.total_payload_download), int(status.num_pieces), len(failed))
    session.remove_torrent(handle)
    return result
