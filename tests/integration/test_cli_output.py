"""What the client commands print at a terminal and in a pipe (no agent needed)."""

from __future__ import annotations

from pathlib import Path

from tests.support.procs import SWARM, run_swarm
from tests.support.terminal import DRAWING, run_in_pty


def _tokens(tmp_path: Path) -> str:
    data = str(tmp_path / "data")
    run_swarm("tracker", "token", "create", "b1", "--role", "builder", "--data", data)
    run_swarm("tracker", "token", "create", "web-01", "--role", "host", "--data", data)
    run_swarm("tracker", "token", "revoke", "web-01", "--data", data)
    return data


def test_token_list_is_plain_in_a_pipe(tmp_path: Path) -> None:
    out = run_swarm("tracker", "token", "list", "--data", _tokens(tmp_path)).stdout
    assert not DRAWING & set(out) and "\x1b" not in out, out
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["name", "role", "created", "revoked"]
    assert lines[1][:2] == ["b1", "builder"] and lines[1][3] == "-"
    assert lines[2][:2] == ["web-01", "host"] and lines[2][3].endswith("Z")
    assert all(len(line) == 4 for line in lines)


def test_token_list_is_a_table_at_a_terminal(tmp_path: Path) -> None:
    code, screen = run_in_pty([*SWARM, "tracker", "token", "list", "--data", _tokens(tmp_path)])
    assert code == 0
    assert DRAWING & set(screen) and "web-01" in screen and "builder" in screen
