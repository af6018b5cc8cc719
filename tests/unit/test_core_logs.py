"""swarm.core.logs: every line of the json format is one object with the fields log shippers expect."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from swarm.core import logs


@pytest.fixture(autouse=True)
def root_logger_restored() -> Iterator[None]:
    """configure() replaces the root logger's handlers: give the next tests pytest's back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_parse_with_extras_and_exceptions(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("debug", "json")
    log = logging.getLogger("swarm.test")
    log.debug("plain %s", "debug")
    log.warning("refused %s", "web-01", extra={"client": "10.0.0.7", "status": 401})
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("failed")
    logs.set_level("warning")
    log.info("not shown")
    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["message"] for e in entries] == ["plain debug", "refused web-01", "failed"]
    assert entries[0]["level"] == "debug" and entries[0]["logger"] == "swarm.test"
    assert entries[0]["time"].endswith("Z") and "T" in entries[0]["time"]
    assert entries[1]["client"] == "10.0.0.7" and entries[1]["status"] == 401
    assert "ValueError: boom" in entries[2]["exception"]


def test_text_format_is_one_line_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "text")
    logging.getLogger("swarm.test").info("seeded %s", "app:1")
    line = capsys.readouterr().err.strip()
    assert line.endswith("INFO swarm.test: seeded app:1") and "\n" not in line
