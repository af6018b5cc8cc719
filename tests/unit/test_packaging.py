"""What pyproject.toml declares matches what the code imports.

Every third-party module imported anywhere in the package is declared, in
the dependencies or an extra; and the agent's side (everything but the
tracker's own package) never imports an extra's module at import time, so
`pip install swarm` without extras runs an agent.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FIRST_PARTY = {"swarm"}
EXTRAS_ONLY = {"redis", "psycopg", "uvloop"}
TOOL_EXTRAS = {"test", "bench"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(extras: bool) -> set[str]:
    project = PYPROJECT["project"]
    reqs = list(project["dependencies"])
    if extras:
        for extra, items in project["optional-dependencies"].items():
            if extra not in TOOL_EXTRAS:
                reqs += items
    return {_normalize(Requirement(r).name) for r in reqs}


def _imported_modules() -> dict[str, str]:
    """Top-level module name -> a file importing it, for every absolute import of a non-stdlib module."""
    found: dict[str, str] = {}
    for package in FIRST_PARTY:
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else ():
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY and top != "__future__":
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_imported_distribution_is_declared() -> None:
    dists = packages_distributions()
    declared = _declared(extras=True)
    missing = {}
    for module, where in _imported_modules().items():
        names = {_normalize(d) for d in dists.get(module, [])}
        if not names & declared:
            missing[module] = where
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def test_extras_only_modules_are_not_core_dependencies() -> None:
    assert {"requests"} <= _declared(extras=False)
    assert not {_normalize(m) for m in EXTRAS_ONLY} & _declared(extras=False)
    assert {_normalize(m) for m in EXTRAS_ONLY} <= _declared(extras=True)


def test_the_agent_side_imports_no_extra_at_import_time() -> None:
    # a fresh interpreter: this one may have imported the tracker's modules already
    probe = """
import importlib, json, pkgutil, sys
import swarm
for info in pkgutil.walk_packages(swarm.__path__, "swarm."):
    if info.name == "swarm.tracker" or info.name.startswith("swarm.tracker."):
        continue  # the tracker's own package may import its extras
    if info.name == "swarm.__main__":
        continue  # runs the CLI
    importlib.import_module(info.name)
from swarm.cli.main import cli
try:
    cli.main(["agent", "--help"], standalone_mode=False)
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {"redis", "psycopg", "uvloop"})))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(result.stdout.splitlines()[-1]) == []


@pytest.mark.parametrize(
    ("args", "feature"),
    [
        (["tracker", "serve", "--listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:9"], "--redis"),
        (["tracker", "token", "list", "--database", "postgresql://swarm@127.0.0.1:9/swarm"], "a PostgreSQL database"),
    ],
)
def test_a_missing_extra_is_a_one_line_error(tmp_path: Path, args: list[str], feature: str) -> None:
    # the interpreter of an install without swarm[tracker-ha]: its modules cannot be imported
    without_extras = "import sys; sys.modules.update(redis=None, psycopg=None); from swarm.cli.main import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", without_extras, *args, "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {feature} needs the tracker-ha extra (pip install 'swarm[tracker-ha]')")
    assert len(result.stderr.strip().splitlines()) == 1
