"""Scenarios 6-9: revocation, an outsider, a lying peer, an impostor, and what is on the wire.

The attackers are real: plain libtorrent sessions and HTTP clients run inside
their own host namespace on the fleet's bridge (tests/e2e/peertools.py), with
exactly the parts the attack assumes (a stolen torrent, a peer list, a valid
certificate...). Each attack has a control: the same code with the missing
part given back must succeed, so a zero is not the result of a broken probe.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from swarm.images.synthetic import run_image
from tests.e2e.images import CMD, HELLO, MiB, app_layers, marker_layer
from tests.support import capture
from tests.support.procs import run_swarm, wait_for
from tests.support.testbed import PEER_PORT, Fleet, Testbed

pytestmark = [pytest.mark.netns, pytest.mark.docker, pytest.mark.slow]


def tool(bed: Testbed, host: str, *args: str, timeout: float = 90) -> dict[str, Any]:
    """Run a peertools command inside `host`'s namespace; its JSON answer."""
    result = bed.run(host, [sys.executable, "-m", "tests.e2e.peertools", *args], timeout=timeout)
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def peer_endpoints(fleet: Fleet, names: list[str]) -> list[str]:
    return [f"{fleet.host(n).ip}:{fleet.agent(n).peer_port}" for n in names]


def biggest_layer(fleet: Fleet, ref: str, where: Path) -> tuple[Any, Path]:
    layer = max(fleet.manifest(ref).layers, key=lambda layer: layer.blob_size)
    path = where / f"{layer.blob[7:19]}.torrent"
    path.write_bytes(layer.torrent)
    return layer, path


def steal(bed: Testbed, host: str, torrent: Path, peers: list[str], *how: str,
          timeout: float = 20, until_bytes: int = 0) -> dict[str, Any]:
    workdir = bed.dir / f"steal-{secrets.token_hex(3)}"
    args = ["steal", "--torrent", str(torrent), "--listen", bed.host(host).ip, "--workdir", str(workdir),
            "--timeout", str(timeout), "--until-bytes", str(until_bytes), *how]
    for peer in peers:
        args += ["--peer", peer]
    return tool(bed, host, *args, timeout=timeout + 60)


# -- 7. an outsider ------------------------------------------------------------------


def test_outsider_with_stolen_torrent_and_peer_list_gets_zero_bytes(
        fleet_factory: Callable[..., Fleet], testbed: Testbed) -> None:
    fleet = fleet_factory(hosts=2)
    fleet.build("app:1", app_layers(big=8 * MiB), CMD)
    fleet.seed("app:1")
    fleet.pull_all("app:1")
    testbed.add_host("outsider", egress=None, ingress=None)
    layer, torrent = biggest_layer(fleet, "app:1", testbed.dir)
    peers = peer_endpoints(fleet, ["builder", *fleet.host_names])

    for how in ([], ["--self-signed"]):
        got = steal(testbed, "outsider", torrent, peers, *how)
        assert got["downloaded"] == 0 and got["pieces"] == 0, (how, got)
        assert got["refused"] == len(peers), f"every peer must have dropped the outsider {how}: {got}"

    # control: from the same namespace, with a certificate of the swarm CA, the same probe gets data
    token = fleet.tracker.token("insider", "host")  # type: ignore[union-attr]
    ident = tool(testbed, "outsider", "enroll", "--tracker", fleet.url, "--token", token,
                 "--data", str(testbed.dir / "insider"))
    got = steal(testbed, "outsider", torrent, peers, "--cert", ident["cert"], "--key", ident["key"],
                until_bytes=layer.blob_size // 4)
    assert got["downloaded"] > 0, f"the control probe got nothing, so the zeros above prove nothing: {got}"


# -- 8. a lying peer -------------------------------------------------------------------


def test_lying_peer_is_detected_banned_and_every_host_gets_the_right_image(
        fleet_factory: Callable[..., Fleet], testbed: Testbed) -> None:
    # a slow builder and a liar with an unlimited link: the hosts ask the liar for most pieces
    fleet = fleet_factory(hosts=3, builder_egress="24mbit")
    builder_id = fleet.build("app:1", app_layers(), CMD)
    fleet.seed("app:1")
    manifest = fleet.manifest("app:1")
    liar = testbed.add_host("liar", egress=None, ingress=None)
    token = fleet.tracker.token("liar", "host")  # type: ignore[union-attr]
    ident = tool(testbed, "liar", "enroll", "--tracker", fleet.url, "--token", token,
                 "--data", str(testbed.dir / "liar"))
    blobs_dir = testbed.dir / "liar-blobs"
    blobs_dir.mkdir()
    args = ["liar", "--blobs-dir", str(blobs_dir), "--cert", ident["cert"], "--key", ident["key"],
            "--tracker", fleet.url, "--token", token, "--listen", f"{liar.ip}:{PEER_PORT}"]
    for layer in manifest.layers:  # an honest copy first: the liar's libtorrent checks it, then it is spoiled
        shutil.copyfile(fleet.agent("builder").data / "blobs" / layer.blob[7:], blobs_dir / layer.blob[7:])
        path = testbed.dir / f"{layer.blob[7:]}.torrent"  # the liar serves the blob named like the file
        path.write_bytes(layer.torrent)
        args += ["--torrent", str(path)]
    proc = testbed.spawn("liar", "liar", [sys.executable, "-m", "tests.e2e.peertools", *args])

    def liar_stats() -> dict[str, Any]:
        lines = [line for line in proc.text().splitlines() if line.startswith("{")]
        if proc.popen is not None and proc.popen.poll() is not None and not lines:
            raise AssertionError(f"the liar died:\n{proc.text()[-2000:]}")
        return json.loads(lines[-1]) if lines else {}

    wait_for(lambda: liar_stats().get("announce_replies", 0) >= len(manifest.layers), 60,
             "the liar to announce every layer")

    pulled = fleet.pull_all("app:1")

    for name in fleet.host_names:
        assert f"app:1 {builder_id}" in pulled[name]
        assert fleet.api(name).inspect_image("app:1")["Id"] == builder_id
        assert run_image(fleet.api(name), "app:1") == HELLO
    failed = {name: sum(t["failed_pieces"] for t in fleet.status(name)["torrents"]) for name in fleet.host_names}
    from_liar = {name: fleet.received_from(name).get("liar", 0) for name in fleet.host_names}
    assert all(from_liar.values()), f"every host took blocks from the liar: {from_liar}"
    assert all(failed.values()), f"every host saw failed pieces in its status: {failed}"

    proc.stop(signal.SIGTERM)
    final = liar_stats()
    assert final.get("final"), final
    # banned at the first bad piece: the liar, with by far the fastest link, sent little
    total = sum(layer.blob_size for layer in manifest.layers)
    assert final["uploaded"] < 0.1 * total * len(fleet.host_names), (final, failed, from_liar)


# -- 8b. an insider claiming the builder's name ----------------------------------------------

METRICS_PORT = 9464


def metric(bed: Testbed, host: str, name: str) -> float:
    """One sample of the agent's /metrics, read from inside its host."""
    text = bed.run(host, [sys.executable, "-c", "import sys, urllib.request; "
                          "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
                          f"http://{bed.host(host).ip}:{METRICS_PORT}/metrics"]).stdout
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in the metrics of {host}")


def test_an_insider_claiming_the_builders_peer_id_is_not_counted_as_the_builder(
        fleet_factory: Callable[..., Fleet], testbed: Testbed) -> None:
    """Attack: mallory, with a valid host token and certificate, announces honestly (the tracker refuses
    a peer id naming another token) but sends the builder's peer id in every handshake, on connections
    the hosts open and on connections it opens itself. Its link is fast and the builder's slow, so the
    hosts take most blocks from it. Hosts must label those bytes mallory's (or unverified), not the
    builder's: in `swarm status` and in swarm_agent_received_bytes{source="builder"}."""
    fleet = fleet_factory(hosts=2, builder_egress="8mbit",
                          agent_args=("--metrics-listen", f"0.0.0.0:{METRICS_PORT}"),
                          builder_args=("--metrics-listen", f"0.0.0.0:{METRICS_PORT}"))
    builder_id = fleet.build("app:1", app_layers(), CMD)
    fleet.seed("app:1")
    manifest = fleet.manifest("app:1")
    mallory = testbed.add_host("mallory", egress=None, ingress=None)
    token = fleet.tracker.token("mallory", "host")  # type: ignore[union-attr]
    ident = tool(testbed, "mallory", "enroll", "--tracker", fleet.url, "--token", token,
                 "--data", str(testbed.dir / "mallory"))
    blobs_dir = testbed.dir / "mallory-blobs"
    blobs_dir.mkdir()
    args = ["impostor", "--blobs-dir", str(blobs_dir), "--cert", ident["cert"], "--key", ident["key"],
            "--tracker", fleet.url, "--token", token, "--listen", f"{mallory.ip}:{PEER_PORT}",
            "--name", "mallory", "--claim", "builder", "--claim-role", "builder"]
    for peer in peer_endpoints(fleet, fleet.host_names):
        args += ["--connect", peer]
    for layer in manifest.layers:
        shutil.copyfile(fleet.agent("builder").data / "blobs" / layer.blob[7:], blobs_dir / layer.blob[7:])
        path = testbed.dir / f"{layer.blob[7:19]}.torrent"
        path.write_bytes(layer.torrent)
        args += ["--torrent", str(path)]
    proc = testbed.spawn("mallory", "impostor", [sys.executable, "-m", "tests.e2e.peertools", *args])

    def impostor_stats() -> dict[str, Any]:
        lines = [line for line in proc.text().splitlines() if line.startswith("{")]
        if proc.popen is not None and proc.popen.poll() is not None and not lines:
            raise AssertionError(f"the impostor died:\n{proc.text()[-2000:]}")
        return json.loads(lines[-1]) if lines else {}

    wait_for(lambda: impostor_stats().get("announce_replies", 0) >= len(manifest.layers), 60,
             "the impostor to announce every layer")
    assert impostor_stats()["announce_errors"] == 0, impostor_stats()

    pulled = fleet.pull_all("app:1")
    for name in fleet.host_names:
        assert f"app:1 {builder_id}" in pulled[name]
    proc.stop(signal.SIGTERM)
    final = impostor_stats()
    assert final.get("final"), final

    received = {name: fleet.received_from(name) for name in fleet.host_names}
    named_builder = sum(r.get("builder", 0) for r in received.values())
    as_impostor = sum(n for r in received.values() for peer, n in r.items() if peer in ("mallory", "?builder"))
    builder_sent = metric(testbed, "builder", "swarm_agent_sent_bytes_total")
    metric_builder = sum(metric(testbed, name, 'swarm_agent_received_bytes_total{source="builder"}')
                         for name in fleet.host_names)
    total = sum(layer.blob_size for layer in manifest.layers) * len(fleet.host_names)
    # control: the attack happened (hosts also trade with each other, so the impostor's share varies
    # from run to run, 0.8-4 MiB here; 256 KiB is 16 blocks)
    assert final["uploaded"] > 256 * 1024, (final, received)
    # the defence: nothing counted as the builder's beyond what the builder really sent
    assert named_builder <= builder_sent, (named_builder, builder_sent, received)
    assert metric_builder <= builder_sent, (metric_builder, builder_sent, received)
    # ... because the hosts saw the impostor's bytes under its own name, or as unverified
    assert as_impostor > 256 * 1024, received
    # and the honest builder is still named the builder
    assert named_builder > 0 and metric_builder > 0, received


# -- 9. nothing in clear on the wire -----------------------------------------------------


def test_marker_never_appears_on_the_wire(fleet_factory: Callable[..., Fleet], testbed: Testbed) -> None:
    fleet = fleet_factory(hosts=3)
    marker = b"SWARM-E2E-CONFIDENTIAL-" + secrets.token_hex(8).encode()
    layers = [
        {"/secret/notes.txt": b"".join(b"line %d of the notes: " % i + marker + b"\n" for i in range(20000))},
        {"/secret/blob.bin": marker_layer(marker, 6 * MiB)},
        {"/hello.txt": HELLO},
    ]
    builder_id = fleet.build("secret:1", layers, CMD)
    cap = testbed.capture("distribution")
    fleet.seed("secret:1")
    fleet.pull_all("secret:1")
    cap.stop()

    for name in fleet.host_names:
        assert fleet.api(name).inspect_image("secret:1")["Id"] == builder_id
    manifest = fleet.manifest("secret:1")
    blobs = {layer.blob: fleet.agent("builder").data / "blobs" / layer.blob[7:] for layer in manifest.layers}
    literal = [b for b, path in blobs.items() if marker in path.read_bytes()]
    assert literal, "the marker must be readable in a transport blob, or this test proves nothing"
    # the capture saw the distribution: at least every host's copy of every blob crossed the bridge
    sizes = sum(layer.blob_size for layer in manifest.layers)
    assert capture.payload_bytes(cap.path, PEER_PORT) >= sizes * len(fleet.host_names)
    assert cap.dropped == 0, f"tcpdump dropped {cap.dropped} packets"
    assert capture.find(cap.path, marker) == []

    # control: the same blob over plain HTTP on the same bridge shows the marker to the same capture code
    blob = literal[0]
    builder = testbed.host("builder")
    server = testbed.spawn("builder", "http-server", [
        sys.executable, "-m", "http.server", "--bind", builder.ip, "8000", "--directory", str(blobs[blob].parent)])
    server.wait_line(r"Serving HTTP", 30)
    control = testbed.capture("control")
    got = tool(testbed, "h1", "fetch", "--url", f"http://{builder.ip}:8000/{blob[7:]}")
    control.stop()
    assert got["sha256"] == blob[7:]
    assert capture.find(control.path, marker), "the control capture must show the marker sent in clear"


# -- 6. revocation ---------------------------------------------------------------------


def test_revoked_host_gets_nothing_and_is_out_after_certificate_expiry(
        fleet_factory: Callable[..., Fleet], testbed: Testbed) -> None:
    fleet = fleet_factory(hosts=3, tracker_args=("--announce-interval", "5", "--cert-lifetime", "60"))
    fleet.build("app:1", app_layers(big=8 * MiB), CMD)
    fleet.seed("app:1")
    fleet.pull_all("app:1")
    victim = "h3"
    expires = fleet.status(victim)["certificate_expires"]
    layer, torrent = biggest_layer(fleet, "app:1", testbed.dir)
    cert = str(fleet.agent(victim).data / "identity" / "host.pem")
    key = str(fleet.agent(victim).data / "identity" / "host.key")
    honest = peer_endpoints(fleet, ["builder", "h1", "h2"])

    tracker = fleet.tracker
    assert tracker is not None
    run_swarm("tracker", "token", "revoke", victim, "--data", str(tracker.data))
    revoked_at = time.time()
    assert revoked_at < expires - 15, "too little certificate lifetime left for the checks before expiry"

    # no peers: an announce with the revoked token is refused; the same with a live token is answered
    args = ["--tracker", fleet.url, "--info-hash", layer.info_hash.hex()]  # v2 announces its first 20 bytes
    refused = tool(testbed, victim, "announce", "--token", fleet.tokens[victim], *args)
    assert "failure" in refused or refused["status"] >= 400, refused
    assert refused.get("peers", 0) == 0, refused
    answered = tool(testbed, "h1", "announce", "--token", fleet.tokens["h1"], *args)
    assert "failure" not in answered and answered["peers"] >= 2, answered
    # no manifest: a tag published after the revocation cannot be pulled
    fleet.api("builder").tag("app:1", "app", "2")
    fleet.seed("app:2")
    result = fleet.agent(victim).swarm("pull", "app:2", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "refused" in result.stderr or "429" in result.stderr or "rate" in result.stderr.lower(), result.stderr
    # until its certificate expires the host is still a peer (the documented window): the control
    got = steal(testbed, victim, torrent, honest, "--cert", cert, "--key", key, until_bytes=layer.blob_size // 4)
    assert got["downloaded"] > 0, f"before expiry the certificate must still work: {got}"

    # no new certificate: the renewal at 2/3 of the lifetime is refused, the old expiry stays
    fleet.wait(lambda: fleet.status(victim)["certificate_error"], 60, f"{victim} to fail its renewal")
    status = fleet.status(victim)
    assert status["certificate_expires"] == expires
    assert "refused" in status["certificate_error"] or "429" in status["certificate_error"], status
    for other in ("h1", "h2"):  # the others renewed
        fleet.wait(lambda other=other: fleet.status(other)["certificate_expires"] > expires, 60,
                   f"{other} to renew its certificate")

    # after expiry: no peer accepts its certificate any more
    wait_for(lambda: time.time() > expires + 2, expires + 10 - time.time(), "the certificate to expire")
    got = steal(testbed, victim, torrent, honest, "--cert", cert, "--key", key)
    assert got["downloaded"] == 0 and got["refused"] == len(honest), got
    status = fleet.status(victim)
    connected = [p for t in status["torrents"] for p in t["peers"] if p["connected"]]
    assert connected == [], connected
    result = fleet.agent(victim).swarm("pull", "app:2", check=False)
    assert result.returncode == 1
    # and the rest of the fleet still works: a fresh pull of app:2 on h1
    fleet.pull_all("app:2", names=["h1"])


# -- 10. host groups: no byte of a pci image reaches a web-only host -------------------------


def test_two_groups_across_four_hosts_no_pci_bytes_reach_a_web_only_host(
        fleet_factory: Callable[..., Fleet], testbed: Testbed) -> None:
    """h1, h2 in web; h3 in web and pci; h4 in pci. Memberships change after every agent enrolled, so
    the builder and each host also renew their certificate for the new group SANs on their own."""
    web, pci = "shop/front:1", "payments/api:1"
    fleet = fleet_factory(hosts=4)
    assert fleet.tracker is not None
    data = str(fleet.tracker.data)
    for group in ("web", "pci"):
        run_swarm("tracker", "group", "add", group, "--data", data)
    run_swarm("tracker", "group", "map", "shop/*", "web", "--data", data)
    run_swarm("tracker", "group", "map", "payments/*", "pci", "--data", data)
    members = {"h1": ["web"], "h2": ["web"], "h3": ["web", "pci"], "h4": ["pci"]}
    for host, groups in members.items():
        adds = [a for g in groups for a in ("--add", g)]
        run_swarm("tracker", "token", "groups", host, *adds, "--remove", "default", "--data", data)
    marker = b"SWARM-E2E-PCI-ONLY-" + secrets.token_hex(8).encode()
    ids = {web: fleet.build(web, app_layers(big=8 * MiB, seed=3), CMD),
           pci: fleet.build(pci, [{"/cards.bin": marker_layer(marker, 6 * MiB)}, {"/hello.txt": HELLO}], CMD)}
    cap = testbed.capture("groups")
    fleet.seed(web, pci)
    jobs = [fleet.start_pull("h1", web), fleet.start_pull("h2", web), fleet.start_pull("h3", web, pci),
            fleet.start_pull("h4", pci)]
    for job in jobs:
        job.ok()
    cap.stop()
    assert cap.dropped == 0, f"tcpdump dropped {cap.dropped} packets"
    for host, groups in members.items():
        for ref, group in ((web, "web"), (pci, "pci")):
            if group in groups:
                assert fleet.api(host).inspect_image(ref)["Id"] == ids[ref]
    refused = fleet.agent("h1").swarm("pull", pci, check=False)
    assert refused.returncode == 1 and "unknown image" in refused.stderr, refused.stderr

    # every peer connection opens with a TLS ClientHello whose SNI is the torrent's announce hash
    streams = capture.tcp_streams(cap.path)
    opened = capture.tls_server_names(streams)
    hashes = {ref: {layer.announce_hash.hex() for layer in fleet.manifest(ref).layers} for ref in (web, pci)}
    ip = {name: fleet.host(name).ip for name in members}
    web_only = {ip["h1"], ip["h2"]}

    def reverse(flow: capture.Flow) -> capture.Flow:
        return (flow[2], flow[3], flow[0], flow[1])

    def sni(flow: capture.Flow) -> str | None:
        return opened.get(flow) or opened.get(reverse(flow))

    received: dict[tuple[str, str], int] = {}  # (host ip, ref) -> payload bytes towards it
    for flow, stream in streams.items():
        if PEER_PORT not in (flow[1], flow[3]) or not stream:
            continue
        name = sni(flow)
        ref = next((r for r, hs in hashes.items() if name in hs), None)
        assert ref is not None, f"a peer connection {flow} without a known torrent's SNI ({name})"
        received[(flow[2], ref)] = received.get((flow[2], ref), 0) + len(stream)
    # not one connection of a pci torrent touched a web-only host, in either direction
    pci_links = [f for f in opened if opened[f] in hashes[pci]]
    assert pci_links and not [f for f in pci_links if {f[0], f[2]} & web_only], pci_links
    assert all(received.get((h, pci), 0) == 0 for h in web_only), received
    # controls: the same capture code sees each image reach its group's hosts, at least its blobs' size
    sizes = {ref: sum(layer.blob_size for layer in fleet.manifest(ref).layers) for ref in (web, pci)}
    assert received.get((ip["h4"], pci), 0) + received.get((ip["h3"], pci), 0) >= sizes[pci], received
    assert all(received.get((h, web), 0) > 0 for h in web_only), received
    assert capture.find(cap.path, marker) == []
