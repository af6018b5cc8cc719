"""Where option values come from when the command line does not give them: environment, config file, default.

Precedence, highest first: command-line flag, `SWARM_*` environment variable,
config file (TOML), built-in default. The file's keys are the long option
names without dashes (`upload-limit = "50MB/s"`, `trust = ["ed25519:..."]`);
it becomes click's `default_map`, which click ranks below the environment.

The file is `--config PATH` (or `SWARM_CONFIG`), else `/etc/swarm/agent.toml`
for the agent's commands and `/etc/swarm/tracker.toml` for the tracker's, if
present.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from swarm.core.errors import UsageError

ETC = Path("/etc/swarm")
AGENT_CONFIG = ETC / "agent.toml"
TRACKER_CONFIG = ETC / "tracker.toml"
#: ctx.meta key: the config file a command read (None: none), so a reload reads it again
CONFIG_META = "swarm.config"

F = TypeVar("F", bound=Callable[..., Any])


def default_state_dir(name: str) -> Path:
    """`/var/lib/NAME` for root, else `$XDG_STATE_HOME/NAME` (`~/.local/state/NAME`)."""
    if os.geteuid() == 0:
        return Path("/var/lib") / name
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / name


def default_agent_data() -> Path:
    return default_state_dir("swarm")


def default_tracker_data() -> Path:
    return default_state_dir("swarm-tracker")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path}: {exc}") from exc


def option_defaults(command: click.Command, table: dict[str, Any], source: Path, strict: bool) -> dict[str, Any]:
    """The file's keys as click's default_map of `command` (keyed by parameter name).

    `strict`: a key that is no option of `command` is an error (the file belongs to it);
    otherwise such keys are skipped (`swarm pull` reads only `data` from agent.toml)."""
    by_flag: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in (None, "config") and not param.hidden:
            for opt in param.opts:
                if opt.startswith("--"):
                    by_flag[opt[2:]] = param
    defaults: dict[str, Any] = {}
    for key, value in table.items():
        option = by_flag.get(key.replace("_", "-"))
        if option is None:
            if strict:
                raise UsageError(f"config file {source}: unknown key {key!r} (keys are `{command.name}` options)")
            continue
        if isinstance(value, dict):
            raise UsageError(f"config file {source}: {key} must be a value, not a table")
        if option.multiple and not isinstance(value, list):
            value = [value]
        if not option.multiple and isinstance(value, list):
            raise UsageError(f"config file {source}: {key} takes one value, not a list")
        assert option.name is not None
        defaults[option.name] = value if isinstance(value, (list, bool)) else str(value)
    return defaults


def config_option(default: Path, *, strict: bool) -> Callable[[F], F]:
    """`--config PATH`, read before every other option of the command, whose values it supplies."""

    def load(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
        path = value if value is not None else (default if default.is_file() else None)
        ctx.meta[CONFIG_META] = path
        if path is None:
            return
        assert ctx.command is not None
        ctx.default_map = {**(ctx.default_map or {}), **option_defaults(ctx.command, read_toml(path), path, strict)}

    return click.option(
        "--config",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="SWARM_CONFIG",
        show_envvar=True,
        is_eager=True,
        expose_value=False,
        callback=load,
        help=f"TOML file of option values (flags and SWARM_* variables win)  [default: {default}, if present]",
    )
