"""A fixed CPU share per test-bed host: one cgroup (v1 `cpu` controller) per host.

    group = CpuGroup.create("swtb-123-ab12", "h1", cores=0.4)
    argv = [*group.join_prefix(), "nsenter", ...]   # the process (and its children) run in the group
    group.pids(); group.remove()

A CFS quota (`cpu.cfs_quota_us / cpu.cfs_period_us` = `cores`) rather than
`cpu.shares`: shares only weigh groups against each other while they compete
and hand an idle group's CPU to the busy ones, so a host loading alone (the
single-host `docker load`, a host that finishes first) would get the whole
machine and the benchmark would again measure the machine. A quota is a
ceiling that holds whatever else runs, so every host gets the same `cores`
at every moment, like a machine of that size.

Groups are made under /sys/fs/cgroup/cpu/<test bed name>/<host>; `cleanup_stale`
removes those of test beds whose process is gone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.support import netns

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
#: a short period keeps a throttled host's stalls short (TCP acks, TLS records); the kernel's
#: minimum quota is 1 ms, so the period grows for shares below 0.1 core
PERIOD_US = 10_000
MIN_QUOTA_US = 1_000


class CgroupError(RuntimeError):
    pass


def cannot_limit_reason() -> str | None:
    """Why per-host CPU groups cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "cgroups need root"
    if not (CPU_ROOT / "cpu.cfs_quota_us").exists():
        return f"the cgroup v1 cpu controller is not mounted at {CPU_ROOT}"
    return None


def period_and_quota(cores: float) -> tuple[int, int]:
    if cores <= 0:
        raise CgroupError(f"a CPU share must be positive, got {cores}")
    period = max(PERIOD_US, int(MIN_QUOTA_US / cores) + 1)
    return period, max(MIN_QUOTA_US, round(cores * period))


class CpuGroup:
    def __init__(self, path: Path, cores: float) -> None:
        self.path = path
        self.cores = cores

    @classmethod
    def create(cls, bed_name: str, host: str, cores: float) -> CpuGroup:
        reason = cannot_limit_reason()
        if reason:
            raise CgroupError(reason)
        path = CPU_ROOT / bed_name / host
        path.mkdir(parents=True)
        period, quota = period_and_quota(cores)
        (path / "cpu.cfs_period_us").write_text(str(period))
        (path / "cpu.cfs_quota_us").write_text(str(quota))
        return cls(path, cores)

    def join_prefix(self) -> list[str]:
        """Command prefix: the shell moves itself into the group, then execs the command (same pid)."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def pids(self) -> set[int]:
        try:
            return {int(p) for p in (self.path / "cgroup.procs").read_text().split()}
        except OSError:
            return set()

    def throttled(self) -> tuple[int, float]:
        """(periods in which the group was throttled, seconds it was held back)."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat.get("nr_throttled", 0)), int(stat.get("throttled_time", 0)) / 1e9

    def remove(self, timeout: float = 10) -> None:
        """rmdir the group once its processes are gone (the caller stops them first)."""
        remove_tree(self.path, timeout)


def remove_tree(path: Path, timeout: float = 10) -> None:
    """Remove a cgroup directory and its child groups (a cgroup dir is removed with rmdir, empty)."""
    if not path.exists():
        return
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        remove_tree(child, timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:  # EBUSY while an exiting process is still listed
            if time.monotonic() > deadline:
                left = (path / "cgroup.procs").read_text().split() if (path / "cgroup.procs").exists() else []
                raise CgroupError(f"cannot remove {path}: {exc} (processes {left})") from exc
            time.sleep(0.05)


def cleanup_stale(prefix: str = netns.PREFIX) -> list[str]:
    """Remove the groups of test beds whose process is gone (names carry the creating pid)."""
    removed: list[str] = []
    if not CPU_ROOT.exists():
        return removed
    for d in CPU_ROOT.glob(prefix + "*"):
        owner = netns.netns_owner(d.name)
        if owner is None or owner == os.getpid() or netns.alive(owner):
            continue
        try:
            remove_tree(d, timeout=2)
            removed.append(str(d))
        except CgroupError:
            pass  # its processes are still exiting; the next run removes it
    return removed
