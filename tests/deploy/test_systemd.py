"""The systemd units in deploy/systemd parse, and their environment files name
only variables that swarm reads.

`systemd-analyze verify` needs no running systemd, but it checks that
ExecStart's binary exists and that the units' dependencies resolve: it runs
against a scratch root holding the units, the system's own units and a stub
/opt/swarm/bin/swarm. It reports unknown or malformed settings on stderr
while still exiting 0, so any output at all fails the test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from swarm.cli.main import cli

pytestmark = [pytest.mark.deploy]

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = ("swarm-tracker.service", "swarm-agent.service")
SYSTEM_UNITS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def _scratch_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(SYSTEMD / unit, root / "etc/systemd/system" / unit)
    source = next((d for d in SYSTEM_UNITS if (d / "sysinit.target").exists()), None)
    if source is None:
        pytest.fail("no system units to verify against (apt-get install systemd)", pytrace=False)
    shutil.copytree(source, root / "usr/lib/systemd/system", symlinks=True)
    for command in ("opt/swarm/bin/swarm", "bin/kill"):  # what the units' Exec*= lines run
        stub = root / command
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    return root


def test_units_verify_cleanly(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (apt-get install systemd)", pytrace=False)
    root = _scratch_root(tmp_path)
    result = subprocess.run([analyze, "verify", f"--root={root}", *UNITS], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


@pytest.mark.parametrize("unit,user,data", [("swarm-tracker.service", "swarm", "/var/lib/swarm-tracker"),
                                             ("swarm-agent.service", "swarm-agent", "/var/lib/swarm")])
def test_units_are_hardened(unit: str, user: str, data: str) -> None:
    text = (SYSTEMD / unit).read_text()
    settings: dict[str, list[str]] = {}
    for m in re.finditer(r"^(\w+)=(.*)$", text, re.M):
        settings.setdefault(m.group(1), []).append(m.group(2))
    assert settings["User"] == [user]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["ReadWritePaths"] == [data]
    assert f"SWARM_DATA={data}" in settings["Environment"]
    for flag in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert settings[flag] == ["yes"], flag
    assert settings["CapabilityBoundingSet"] == [""]
    assert settings["UMask"] == ["0077"]


def test_tracker_unit_raises_the_descriptor_limit() -> None:
    """1,100 half-open connections must not exhaust a tracker left at the default 1,024 descriptors."""
    text = (SYSTEMD / "swarm-tracker.service").read_text()
    m = re.search(r"^LimitNOFILE=(\d+)$", text, re.M)
    assert m and int(m.group(1)) >= 65536


def _env_vars() -> set[str]:
    names: set[str] = set()

    def walk(command: click.Command) -> None:
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                names.add(envvar)
            elif envvar:
                names.update(envvar)
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                walk(sub)

    walk(cli)
    return names


def test_environment_files_use_real_variables() -> None:
    known = _env_vars()
    for example in sorted(SYSTEMD.glob("*.env.example")):
        used = set(re.findall(r"^#?(SWARM_[A-Z_]+)=", example.read_text(), re.M))
        assert used, example
        assert used <= known, f"{example.name}: unknown {sorted(used - known)}"
    units = " ".join((SYSTEMD / u).read_text() for u in UNITS)
    assert set(re.findall(r"Environment=(SWARM_[A-Z_]+)=", units)) <= known
