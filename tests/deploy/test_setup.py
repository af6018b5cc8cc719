"""scripts/setup.sh on Debian's own Python, which refuses installs outside a
virtual environment (PEP 668: its stdlib holds EXTERNALLY-MANAGED).

The script runs on a copy of this checkout with a PATH of only the system
directories (no pyenv or other python3 in front), so the venv it makes is one
of /usr/bin/python3. The demo profile is used: it must install swarm and what
the demo needs, and nothing of the tracker's extras or the test tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = Path("/usr/bin/python3")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _externally_managed(python: Path) -> bool:
    stdlib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").exists()


def _copy_checkout(dest: Path) -> Path:
    shutil.copytree(
        ROOT,
        dest,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", ".mypy_cache", ".pytest_cache", "results"
        ),
    )
    return dest


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PYENV", "SWARM_"))}
    env["PATH"] = SYSTEM_PATH
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_setup_makes_a_venv_of_an_externally_managed_python(tmp_path: Path) -> None:
    if not DEBIAN_PYTHON.exists() or not _externally_managed(DEBIAN_PYTHON):
        pytest.fail(
            f"{DEBIAN_PYTHON} is not Debian's externally managed python3 (apt-get install python3)", pytrace=False
        )
    checkout = _copy_checkout(tmp_path / "swarm")
    if _run([str(DEBIAN_PYTHON), "-m", "pip", "--version"], checkout, 30).returncode == 0:
        # what the old setup did: install into the system Python, which refuses
        refused = _run(
            [str(DEBIAN_PYTHON), "-m", "pip", "install", "--dry-run", "--no-index", "-e", "."], checkout, 120
        )
        assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr, refused.stderr

    setup = _run(["bash", "scripts/setup.sh", "--demo"], checkout, 900)
    assert setup.returncode == 0, setup.stderr[-3000:]

    venv = checkout / ".venv"
    config = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in config and "include-system-site-packages = false" in config, config
    python = str(venv / "bin" / "python")
    probe = _run(
        [
            python,
            "-c",
            "import importlib.util as u, swarm, libtorrent, docker; print(swarm.__file__); "
            "print([m for m in ('redis', 'psycopg', 'uvloop', 'pytest', 'matplotlib') "
            "if u.find_spec(m)])",
        ],
        checkout,
        60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == [str(checkout / "swarm" / "__init__.py"), "[]"], probe.stdout
    keygen = _run([str(venv / "bin" / "swarm"), "keygen", str(tmp_path / "builder.key")], checkout, 60)
    assert keygen.returncode == 0 and keygen.stdout.startswith("ed25519:"), keygen.stderr
    assert _run([str(venv / "bin" / "swarm"), "agent", "--help"], checkout, 60).returncode == 0

    again = _run(["bash", "scripts/setup.sh", "--demo"], checkout, 300)
    assert again.returncode == 0 and again.stderr == "", again.stderr
