"""Fixtures of the multi-host test bed (see docs/testbed.md).

`testbed`: an empty test bed (bridge namespace only), closed after the test
even when it fails. `fleet_factory(**Fleet kwargs)`: tracker + builder +
hosts, each host with its own dockerd and agent. Every process logs under the
test's tmp_path/logs; when a test fails, the report names that directory and
shows the end of each log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import netns
from tests.support.dockerd import cannot_start_reason
from tests.support.testbed import Fleet, Testbed

TAIL_LINES = 12


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    logs: Path | None = getattr(item, "testbed_logs", None)
    if logs is None or not report.failed:
        return
    parts = [f"logs of every process of this test: {logs}"]
    for log in sorted(logs.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        parts.append(f"--- {log.name} (last {len(lines)} lines)\n" + "\n".join(lines))
    report.sections.append(("testbed", "\n".join(parts)))


@pytest.fixture
def testbed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Testbed]:
    reason = netns.cannot_run_reason() or cannot_start_reason()
    if reason:
        pytest.fail(f"the e2e test bed cannot run here: {reason}", pytrace=False)
    logs = tmp_path / "logs"
    request.node.testbed_logs = logs
    bed = Testbed(logs)
    try:
        bed.open()
        yield bed
    finally:
        bed.close()


@pytest.fixture
def fleet_factory(testbed: Testbed) -> Callable[..., Fleet]:
    def make(**kwargs: Any) -> Fleet:
        return Fleet(testbed, **kwargs).start()
    return make
