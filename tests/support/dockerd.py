"""A private dockerd for tests: its own data root, exec root and socket.

    with Dockerd() as d:
        api = d.api()          # docker.APIClient on d.host ("unix:///tmp/swd-xxxx/docker.sock")

Several can run at once (each starts its own containerd under its exec root).
Paths live under a short /tmp/swd-XXXX directory because unix socket paths
are limited to 107 bytes (containerd's sockets sit deeper under the exec root).
No bridge, no iptables, no NAT: containers get `network_mode="none"` or host.

Environment overrides:
    SWARM_DOCKERD               dockerd binary (default: `dockerd` on PATH, or /usr/sbin/dockerd)
    SWARM_DOCKERD_STORAGE_DRIVER  e.g. "vfs" (default: dockerd's choice; overlay2 here)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
MAX_SOCKET_PATH = 100


def dockerd_binary() -> str | None:
    explicit = os.environ.get("SWARM_DOCKERD")
    if explicit:
        return explicit
    if shutil.which("dockerd"):
        return shutil.which("dockerd")
    return "/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else None


def cannot_start_reason() -> str | None:
    """Why a private dockerd cannot be started here, or None if it can."""
    if os.geteuid() != 0:
        return "a private dockerd needs root (run the docker tests as root)"
    if dockerd_binary() is None:
        return "no dockerd binary (apt-get install docker.io, or set SWARM_DOCKERD)"
    return None


class DockerdError(RuntimeError):
    pass


class Dockerd:
    """One private dockerd process. Use as a context manager, or start()/stop()."""

    def __init__(self, base_dir: Path | None = None, *, storage_driver: str | None = None,
                 extra_args: Sequence[str] = (), prefix: Sequence[str] = (),
                 log_path: Path | None = None, start_timeout: float = START_TIMEOUT) -> None:
        """`base_dir`: where root/, exec/, docker.sock live (default: a fresh
        /tmp/swd-XXXX, removed on stop). `prefix`: a command prefix such as
        ["ip", "netns", "exec", "h1"] to run dockerd inside a network namespace.
        `log_path`: dockerd's log (default base_dir/dockerd.log)."""
        self._own_dir = base_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="swd-", dir="/tmp")) if base_dir is None else Path(base_dir)
        self.data_root = self.dir / "root"
        self.exec_root = self.dir / "exec"
        self.socket = self.dir / "docker.sock"
        self.pidfile = self.dir / "docker.pid"
        self.log_path = log_path or self.dir / "dockerd.log"
        self.storage_driver = storage_driver or os.environ.get("SWARM_DOCKERD_STORAGE_DRIVER") or None
        self.extra_args = list(extra_args)
        self.prefix = list(prefix)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        if len(str(self.exec_root / "containerd" / "containerd.sock.ttrpc")) > MAX_SOCKET_PATH:
            raise DockerdError(f"dockerd directory {self.dir} is too long for unix socket paths; use a short one")

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        binary = dockerd_binary()
        if binary is None:
            raise DockerdError(cannot_start_reason() or "no dockerd")
        cmd = [*self.prefix, binary,
               "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
               "-H", self.host, "--pidfile", str(self.pidfile),
               "--bridge=none", "--iptables=false", "--ip-masq=false",
               "--ip-forward=false", "--userland-proxy=false"]
        if self.storage_driver:
            cmd += ["--storage-driver", self.storage_driver]
        return cmd + self.extra_args

    def start(self) -> Dockerd:
        reason = cannot_start_reason()
        if reason is not None:
            raise DockerdError(reason)
        self.dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = started + self.start_timeout
        while not self.ping():
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                self.stop()
                raise DockerdError(f"dockerd exited with {code} while starting:\n{tail}")
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise DockerdError(f"dockerd did not answer on {self.socket} within {self.start_timeout}s:\n{tail}")
            time.sleep(0.05)
        self.startup_seconds = time.monotonic() - started
        return self

    def ping(self) -> bool:
        """True when the engine answers GET /_ping on its socket."""
        import socket
        if not self.socket.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(str(self.socket))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                answer = s.recv(64)
            return answer.startswith(b"HTTP/1.") and b" 200 " in answer
        except OSError:
            return False

    def api(self, timeout: int = 300) -> Any:
        import docker
        return docker.APIClient(base_url=self.host, version="auto", timeout=timeout)

    def client(self, timeout: int = 300) -> Any:
        import docker
        return docker.DockerClient(base_url=self.host, version="auto", timeout=timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        """Ask dockerd to shut down (SIGTERM) without waiting; stop() waits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, wait (SIGKILL after STOP_TIMEOUT), unmount leftovers, remove the directory."""
        self.terminate()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self._kill_orphan_containerd()
        unmount_under(self.dir)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_orphan_containerd(self) -> None:
        """dockerd stops its containerd on SIGTERM; after a SIGKILL it may be left."""
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"containerd" not in cmdline or str(self.exec_root).encode() not in cmdline:
            return
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def stop_all(dockerds: Sequence[Dockerd]) -> None:
    """Stop several dockerds, shutting them down in parallel."""
    for d in dockerds:
        d.terminate()
    for d in dockerds:
        d.stop()


def unmount_under(directory: Path) -> None:
    """Lazily unmount every mount point at or below `directory` (deepest first)."""
    prefix = str(directory.resolve()) if directory.exists() else str(directory)
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4].replace("\\040", " ") for line in f]
    except OSError:
        return
    for point in sorted({p for p in points if p == prefix or p.startswith(prefix + "/")},
                        key=len, reverse=True):
        subprocess.run(["umount", "-l", point], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
