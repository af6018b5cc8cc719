"""The tracker over HTTPS with a certificate from its own CA: hosts pin that CA
by the fingerprint in their join token, so the token only ever crosses the
network inside TLS, and an impostor tracker learns nothing."""

from __future__ import annotations

import re
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from swarm.images.synthetic import build_image, payload, run_image
from tests.support.procs import Agent, Tracker, run_swarm

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def metric_total(tracker: Tracker, ca_file: Path, prefix: str) -> float:
    context = ssl.create_default_context(cafile=str(ca_file))
    text = urllib.request.urlopen(f"{tracker.url}/metrics", context=context, timeout=10).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{prefix}\S* ([0-9.e+]+)$", text, re.M))


def test_seed_and_pull_through_an_https_tracker(tmp_path: Path, dockerd_factory: Any) -> None:
    tracker = Tracker.start(tmp_path, "--tls")
    try:
        assert tracker.url.startswith("https://127.0.0.1:")
        builder_engine, host_engine = dockerd_factory(), dockerd_factory()
        build_image(builder_engine.api(), "tls/app:1", [{"/d.bin": payload(1_000_000, seed=3)},
                                                        {"/hello.txt": b"tls\n"}],
                    cmd=["/bin/busybox", "cat", "/hello.txt"])
        key = tmp_path / "k"
        pub = run_swarm("keygen", str(key)).stdout.strip()
        builder = Agent.start(tmp_path, "builder1", tracker.url, tracker.token("builder1", "builder", "--key", pub),
                              "--docker-host", builder_engine.host)
        host = Agent.start(tmp_path, "host1", tracker.url, tracker.token("host1", "host"), "--trust", pub,
                           "--docker-host", host_engine.host)
        try:
            builder.swarm("seed", "tls/app:1", "--key", str(key))
            host.swarm("pull", "tls/app:1")
            assert run_image(host_engine.api(), "tls/app:1") == b"tls\n"
            # the announces went over HTTPS too: libtorrent trusted the pinned CA
            status = host.status()
            assert status["tracker_reachable"] is True
            received = {p["name"] for t in status["torrents"] for p in t["peers"] if p["downloaded"]}
            assert "builder1" in received
        finally:
            host.stop()
            builder.stop()
    finally:
        tracker.proc.stop()


def test_an_impostor_tracker_never_sees_the_token(tmp_path: Path) -> None:
    real = Tracker.start(tmp_path / "real", "--tls")
    impostor = Tracker.start(tmp_path / "impostor", "--tls")
    try:
        token = real.token("host1", "host")
        result = run_swarm("agent", "--tracker", impostor.url, "--token", token, "--data", str(tmp_path / "h"),
                           "--listen", "127.0.0.1:0", check=False, timeout=60)
        assert result.returncode == 1
        assert "does not match the fingerprint in the join token" in result.stderr.splitlines()[-1]
        ca = impostor.data / "ca.pem"
        assert metric_total(impostor, ca, "swarm_tracker_auth_failures_total") == 0
        assert metric_total(impostor, ca, "swarm_tracker_certificates_issued_total") == 0
    finally:
        real.proc.stop()
        impostor.proc.stop()
