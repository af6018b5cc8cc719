"""`<prefix>_build_info`: the constant-1 gauge whose labels say which swarm and Python run (Prometheus convention)."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


def swarm_version() -> str:
    try:
        return version("swarm")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


class BuildInfo(Collector):
    def __init__(self, prefix: str) -> None:
        self._name = f"{prefix}_build_info"
        self._labels = {"version": swarm_version(), "python": platform.python_version()}

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily(self._name, "Always 1; the labels name the running build", labels=list(self._labels))
        family.add_metric(list(self._labels.values()), 1)
        yield family
