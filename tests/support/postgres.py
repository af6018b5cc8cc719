"""A private PostgreSQL cluster for tests: initdb in a temporary dir, a free loopback port.

PostgreSQL refuses to run as root: as root the cluster belongs to the `postgres`
system user (Debian's package makes it) and its commands run through `runuser`.
The cluster's dir is made with mkdtemp under /tmp (pytest's tmp_path is not
readable by that user) and removed by stop().

    with PostgresServer.start() as pg:
        url = pg.create_database("t1")   # postgresql://swarm@127.0.0.1:PORT/t1

Needs Debian's `postgresql` (initdb, postgres); fails with a clear message if missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support.procs import wait_for
from tests.support.redis import free_port

USER = "swarm"


def _bindir() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("PostgreSQL is not installed (Debian package `postgresql`: initdb, postgres)")


def _as_owner() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class PostgresServer:
    port: int
    root: Path
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls) -> PostgresServer:
        bindir = _bindir()
        root = Path(tempfile.mkdtemp(prefix="swarm-pg-"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
        data = root / "data"
        subprocess.run([*_as_owner(), str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER,
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        for _ in range(5):
            port = free_port()
            log = open(root / "postgres.log", "ab")
            proc = subprocess.Popen([*_as_owner(), str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                                     "-k", str(root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                                     "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            server = cls(port, root, proc)

            def ready() -> bool:
                if proc.poll() is not None:
                    return True
                return subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"],
                                      capture_output=True).returncode == 0
            try:
                wait_for(ready, 60, "postgres to accept connections")
            except TimeoutError:
                server.stop()
                raise
            if proc.poll() is None:
                return server
        text = (root / "postgres.log").read_text(errors="replace")[-2000:]
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"postgres did not start: {text}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            # a "fast" shutdown: clients are disconnected (runuser would not pass a signal on)
            subprocess.run([*_as_owner(), str(_bindir() / "pg_ctl"), "stop", "-D", str(self.root / "data"),
                            "-m", "fast", "-w", "-t", "20"], capture_output=True, timeout=60)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
