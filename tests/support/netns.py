"""Network namespaces, veth pairs, a bridge and `tc` shaping, for the e2e test bed.

Low-level and stateless: `tests/support/testbed.py` builds a fleet from these.
Every name this module creates starts with `swtb-<pid>-` (namespaces) so that
`cleanup_stale()` can remove what an aborted run left behind without touching
a run that is still alive in another process.

Processes are put into a namespace with `nsenter --net=/var/run/netns/NAME`,
not `ip netns exec`: the latter also makes a new mount namespace and remounts
/sys, which hides /sys/fs/cgroup, and dockerd then refuses to start
("Devices cgroup isn't mounted"). `nsenter --net` changes only the network
namespace and execs the command, so the pid we hold is the real process.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

PREFIX = "swtb-"
NETNS_DIR = Path("/var/run/netns")
#: the short directory of a test bed's files (unix socket paths are limited to 107 bytes)
TMP = Path("/tmp")


class NetnsError(RuntimeError):
    pass


def cannot_run_reason() -> str | None:
    """Why the test bed cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc", "nsenter"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (apt-get install iproute2 util-linux)"
    return None


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def enter(ns: str) -> list[str]:
    """Command prefix that runs a program inside namespace `ns`."""
    return ["nsenter", f"--net={NETNS_DIR / ns}", "--"]


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def create(ns: str) -> None:
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")


def pids(ns: str) -> list[int]:
    out = sh("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_all(ns: str, timeout: float = 10) -> None:
    """SIGKILL every process left in `ns` and wait until they are gone."""
    deadline = time.monotonic() + timeout
    while True:
        left = pids(ns)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise NetnsError(f"processes {left} in {ns} survive SIGKILL")
        time.sleep(0.05)


def delete(ns: str) -> None:
    """Kill what runs in `ns`, then remove it (its interfaces go with it)."""
    if not exists(ns):
        return
    kill_all(ns)
    sh("ip", "netns", "del", ns, check=False)


def add_bridge(ns: str, bridge: str = "br0") -> None:
    sh("ip", "-n", ns, "link", "add", bridge, "type", "bridge")
    sh("ip", "-n", ns, "link", "set", bridge, "up")


def add_veth(host_ns: str, host_if: str, bridge_ns: str, bridge_if: str, bridge: str = "br0") -> None:
    """A veth pair made inside the namespaces (nothing touches the root namespace)."""
    sh("ip", "-n", host_ns, "link", "add", host_if, "type", "veth", "peer", "name", bridge_if,
       "netns", bridge_ns)
    sh("ip", "-n", bridge_ns, "link", "set", bridge_if, "master", bridge)
    sh("ip", "-n", bridge_ns, "link", "set", bridge_if, "up")
    sh("ip", "-n", host_ns, "link", "set", host_if, "up")


def add_address(ns: str, dev: str, cidr: str) -> None:
    sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev)


def set_link(ns: str, dev: str, up: bool) -> None:
    sh("ip", "-n", ns, "link", "set", dev, "up" if up else "down")


def _bytes_per_second(rate: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(k|m|g)?(bit|bps)", rate.strip().lower())
    if m is None:
        raise NetnsError(f"rate {rate!r}: expected e.g. 100mbit, 500kbit, 10mbps")
    value = float(m.group(1)) * {None: 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    return value / 8 if m.group(3) == "bit" else value


def shape(ns: str, dev: str, rate: str | None, delay_ms: float = 0) -> None:
    """Limit what leaves `dev` to `rate` (tbf), optionally delayed (netem, needs sch_netem).

    `rate=None` and no delay removes the limit."""
    sh("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)
    tbf: list[str] = []
    if rate:
        # a burst of ~10 ms of traffic, at least 32 KiB (veth hands over GSO packets up to 64 KiB)
        burst = max(32 * 1024, int(_bytes_per_second(rate) / 100))
        tbf = ["tbf", "rate", rate, "burst", str(burst), "latency", "100ms"]
    if delay_ms:
        try:
            sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay",
               f"{delay_ms}ms")
        except NetnsError as exc:
            raise NetnsError(f"a link delay needs the kernel's sch_netem: {exc}") from exc
        if tbf:
            sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf)
    elif tbf:
        sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *tbf)


def netns_owner(ns: str) -> int | None:
    m = re.match(re.escape(PREFIX) + r"(\d+)-", ns)
    return int(m.group(1)) if m else None


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ours(prefix: str = PREFIX) -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Remove namespaces and /tmp directories of test beds whose process is gone.

    Names carry the creating pid (`swtb-<pid>-...`); a run still alive is left alone."""
    from tests.support.dockerd import unmount_under

    removed = []
    for ns in ours(prefix):
        owner = netns_owner(ns)
        if owner is not None and owner != os.getpid() and alive(owner):
            continue
        if owner == os.getpid():
            continue  # this process's own test bed is closed by its owner
        delete(ns)
        removed.append(ns)
    for d in TMP.glob(prefix + "*"):
        owner = netns_owner(d.name)
        if owner is None or owner == os.getpid() or alive(owner):
            continue
        unmount_under(d)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    return removed


def run_in(ns: str, argv: Sequence[str], timeout: float = 60, check: bool = True,
           cwd: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*enter(ns), *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                            env=env)
    if check and result.returncode != 0:
        raise NetnsError(f"[{ns}] {' '.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result
