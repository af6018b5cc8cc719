"""Suite-wide fixtures: private Docker engines.

`dockerd` (session): one private dockerd, or the engine at $SWARM_TEST_DOCKER_HOST
/ --docker-host if given. `dockerd_factory` (per test): start more, e.g. one per
host in an e2e test; all are stopped when the test ends. Tests using either
get the `docker` marker automatically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.dockerd import Dockerd, DockerdError, cannot_start_reason, stop_all


@dataclass
class ExternalDockerd:
    """An engine this suite did not start (same `.host`/`.api()` as Dockerd)."""
    host: str

    def api(self, timeout: int = 300) -> Any:
        import docker
        return docker.APIClient(base_url=self.host, version="auto", timeout=timeout)

    def client(self, timeout: int = 300) -> Any:
        import docker
        return docker.DockerClient(base_url=self.host, version="auto", timeout=timeout)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--docker-host", default=os.environ.get("SWARM_TEST_DOCKER_HOST"),
                     help="use this Docker engine for the `dockerd` fixture instead of starting "
                          "a private one (default: $SWARM_TEST_DOCKER_HOST)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"dockerd", "dockerd_factory"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


def _start(**kwargs: Any) -> Dockerd:
    reason = cannot_start_reason()
    if reason is not None:
        pytest.fail(f"cannot start a private dockerd: {reason}", pytrace=False)
    try:
        return Dockerd(**kwargs).start()
    except DockerdError as exc:
        pytest.fail(f"cannot start a private dockerd: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def dockerd(request: pytest.FixtureRequest) -> Iterator[Dockerd | ExternalDockerd]:
    host = request.config.getoption("--docker-host")
    if host:
        yield ExternalDockerd(host)
        return
    d = _start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def dockerd_factory() -> Iterator[Callable[..., Dockerd]]:
    """`dockerd_factory(**Dockerd kwargs)` -> a started Dockerd, stopped after the test."""
    started: list[Dockerd] = []

    def make(**kwargs: Any) -> Dockerd:
        d = _start(**kwargs)
        started.append(d)
        return d

    yield make
    stop_all(started)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Processes a test body starts (agents, trackers, pulls) end with the test, even when it fails;
    those of fixtures are the fixtures' to stop."""
    from tests.support.procs import LIVE, stop_started_since

    mark = len(LIVE)
    try:
        return (yield)
    finally:
        stop_started_since(mark)
