"""Fixtures of the multi-host test bed (see docs/testbed.md).

`testbed`: an empty test bed (bridge namespace only), closed after the test
even when it fails. `fleet_factory(**Fleet kwargs)`: tracker + builder +
hosts, each host with its own dockerd and agent.

Every process logs to $SWARM_TESTBED_LOGS/<test>-<testbed id>/ (default
/tmp/swarm-testbed-logs). The directory is removed when the test passes and
kept when it fails (pytest's tmp_path would not do: it keeps only the last
three runs, of anyone on the machine); the failure report names it and shows
the end of each log. SWARM_TESTBED_KEEP_LOGS=1 keeps the logs of passing tests too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import os
import re
import shutil

import pytest

from tests.support import netns
from tests.support.dockerd import cannot_start_reason
from tests.support.testbed import Fleet, Testbed

TAIL_LINES = 12
LOGS = Path(os.environ.get("SWARM_TESTBED_LOGS", "/tmp/swarm-testbed-logs"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    logs: Path | None = getattr(item, "testbed_logs", None)
    if logs is None or not report.failed:
        return
    item.testbed_failed = True  # type: ignore[attr-defined]
    parts = [f"logs of every process of this test: {logs}"]
    for log in sorted(logs.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        parts.append(f"--- {log.name} (last {len(lines)} lines)\n" + "\n".join(lines))
    report.sections.append(("testbed", "\n".join(parts)))


@pytest.fixture
def testbed(request: pytest.FixtureRequest) -> Iterator[Testbed]:
    reason = netns.cannot_run_reason() or cannot_start_reason()
    if reason:
        pytest.fail(f"the e2e test bed cannot run here: {reason}", pytrace=False)
    bed = Testbed(LOGS, label=re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80])
    request.node.testbed_logs = bed.logs
    try:
        bed.open()
        yield bed
    finally:
        bed.close()
        keep = getattr(request.node, "testbed_failed", False) or os.environ.get("SWARM_TESTBED_KEEP_LOGS") == "1"
        if not keep:
            shutil.rmtree(bed.logs, ignore_errors=True)


@pytest.fixture
def fleet_factory(testbed: Testbed) -> Callable[..., Fleet]:
    def make(**kwargs: Any) -> Fleet:
        return Fleet(testbed, **kwargs).start()
    return make
