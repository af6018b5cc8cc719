"""Real swarm processes for tests: tracker, agents and one-shot commands.

Every process logs to a file in the test's directory; waits are on a
condition (a line in the log, a socket answering) with a timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SWARM = [sys.executable, "-m", "swarm"]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_swarm(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*SWARM, *args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"swarm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


#: every process started through Proc, so a test's leftovers can be stopped (see tests/conftest.py)
LIVE: list[Proc] = []


def stop_started_since(mark: int) -> list[str]:
    """Stop the processes started after LIVE had `mark` entries; returns the names of those still running."""
    leftovers = [p for p in LIVE[mark:] if p.popen is not None and p.popen.poll() is None]
    for p in leftovers:
        p.stop(timeout=10)
    del LIVE[mark:]
    return [p.name for p in leftovers]


@dataclass
class Proc:
    name: str
    args: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "wb")
        self.popen = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        LIVE.append(self)
        out.close()
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            m = re.search(pattern, self.text())
            if m is None and self.popen is not None and self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.popen.returncode}:\n{self.text()[-3000:]}")
            return m
        match: re.Match[str] = wait_for(found, timeout, f"{self.name} to print {pattern!r}")
        return match

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            return self.popen.returncode if self.popen else None
        self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            return self.popen.wait(10)


@dataclass
class Tracker:
    data: Path
    proc: Proc
    url: str = ""

    @classmethod
    def start(cls, root: Path, *extra: str, prefix: Sequence[str] = (), listen: str = "127.0.0.1:0",
              log: Path | None = None) -> Tracker:
        """`prefix`: e.g. a namespace's `nsenter --net=...` to run the tracker inside it."""
        data = root / "tracker"
        proc = Proc("tracker", [*prefix, *SWARM, "tracker", "serve", "--data", str(data), "--listen", listen,
                                *extra], log or root / "logs" / "tracker.log").start()
        tracker = cls(data, proc)
        tracker.url = proc.wait_line(r"tracker listening on (https?://\S+)").group(1)
        return tracker

    def token(self, name: str, role: str) -> str:
        out = run_swarm("tracker", "token", "create", name, "--role", role, "--data", str(self.data))
        return out.stdout.strip().splitlines()[-1]


@dataclass
class Agent:
    name: str
    data: Path
    proc: Proc
    args: list[str] = field(default_factory=list)
    peer_port: int = 0

    @classmethod
    def start(cls, root: Path, name: str, tracker_url: str, token: str, *extra: str,
              wait: bool = True, prefix: Sequence[str] = (), listen: str = "127.0.0.1:0",
              log: Path | None = None) -> Agent:
        """`prefix`: e.g. a namespace's `nsenter --net=...` to run the agent inside it."""
        data = root / name
        args = [*prefix, *SWARM, "agent", "--tracker", tracker_url, "--token", token, "--data", str(data),
                "--listen", listen, *extra]
        agent = cls(name, data, Proc(name, args, log or root / "logs" / f"{name}.log"), args)
        agent.proc.start()
        if wait:
            agent.peer_port = int(agent.proc.wait_line(r"agent ready: .* peers on port (\d+)").group(1))
        return agent

    def swarm(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_swarm(*args, "--data", str(self.data), timeout=timeout, check=check)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.swarm("status", "--json").stdout)
        return data

    def stop(self) -> int | None:
        return self.proc.stop()
