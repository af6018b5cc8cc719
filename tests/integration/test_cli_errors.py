"""The CLI's one-line errors and exit codes for bad input (no agent, no tracker needed)."""

from __future__ import annotations

from pathlib import Path

from tests.support.procs import run_swarm


def test_agent_not_running(tmp_path: Path) -> None:
    result = run_swarm("pull", "myapp:1", "--data", str(tmp_path), check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: no agent running at {tmp_path}/agent.sock: " \
                                    "start one with `swarm agent --data DIR ...`"


def test_status_needs_data_or_socket() -> None:
    result = run_swarm("status", check=False)
    assert result.returncode == 2 and "give --data DIR" in result.stderr


def test_invalid_image_name_is_a_usage_error(tmp_path: Path) -> None:
    result = run_swarm("pull", "Bad Name", "--data", str(tmp_path), check=False)
    assert result.returncode == 2
    assert "invalid image name" in result.stderr and "Traceback" not in result.stderr


def test_missing_arguments_exit_2() -> None:
    result = run_swarm("pull", check=False)
    assert result.returncode == 2


def test_malformed_token_and_token_file_choice(tmp_path: Path) -> None:
    base = ["agent", "--tracker", "http://127.0.0.1:9", "--data", str(tmp_path / "d")]
    result = run_swarm(*base, "--token", "nope", check=False)
    assert result.returncode == 2 and "malformed join token" in result.stderr
    result = run_swarm(*base, check=False)
    assert result.returncode == 2 and "exactly one of --token and --token-file" in result.stderr
    token = tmp_path / "token"
    token.write_text("swarm1." + "a" * 40 + "." + "b" * 64 + "\n")
    trust = tmp_path / "trust"
    trust.write_text("# builders\nnot-a-key\n")
    result = run_swarm(*base, "--token-file", str(token), "--trust-file", str(trust), check=False)
    assert result.returncode == 2 and "invalid public key" in result.stderr


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "k"
    first = run_swarm("keygen", str(key))
    assert first.stdout.startswith("ed25519:")
    second = run_swarm("keygen", str(key), check=False)
    assert second.returncode == 2 and "already exists" in second.stderr


def test_seed_with_missing_key(tmp_path: Path) -> None:
    result = run_swarm("seed", "myapp:1", "--key", str(tmp_path / "none"), "--data", str(tmp_path), check=False)
    assert result.returncode == 2 and "cannot read signing key" in result.stderr
