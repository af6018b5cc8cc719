"""Real peers and probes that run inside a test-bed host's namespace.

    python -m tests.e2e.peertools steal    --torrent F --peer IP:PORT... --listen IP [--cert C --key K | --self-signed]
    python -m tests.e2e.peertools enroll   --tracker URL --token T --data DIR
    python -m tests.e2e.peertools liar     --torrent <blob hex>.torrent... --blobs-dir D --cert C --key K --tracker URL --token T --listen IP:PORT
    python -m tests.e2e.peertools impostor (the liar's options) --name OWN --claim NAME --claim-role builder
                                           [--connect IP:PORT...]
    python -m tests.e2e.peertools announce --tracker URL --token T --info-hash HEX --port N
    python -m tests.e2e.peertools fetch    --url URL

Each prints one JSON line with its result (the liar and the impostor print one per second
until SIGTERM, then a last one with "final": true). They are plain libtorrent
and HTTP clients, not swarm agents: what an attacker (or a broken host) would
run with the parts it has.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import libtorrent as lt

from swarm.engine.session import dh_params_path, peer_tag
from tests.support.outsider import self_signed

BLOCK = 16 * 1024


def _emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _session(listen: str, name: str, role: str = "host") -> Any:
    return lt.session({
        "listen_interfaces": f"{listen}s", "enable_dht": False, "enable_lsd": False, "enable_upnp": False,
        "enable_natpmp": False, "enable_outgoing_utp": False, "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True, "peer_fingerprint": peer_tag(name, role),
        "active_downloads": -1, "active_seeds": -1, "active_limit": -1, "active_checking": -1,
        "alert_mask": lt.alert_category.error | lt.alert_category.peer | lt.alert_category.connect
        | lt.alert_category.status | lt.alert_category.tracker,
    })


def steal(args: argparse.Namespace) -> None:
    """Connect to the peers with whatever certificate we have; count payload bytes received."""
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    session = _session(f"{args.listen}:0", "thief")
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(Path(args.torrent).read_bytes())
    atp.save_path = str(workdir)
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    handle = session.add_torrent(atp)
    if args.self_signed:
        cert, key = self_signed(workdir)
        handle.set_ssl_certificate(str(cert), str(key), dh_params_path())
    elif args.cert:
        handle.set_ssl_certificate(args.cert, args.key, dh_params_path())
    peers = [_endpoint(p) for p in args.peer]
    for peer in peers:
        handle.connect_peer(peer)
    failed: dict[str, str] = {}
    connected: set[str] = set()
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        st = handle.status()
        if len(failed) >= len(peers) or (args.until_bytes and st.total_payload_download >= args.until_bytes):
            break
        session.wait_for_alert(200)
        for alert in session.pop_alerts():
            if isinstance(alert, (lt.peer_disconnected_alert, lt.peer_error_alert)):
                ep = "%s:%d" % tuple(alert.endpoint)
                if _endpoint(ep) in peers:
                    failed[ep] = alert.message()[-160:]
            elif isinstance(alert, lt.peer_connect_alert):
                connected.add("%s:%d" % tuple(alert.endpoint))
    st = handle.status()
    _emit({"downloaded": int(st.total_payload_download), "pieces": int(st.num_pieces), "refused": len(failed),
           "peers": len(peers), "tcp_connected": sorted(connected), "reasons": failed})


def enroll(args: argparse.Namespace) -> None:
    """Enroll like an agent does (key made here, CSR sent with the token); writes identity/ under --data."""
    from swarm.agent.identity import Identity
    from swarm.agent.paths import AgentPaths
    from swarm.agent.tracker_client import TrackerClient
    from swarm.core.tokens import JoinToken

    async def go() -> dict[str, Any]:
        paths = AgentPaths(Path(args.data))
        paths.create()
        token = JoinToken.parse(args.token)
        async with TrackerClient(args.tracker, token) as client:
            answer = await Identity(paths, client, token).enroll()
        return {"cert": str(paths.cert), "key": str(paths.key), "name": answer.name,
                "not_after": answer.not_after}

    _emit(asyncio.run(go()))


def corrupt(path: Path) -> None:
    """Flip a byte in every 16 KiB block, in place (same inode: a running libtorrent sees it)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for offset in range(0, size, BLOCK):
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
        f.flush()


def liar(args: argparse.Namespace) -> None:
    """A peer with a valid certificate that serves corrupted pieces.

    Adds each torrent over a correct copy of the blob, lets libtorrent check it
    (so it seeds, claiming every piece), then corrupts the file in place and only
    then announces to the tracker: every block it sends fails the hash check.
    (seed_mode would not do: libtorrent verifies a seed-mode piece before serving it.)"""
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    session = _session(args.listen, args.name)
    blobs_dir = Path(args.blobs_dir)
    handles, files = [], []
    for torrent in args.torrent:
        # layer torrents are named after their group: the blob is the file named like the .torrent
        blob = Path(torrent).name.removesuffix(".torrent")
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(Path(torrent).read_bytes())
        atp.save_path = str(blobs_dir)
        atp.renamed_files = {0: blob}
        atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        h = session.add_torrent(atp)
        h.set_ssl_certificate(args.cert, args.key, dh_params_path())
        handles.append(h)
        files.append(blobs_dir / blob)
    deadline = time.monotonic() + 60
    while not all(h.status().is_seeding for h in handles):
        if time.monotonic() > deadline:
            raise SystemExit("liar: the honest copies did not check out")
        session.wait_for_alert(100)
        session.pop_alerts()
    for path in files:
        corrupt(path)
    url = _announce_url(args.tracker, args.token)
    for h in handles:
        h.add_tracker({"url": url})
        h.force_reannounce()
    replies = errors = 0
    peers_seen: set[str] = set()
    last = 0.0
    while not stop:
        session.wait_for_alert(200)
        for alert in session.pop_alerts():
            if isinstance(alert, lt.tracker_reply_alert):
                replies += 1
            elif isinstance(alert, lt.tracker_error_alert):
                errors += 1
            elif isinstance(alert, lt.peer_connect_alert) or isinstance(alert, lt.incoming_connection_alert):
                peers_seen.add(str(getattr(alert, "endpoint", getattr(alert, "ip", ""))))
        if time.monotonic() - last >= 1 or stop:
            last = time.monotonic()
            _emit(_liar_stats(handles, replies, errors, len(peers_seen), final=stop))
    _emit(_liar_stats(handles, replies, errors, len(peers_seen), final=True))


def impostor(args: argparse.Namespace) -> None:
    """A peer with a valid certificate that serves honest pieces under another peer's name.

    It announces with its own token and its own peer id (the tracker refuses a peer id that
    names another token), so hosts find it at its real address; but every BitTorrent handshake
    it makes or answers carries `--claim`'s peer id, e.g. the builder's. It also dials the
    `--connect` peers itself, so they see it on incoming connections too."""
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    session = _session(args.listen, args.claim, args.claim_role)
    handles = []
    for torrent in args.torrent:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(Path(torrent).read_bytes())
        atp.save_path = args.blobs_dir
        atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        atp.flags |= lt.torrent_flags.seed_mode
        h = session.add_torrent(atp)
        h.set_ssl_certificate(args.cert, args.key, dh_params_path())
        handles.append(h)
    own = peer_tag(args.name).encode()
    own_pid = own + b"0" * (20 - len(own))
    peers = [_endpoint(p) for p in args.connect]
    replies = errors = 0
    last = 0.0
    while not stop:
        session.wait_for_alert(200)
        session.pop_alerts()
        if time.monotonic() - last >= 2 or stop:
            last = time.monotonic()
            for h in handles:  # a fresh entry at the tracker, and another try at every --connect peer
                answer = _announce(args.tracker, args.token, h.info_hashes().v2.to_bytes()[:20],
                                   session.ssl_listen_port(), own_pid, left=0)
                replies, errors = (replies + 1, errors) if "failure" not in answer else (replies, errors + 1)
                for peer in peers:
                    h.connect_peer(peer)
            _emit(_liar_stats(handles, replies, errors, 0, final=False))
    _emit(_liar_stats(handles, replies, errors, 0, final=True))


def _liar_stats(handles: list[Any], replies: int, errors: int, peers_seen: int, final: bool) -> dict[str, Any]:
    uploaded = sum(int(h.status().total_payload_upload) for h in handles)
    connected = sum(len(h.get_peer_info()) for h in handles)
    return {"uploaded": uploaded, "connected": connected, "announce_replies": replies,
            "announce_errors": errors, "peers_seen": peers_seen, "final": final}


def _announce_url(tracker: str, token: str) -> str:
    from swarm.core.tokens import JoinToken
    return f"{tracker.rstrip('/')}/announce/{JoinToken.parse(token).secret}"


def announce(args: argparse.Namespace) -> None:
    """One BitTorrent announce with the token: what peers would the tracker give us?"""
    _emit(_announce(args.tracker, args.token, bytes.fromhex(args.info_hash)[:20], args.port,
                    b"-PT0100-probe-000000"[:20], left=1))


def _announce(tracker: str, token: str, info_hash: bytes, port: int, peer_id: bytes, left: int) -> dict[str, Any]:
    query = urllib.parse.urlencode({
        "info_hash": info_hash, "peer_id": peer_id,
        "port": port, "uploaded": 0, "downloaded": 0, "left": left, "compact": 1, "event": "started",
    })
    url = f"{_announce_url(tracker, token)}?{query}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    decoded = lt.bdecode(body) if body.startswith(b"d") else None
    result: dict[str, Any] = {"status": status}
    if isinstance(decoded, dict):
        if b"failure reason" in decoded:
            result["failure"] = decoded[b"failure reason"].decode(errors="replace")
        peers = decoded.get(b"peers", b"")
        result["peers"] = len(peers) // 6 if isinstance(peers, bytes) else len(peers)
    else:
        result["body"] = body[:200].decode(errors="replace")
    return result


def fetch(args: argparse.Namespace) -> None:
    with urllib.request.urlopen(args.url, timeout=60) as resp:
        data = resp.read()
    _emit({"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="peertools")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("steal")
    p.add_argument("--torrent", required=True)
    p.add_argument("--peer", action="append", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--self-signed", action="store_true")
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--until-bytes", type=int, default=0, help="stop once this much payload arrived")
    p.set_defaults(fn=steal)
    p = sub.add_parser("enroll")
    p.add_argument("--tracker", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--data", required=True)
    p.set_defaults(fn=enroll)
    seeder = argparse.ArgumentParser(add_help=False)  # what the liar and the impostor both serve with
    for flag in ("--blobs-dir", "--cert", "--key", "--tracker", "--token", "--listen"):
        seeder.add_argument(flag, required=True)
    seeder.add_argument("--torrent", action="append", required=True)
    p = sub.add_parser("liar", parents=[seeder])
    p.add_argument("--name", default="liar")
    p.set_defaults(fn=liar)
    p = sub.add_parser("impostor", parents=[seeder])
    p.add_argument("--name", required=True, help="the token's own name (its honest peer id, for the tracker)")
    p.add_argument("--claim", required=True, help="the name its handshakes claim")
    p.add_argument("--claim-role", default="builder")
    p.add_argument("--connect", action="append", default=[])
    p.set_defaults(fn=impostor)
    p = sub.add_parser("announce")
    p.add_argument("--tracker", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--info-hash", required=True)
    p.add_argument("--port", type=int, default=6881)
    p.set_defaults(fn=announce)
    p = sub.add_parser("fetch")
    p.add_argument("--url", required=True)
    p.set_defaults(fn=fetch)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main(sys.argv[1:])
