"""The test bed's per-host CPU share: every process of a host lands in its cgroup, and it goes on close."""

from __future__ import annotations

import pytest

from tests.support import cpu_cgroup
from tests.support.testbed import Testbed


@pytest.mark.slow
def test_host_processes_run_in_their_cpu_group(testbed: Testbed) -> None:
    host = testbed.add_host("h1", cpus=0.5)
    assert host.cpu_group is not None
    group = host.cpu_group.path
    period = int((group / "cpu.cfs_period_us").read_text())
    assert int((group / "cpu.cfs_quota_us").read_text()) == period // 2
    testbed.start_dockerds(["h1"])
    assert host.dockerd is not None and host.dockerd.proc is not None
    pids = host.cpu_group.pids()
    assert host.dockerd.proc.pid in pids
    containerd = int((host.dockerd.exec_root / "containerd" / "containerd.pid").read_text())
    assert containerd in pids  # forked by dockerd after it joined: children inherit the group
    assert testbed.unplaced("h1") == []
    testbed.close()
    assert not group.exists() and not (cpu_cgroup.CPU_ROOT / testbed.name).exists()


def test_quota_keeps_above_the_kernel_minimum() -> None:
    assert cpu_cgroup.period_and_quota(0.4) == (10_000, 4_000)
    period, quota = cpu_cgroup.period_and_quota(2 / 65)
    assert quota >= cpu_cgroup.MIN_QUOTA_US and abs(quota / period - 2 / 65) < 0.01
