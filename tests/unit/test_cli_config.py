"""Where option values come from: flag > SWARM_* variable > config file > default, through the real commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest

from swarm.cli.config import default_state_dir
from swarm.cli.main import agent, cli
from swarm.core.errors import UsageError
from swarm.tracker.cli import serve

TOKEN = "swarm1." + "a" * 40 + "." + "b" * 64


def parsed(command: click.Command, *args: str) -> dict[str, Any]:
    """The command's option values exactly as it would run with them (nothing is started)."""
    return command.make_context(command.name or "", list(args)).params


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('tracker = "http://file:7070"\n'
                      f'token = "{TOKEN}"\n'
                      'upload-limit = "1MB/s"\n'
                      'download_limit = "2MB/s"\n'
                      'cache-size = "3GB"\n'
                      'watch = ["app:*", "web/*"]\n'
                      'min-seed-time = 60\n')
    monkeypatch.setenv("SWARM_DOWNLOAD_LIMIT", "5MB/s")
    monkeypatch.setenv("SWARM_CACHE_SIZE", "6GB")
    monkeypatch.delenv("SWARM_UPLOAD_LIMIT", raising=False)
    p = parsed(agent, "--config", str(config), "--cache-size", "7GB")
    assert p["cache_size"] == 7_000_000_000            # flag
    assert p["download_limit"] == 5_000_000            # environment over file
    assert p["upload_limit"] == 1_000_000              # file over default
    assert p["watch"] == ("app:*", "web/*")
    assert p["min_seed_time"] == 60.0
    assert p["tracker_url"] == "http://file:7070" and p["token"] == TOKEN
    assert p["log_level"] == "info" and p["tracker_wait"] == 0.0  # defaults


def test_config_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tracker.toml"
    config.write_text('listen = "127.0.0.1:7171"\nannounce-interval = 12\nlog-format = "json"\n')
    monkeypatch.setenv("SWARM_CONFIG", str(config))
    p = parsed(serve, "--data", str(tmp_path))
    assert p["listen"] == ("127.0.0.1", 7171) and p["announce_interval"] == 12 and p["log_format"] == "json"


def test_bad_config_files_are_one_line_errors(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('tracker = "http://t"\nuplod-limit = "1MB/s"\n')
    with pytest.raises(UsageError, match="unknown key 'uplod-limit'"):
        parsed(agent, "--config", str(config))
    config.write_text("tracker = \n")
    with pytest.raises(UsageError, match=f"config file {config}"):
        parsed(agent, "--config", str(config))
    with pytest.raises(UsageError, match="cannot read config file"):
        parsed(agent, "--config", str(tmp_path / "none.toml"))
    config.write_text('listen = ["a", "b"]\n')
    with pytest.raises(UsageError, match="takes one value"):
        parsed(agent, "--config", str(config))


def test_client_commands_take_only_their_keys_from_the_agent_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'tracker = "http://t"\ntoken = "{TOKEN}"\ndata = "{tmp_path / "state"}"\n')
    pull = cli.commands["pull"]
    assert parsed(pull, "--config", str(config), "app:1")["data"] == tmp_path / "state"


def test_every_option_with_a_variable_shows_it_in_help() -> None:
    def commands(group: click.Command) -> list[click.Command]:
        if isinstance(group, click.Group):
            return [c for sub in group.commands.values() for c in commands(sub)]
        return [group]

    missing = [f"{c.name} {o.opts[0]}" for c in commands(cli) for o in c.params
               if isinstance(o, click.Option) and o.envvar and not o.show_envvar]
    assert not missing


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_dir("swarm") == tmp_path / "swarm"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir("swarm") == Path.home() / ".local" / "state" / "swarm"
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert default_state_dir("swarm") == Path("/var/lib/swarm")


def test_relay_from_file_environment_and_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'tracker = "http://t"\ntoken = "{TOKEN}"\nrelay = true\n')
    monkeypatch.delenv("SWARM_RELAY", raising=False)
    assert parsed(agent, "--tracker", "http://t", "--token", TOKEN)["relay"] is False  # default
    assert parsed(agent, "--config", str(config))["relay"] is True  # file
    monkeypatch.setenv("SWARM_RELAY", "false")
    assert parsed(agent, "--config", str(config))["relay"] is False  # environment over file
    assert parsed(agent, "--config", str(config), "--relay")["relay"] is True  # flag over environment
