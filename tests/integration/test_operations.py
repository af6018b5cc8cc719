"""Running swarm as an operator does: start order, SIGHUP, probes, logs.

Real tracker and agent processes, a real dockerd, HTTP on loopback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from swarm.core.signing import SigningKey
from tests.support.procs import Agent, Tracker, run_swarm, wait_for
from tests.support.redis import RedisServer, free_port

pytestmark = [pytest.mark.slow]


def probe(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.docker
def test_agent_started_before_its_tracker_waits_then_enrolls(tmp_path: Path, dockerd: Any) -> None:
    port = free_port()
    data = tmp_path / "tracker"
    token = run_swarm("tracker", "token", "create", "early", "--role", "host", "--data", str(data)).stdout.strip()
    agent = Agent.start(tmp_path, "early", f"http://127.0.0.1:{port}", token, "--docker-host", dockerd.host,
                        wait=False)
    agent.proc.wait_line(r"tracker unreachable at http://127\.0\.0\.1:\d+.*; retrying in 2s", timeout=60)
    assert agent.proc.popen is not None and agent.proc.popen.poll() is None
    tracker = Tracker.start(tmp_path, listen=f"127.0.0.1:{port}")
    try:
        agent.proc.wait_line(r"agent ready: early \(host\)", timeout=120)
        retries = agent.proc.text().count("retrying in")
        assert retries <= 8, "the pauses between attempts must grow"
        assert agent.status()["name"] == "early"
    finally:
        assert agent.stop() == 0
        tracker.proc.stop()


@pytest.mark.docker
def test_stop_signal_while_waiting_for_the_tracker_exits_cleanly(tmp_path: Path, dockerd: Any) -> None:
    token = "swarm1." + "a" * 40 + "." + "b" * 64
    agent = Agent.start(tmp_path, "patient", f"http://127.0.0.1:{free_port()}", token,
                        "--docker-host", dockerd.host, wait=False)
    agent.proc.wait_line("retrying in", timeout=60)
    assert agent.stop() == 0
    assert not (agent.data / "agent.sock").exists()


@pytest.mark.docker
def test_sighup_reloads_trust_watch_limits_and_log_level(tmp_path: Path, dockerd: Any) -> None:
    tracker = Tracker.start(tmp_path)
    key_a, key_b = SigningKey.generate().public_text, SigningKey.generate().public_text
    config = tmp_path / "agent.toml"
    config.write_text(f'trust = ["{key_a}"]\nupload-limit = "1MB/s"\n')
    metrics = free_port()
    agent = Agent.start(tmp_path, "reloaded", tracker.url, tracker.token("reloaded", "host"),
                        "--docker-host", dockerd.host, "--config", str(config),
                        "--metrics-listen", f"127.0.0.1:{metrics}")
    try:
        assert agent.status()["trusted_keys"] == [key_a]
        config.write_text(f'trust = ["{key_a}", "{key_b}"]\nupload-limit = "2MB/s"\nwatch = ["app:*"]\n'
                          'log-level = "debug"\ncache-size = "1GB"\n')
        assert agent.proc.popen is not None
        agent.proc.popen.send_signal(signal.SIGHUP)
        agent.proc.wait_line(r"reloaded: upload_limit, watch, trust, log_level changed; "
                             r"restart to apply cache_size", timeout=30)
        assert agent.status()["trusted_keys"] == [key_a, key_b]
        assert agent.proc.popen.poll() is None and (agent.data / "agent.sock").exists()
        # a broken file keeps the running configuration
        config.write_text('trust = ["not-a-key"]\n')
        agent.proc.popen.send_signal(signal.SIGHUP)
        agent.proc.wait_line(r"configuration not reloaded, keeping the running one: .*invalid public key", 30)
        assert agent.status()["trusted_keys"] == [key_a, key_b]
        assert probe(f"http://127.0.0.1:{metrics}/readyz")[0] == 200
    finally:
        assert agent.stop() == 0
        tracker.proc.stop()


@pytest.mark.docker
def test_agent_probes_follow_the_tracker(tmp_path: Path, dockerd: Any) -> None:
    tracker = Tracker.start(tmp_path)
    port = free_port()
    agent = Agent.start(tmp_path, "probed", tracker.url, tracker.token("probed", "host"),
                        "--docker-host", dockerd.host, "--metrics-listen", f"127.0.0.1:{port}")
    try:
        assert probe(f"http://127.0.0.1:{port}/healthz") == (200, {"alive": True})
        assert probe(f"http://127.0.0.1:{port}/readyz") == (
            200, {"ready": True, "checks": {"session": True, "certificate": True, "tracker": True}})
        tracker.proc.stop()
        status, body = probe(f"http://127.0.0.1:{port}/readyz")
        assert status == 503 and body["checks"]["tracker"] is False and body["checks"]["session"] is True
        assert probe(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        agent.stop()


def test_tracker_readyz_false_when_the_database_or_redis_is_gone(tmp_path: Path) -> None:
    tracker = Tracker.start(tmp_path)
    try:
        assert probe(tracker.url + "/healthz") == (200, {"alive": True})
        assert probe(tracker.url + "/readyz") == (200, {"ready": True, "checks": {"database": True, "peers": True}})
        (tracker.data / "tracker.db").unlink()
        status, body = probe(tracker.url + "/readyz")
        assert status == 503 and body == {"ready": False, "checks": {"database": False, "peers": True}}
        assert probe(tracker.url + "/healthz")[0] == 200
    finally:
        tracker.proc.stop()
    with RedisServer.start(tmp_path / "redis") as redis:
        tracker = Tracker.start(tmp_path / "r", "--redis", redis.url)
        try:
            assert probe(tracker.url + "/readyz")[0] == 200
            redis.stop()
            status, body = probe(tracker.url + "/readyz")
            assert status == 503 and body["checks"] == {"database": True, "peers": False}
        finally:
            tracker.proc.stop()


def test_tracker_json_logs_parse_and_name_every_refusal(tmp_path: Path) -> None:
    tracker = Tracker.start(tmp_path, "--log-format", "json")
    try:
        revoked = tracker.token("gone", "host")
        run_swarm("tracker", "token", "revoke", "gone", "--data", str(tracker.data))
        request = urllib.request.Request(tracker.url + "/v1/manifests",
                                         headers={"Authorization": f"Bearer {revoked.split('.')[1]}"})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=10)
        for path in ("/healthz", "/readyz", "/metrics", "/v1/health"):
            urllib.request.urlopen(tracker.url + path, timeout=10).read()

        def refusal() -> dict[str, Any] | None:
            return next((e for e in entries() if e["level"] == "warning" and " 401 " in e["message"]), None)

        def entries() -> list[dict[str, Any]]:
            lines = [ln for ln in tracker.proc.text().splitlines() if not ln.startswith("tracker listening on")]
            return [json.loads(ln) for ln in lines]  # every other line is one JSON object

        entry = wait_for(refusal, 20, "the 401 in the log")
        assert "from 127.0.0.1 token gone:" in entry["message"] and entry["logger"] == "aiohttp.access"
        assert revoked.split(".")[1] not in tracker.proc.text()
        assert not any(p in e["message"] for e in entries() for p in ("/healthz", "/readyz", "/metrics"))
    finally:
        tracker.proc.stop()


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in metrics:\n{text}"
    return float(m.group(1))


def test_counters_never_go_backwards_across_scrapes_with_three_workers(tmp_path: Path) -> None:
    with RedisServer.start(tmp_path / "redis") as redis:
        tracker = Tracker.start(tmp_path, "--redis", redis.url, "--workers", "3", "--auth-failure-limit", "0")
        try:
            last = 0.0
            for i in range(1, 31):
                # a new connection each time, so SO_REUSEPORT spreads requests and scrapes over the workers
                request = urllib.request.Request(tracker.url + "/v1/manifests",
                                                 headers={"Authorization": "Bearer " + "0" * 40})
                with pytest.raises(urllib.error.HTTPError):
                    urllib.request.urlopen(request, timeout=10)
                with urllib.request.urlopen(tracker.url + "/metrics", timeout=10) as resp:
                    text = resp.read().decode()
                value = metric(text, 'swarm_tracker_auth_failures_total{reason="unknown"}')
                assert value >= last, f"scrape {i}: the counter went back from {last} to {value}"
                last = value
                assert metric(text, "swarm_tracker_enrolled_hosts") == 0
            assert last == 30, "every worker's refusals are counted, once"
            assert re.search(r'^swarm_tracker_build_info\{python="[\d.]+",version="[^"]+"\} 1\.0$', text, re.M)
        finally:
            tracker.proc.stop()
        assert len(list((tracker.data / "metrics").glob("counter_*.db"))) == 3, "three processes counted"


def test_probe_checks_a_tls_tracker_against_its_ca(tmp_path: Path) -> None:
    tracker = Tracker.start(tmp_path, "--tls")
    try:
        assert tracker.url.startswith("https://")
        ok = run_swarm("probe", tracker.url + "/readyz", "--ca", str(tracker.data / "ca.pem"))
        assert json.loads(ok.stdout)["ready"] is True
        unverified = run_swarm("probe", tracker.url + "/healthz", check=False)
        assert unverified.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in unverified.stderr
        assert "Traceback" not in unverified.stderr
        (tracker.data / "tracker.db").unlink()
        gone = run_swarm("probe", tracker.url + "/readyz", "--ca", str(tracker.data / "ca.pem"), check=False)
        assert gone.returncode == 1 and gone.stderr.startswith(f"error: {tracker.url}/readyz answered 503")
    finally:
        tracker.proc.stop()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_container_healthcheck_script_probes_the_tracker(tmp_path: Path, tls: bool) -> None:
    port = free_port()
    tracker = Tracker.start(tmp_path, *(["--tls"] if tls else []), listen=f"127.0.0.1:{port}")
    script = Path(__file__).parents[2] / "deploy" / "docker" / "healthcheck.sh"
    env = {**os.environ, "SWARM_LISTEN": f"0.0.0.0:{port}", "SWARM_DATA": str(tracker.data),
           "SWARM_TLS": "true" if tls else "", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        result = subprocess.run(["sh", str(script), "tracker"], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["ready"] is True
    finally:
        tracker.proc.stop()
    result = subprocess.run(["sh", str(script), "tracker"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.startswith("error: ")


def test_backup_while_running_then_restore_keeps_tokens_and_ca(tmp_path: Path) -> None:
    tracker = Tracker.start(tmp_path)
    try:
        kept = tracker.token("kept", "host")
        archive = tmp_path / "tracker-backup.tar"
        run_swarm("tracker", "backup", str(archive), "--data", str(tracker.data))
        assert archive.stat().st_mode & 0o777 == 0o600
        later = tracker.token("after-backup", "host")
    finally:
        tracker.proc.stop()
    target = tmp_path / "restored" / "tracker"
    assert run_swarm("tracker", "db", "status", "--data", str(target)).stdout.startswith(
        f"sqlite:{target}/tracker.db: schema 0")
    run_swarm("tracker", "restore", str(archive), "--data", str(target))
    again = run_swarm("tracker", "restore", str(archive), "--data", str(target), check=False)
    assert again.returncode == 2 and "add --force" in again.stderr
    assert (target / "ca.key").stat().st_mode & 0o777 == 0o600
    assert "up to date" in run_swarm("tracker", "db", "status", "--data", str(target)).stdout
    restored = Tracker.start(tmp_path / "restored")
    try:
        assert urllib.request.urlopen(restored.url + "/v1/ca", timeout=10).read() == \
            (tracker.data / "ca.pem").read_bytes(), "the tokens handed out pin this CA"

        def status_for(token: str) -> int:
            request = urllib.request.Request(restored.url + "/v1/manifests",
                                             headers={"Authorization": f"Bearer {token.split('.')[1]}"})
            try:
                return int(urllib.request.urlopen(request, timeout=10).status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert status_for(kept) == 200 and status_for(later) == 401
    finally:
        restored.proc.stop()


def test_backup_and_restore_refuse_bad_input_in_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar")
    result = run_swarm("tracker", "restore", str(junk), "--data", str(tmp_path / "d"), check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: cannot read backup")
    result = run_swarm("tracker", "backup", str(tmp_path / "b.tar"), "--data", str(tmp_path / "none"), check=False)
    assert result.returncode == 2 and "no tracker database" in result.stderr
    result = run_swarm("tracker", "backup", str(tmp_path / "b.tar"), "--database", "postgresql://x/y", check=False)
    assert result.returncode == 2 and "pg_dump" in result.stderr
    for out in (result.stderr,):
        assert "Traceback" not in out


def test_db_status_shows_pending_migrations_and_migrate_applies_them(tmp_path: Path) -> None:
    import sqlite3

    from swarm.tracker.storage import migrations

    data = tmp_path / "old"
    data.mkdir()
    conn = sqlite3.connect(data / "tracker.db")
    for statement in migrations.statements(migrations.scripts("sqlite")[1]):
        conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.commit()
    conn.close()
    latest = migrations.latest("sqlite")
    assert latest > 1
    status = run_swarm("tracker", "db", "status", "--data", str(data)).stdout
    assert f"schema 1, this swarm's {latest} ({latest - 1} migration(s) pending" in status
    assert "schema 1" in run_swarm("tracker", "db", "status", "--data", str(data)).stdout, "status changes nothing"
    migrated = run_swarm("tracker", "db", "migrate", "--data", str(data)).stdout
    assert migrated.startswith("migrated from schema 1:") and f"schema {latest}" in migrated and "up to date" in migrated


@pytest.mark.docker
def test_image_list_shows_published_tags_by_pattern(tmp_path: Path, dockerd: Any) -> None:
    from swarm.images.synthetic import build_image, payload

    tracker = Tracker.start(tmp_path)
    key = tmp_path / "builder.key"
    run_swarm("keygen", str(key))
    builder = Agent.start(tmp_path, "lister", tracker.url, tracker.token("lister", "builder"),
                          "--docker-host", dockerd.host)
    try:
        for ref in ("listed/app:1", "listed/web:1"):
            build_image(dockerd.api(), ref, [{"/x.bin": payload(1000, seed=len(ref))}], cmd=["/x.bin"])
            builder.swarm("seed", ref, "--key", str(key))
        every = run_swarm("tracker", "image", "list", "--data", str(tracker.data)).stdout
        assert "listed/app:1" in every and "listed/web:1" in every and "lister" in every
        some = run_swarm("tracker", "image", "list", "listed/web", "--data", str(tracker.data)).stdout
        assert "listed/web:1" in some and "listed/app:1" not in some
    finally:
        builder.stop()
        tracker.proc.stop()


@pytest.mark.docker
def test_tracker_outage_is_one_line_when_lost_and_one_when_regained(tmp_path: Path, dockerd: Any) -> None:
    from swarm.images.synthetic import build_image, payload

    port = free_port()
    tracker = Tracker.start(tmp_path, "--announce-interval", "2", "--min-interval", "0", listen=f"127.0.0.1:{port}")
    key = tmp_path / "builder.key"
    run_swarm("keygen", str(key))
    builder = Agent.start(tmp_path, "outage", tracker.url, tracker.token("outage", "builder"),
                          "--docker-host", dockerd.host, "--log-level", "debug")
    try:
        build_image(dockerd.api(), "outage/app:1", [{"/a.bin": payload(1000, seed=1)}, {"/b.bin": payload(900, seed=2)},
                                                   {"/c.bin": payload(800, seed=3)}], cmd=["/a.bin"])
        builder.swarm("seed", "outage/app:1", "--key", str(key))
        tracker.proc.stop()
        # libtorrent retries every torrent's announce: debug lines, each of them
        wait_for(lambda: builder.proc.text().count("DEBUG swarm.engine.session: tracker: ") >= 4, 120,
                 "several failed announces")
        assert builder.proc.text().count("WARNING swarm.engine.session: tracker lost") == 1
        tracker = Tracker.start(tmp_path, listen=f"127.0.0.1:{port}", log=tmp_path / "logs" / "tracker2.log")
        builder.proc.wait_line("tracker regained", timeout=120)
        assert builder.proc.text().count("tracker regained") == 1
    finally:
        builder.stop()
        tracker.proc.stop()
