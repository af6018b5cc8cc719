"""A real builder agent seeding layers whose manifest is removed at a real tracker: the tracker
answers "retired torrent", the agent stops announcing that layer for good (logged once) and keeps
seeding a layer another live tag still names."""

from __future__ import annotations

import re
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from swarm.core.signing import SignedManifest
from swarm.images.synthetic import build_image
from tests.support.procs import Agent, Tracker, run_swarm, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def blobs_of(tracker: Tracker, ref: str) -> set[str]:
    db = sqlite3.connect(tracker.data / "tracker.db")
    try:
        (raw,) = db.execute("SELECT envelope FROM manifests WHERE ref = ?", (ref,)).fetchone()
    finally:
        db.close()
    return {layer.blob for layer in SignedManifest.from_bytes(raw).verify(None).layers}


def announces(tracker: Tracker, result: str) -> int:
    with urllib.request.urlopen(tracker.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    m = re.search(rf'swarm_tracker_announces_total\{{result="{result}"\}} (\S+)', text)
    return int(float(m.group(1))) if m else 0


def after_more_announces(tracker: Tracker, n: int) -> None:
    """Wait until the tracker has answered `n` more regular announces."""
    def answered() -> int:
        return announces(tracker, "ok") + announces(tracker, "cached")
    start = answered()
    wait_for(lambda: answered() >= start + n, 60, f"{n} more announces")


def test_agent_stops_announcing_a_layer_whose_manifest_was_removed(tmp_path: Path, dockerd: Any) -> None:
    tracker = Tracker.start(tmp_path, "--announce-interval", "2", "--min-interval", "1")
    key = tmp_path / "builder.key"
    pubkey = run_swarm("keygen", str(key)).stdout.strip()
    api = dockerd.api()
    build_image(api, "retire/app:1", [{"/base.txt": b"shared base\n"}, {"/one.txt": b"one\n"}], cmd=["/one.txt"])
    build_image(api, "retire/app:2", [{"/base.txt": b"shared base\n"}, {"/two.txt": b"two\n"}], cmd=["/two.txt"])
    builder = Agent.start(tmp_path, "builder1", tracker.url, tracker.token("builder1", "builder", "--key", pubkey),
                          "--docker-host", dockerd.host)
    try:
        builder.swarm("seed", "retire/app:1", "retire/app:2", "--key", str(key))
        one, two = blobs_of(tracker, "retire/app:1"), blobs_of(tracker, "retire/app:2")
        [only_one] = one - two
        assert one | two <= {t["blob"] for t in builder.status()["torrents"]}

        out = run_swarm("tracker", "image", "rm", "retire/app:1", "--data", str(tracker.data))
        assert "removed retire/app:1" in out.stderr

        builder.proc.wait_line(rf"layer {re.escape(only_one)} retired by the tracker", timeout=60)
        left = {t["blob"] for t in builder.status()["torrents"]}
        assert only_one not in left and two <= left
        # no retry: once the removal's own `stopped` announce is answered too, the count stays put
        # while the live torrents go on announcing (every 2 s)
        assert announces(tracker, "retired_torrent") >= 1
        after_more_announces(tracker, 2 * len(left))
        settled = announces(tracker, "retired_torrent")
        after_more_announces(tracker, 2 * len(left))
        assert announces(tracker, "retired_torrent") == settled
        assert builder.proc.text().count("retired by the tracker") == 1
    finally:
        builder.stop()
        tracker.proc.stop()
