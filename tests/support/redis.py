"""A private redis-server for tests: a free loopback port, a temporary dir, no persistence.

    with RedisServer.start(tmp_path) as redis:
        redis.url  # redis://127.0.0.1:PORT/0

Needs Debian's `redis-server`; fails with a clear message if it is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support.procs import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, workdir: Path) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian package `redis-server`)")
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "redis.log"
        for _ in range(5):
            port = free_port()
            proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
                                     "--save", "", "--appendonly", "no", "--daemonize", "no",
                                     "--logfile", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                wait_for(lambda: proc.poll() is not None or _answers(port), 20, "redis-server to answer PING")
            except TimeoutError:
                proc.kill()
                proc.wait()
                raise
            if proc.poll() is None:
                return cls(port, proc, log)
            # the port was taken in between: another one
        raise RuntimeError(f"redis-server did not start: {log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
