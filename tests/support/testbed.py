"""A fleet of real hosts on one machine: network namespaces on a private bridge.

    bed = Testbed(logs_root).open()
    fleet = Fleet(bed, hosts=4, builder_egress="100mbit").start()
    fleet.build("app:1", layers, cmd)          # on the builder's own dockerd
    fleet.seed("app:1")
    fleet.pull_all("app:1")                     # every host at once, over the bridge
    bed.cut("h2"); bed.restore("h2")            # faults
    bed.close()                                 # nothing left: processes, mounts, namespaces, files

Layout (all of it inside namespaces this module creates; 10.77.0.0/24 exists
only there and is never routed anywhere else):

    swtb-<pid>-<tag>-br    a namespace holding bridge br0 and one `v-<host>` veth end per host
    swtb-<pid>-<tag>-<h>   a host: `eth0` (10.77.0.N/24), its own dockerd, agent, tracker...

Each link is shaped with tbf: egress on the host's eth0, ingress on the
bridge's v-<host> (what the bridge sends to the host). A link is cut by
taking v-<host> down, restored by bringing it up.

`add_host(..., cpus=0.4)` gives a host a fixed CPU share (a cgroup with a CFS
quota, tests/support/cpu_cgroup.py): every process started with the host's
`prefix` (its dockerd and the containerd dockerd forks, its agent, tracker,
registry) runs in that group; `unplaced(name)` lists the host's processes
outside it.

Files of a test bed live in /tmp/swtb-<pid>-<tag>/ (short paths: unix
sockets) and are removed on close; every process's log goes to `logs`
(kept after a failed test by tests/e2e/conftest.py), so it can be read.
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import cpu_cgroup, netns
from tests.support.capture import Capture
from tests.support.dockerd import Dockerd, stop_all, unmount_under
from tests.support.procs import SWARM, Agent, Proc, Tracker, run_swarm, wait_for

SUBNET = "10.77.0"
TRACKER_PORT = 7070
PEER_PORT = 6881
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    bridge_if: str
    egress: str | None
    ingress: str | None
    dockerd: Dockerd | None = None
    agent: Agent | None = None
    cut: bool = False
    cpu_group: cpu_cgroup.CpuGroup | None = None

    @property
    def prefix(self) -> list[str]:
        join = self.cpu_group.join_prefix() if self.cpu_group is not None else []
        return [*join, *netns.enter(self.ns)]

    @property
    def docker_host(self) -> str:
        assert self.dockerd is not None, f"{self.name} has no dockerd"
        return self.dockerd.host

    def api(self, timeout: int = 300) -> Any:
        assert self.dockerd is not None, f"{self.name} has no dockerd"
        return self.dockerd.api(timeout)


class Testbed:
    __test__ = False  # not a pytest test class
    def __init__(self, logs_root: Path, label: str = "testbed", bridge: str = "br0") -> None:
        """Logs go to `logs_root`/<label>-<id>/ (kept: the caller decides when to remove them)."""
        self.id = f"{os.getpid()}-{secrets.token_hex(2)}"
        self.name = f"{netns.PREFIX}{self.id}"
        self.dir = netns.TMP / self.name
        self.logs = logs_root / f"{label}-{self.id}"
        self.bridge = bridge
        self.bridge_ns = f"{self.name}-br"
        self.hosts: dict[str, Host] = {}
        self._procs: list[Proc] = []
        self._captures: list[Capture] = []
        self._namespaces: list[str] = []
        self._restarts: dict[str, int] = {}

    # -- life cycle -------------------------------------------------------------

    def open(self) -> Testbed:
        reason = netns.cannot_run_reason()
        if reason:
            raise netns.NetnsError(reason)
        netns.cleanup_stale()
        cpu_cgroup.cleanup_stale()
        self.logs.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir(parents=True)
        self._new_namespace(self.bridge_ns)
        netns.add_bridge(self.bridge_ns, self.bridge)
        return self

    def _new_namespace(self, ns: str) -> None:
        self._namespaces.append(ns)
        netns.create(ns)

    def close(self) -> None:
        """Stop everything this test bed started, then remove namespaces, mounts and files.

        Safe to call on a half-built test bed and more than once."""
        errors: list[str] = []
        for cap in self._captures:
            _attempt(cap.stop, errors)
        procs = [p.popen for p in self._procs if p.popen is not None and p.popen.poll() is None]
        for popen in procs:  # SIGTERM all at once (once: a second one makes an agent exit at once)
            _attempt(popen.terminate, errors)
        deadline = time.monotonic() + 15
        for popen in procs:
            try:
                popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                errors.append(f"{' '.join(popen.args[-12:])[:200]} ignored SIGTERM for 15 s")  # type: ignore[index]
                popen.kill()
                popen.wait(10)
        _attempt(lambda: stop_all([h.dockerd for h in self.hosts.values() if h.dockerd is not None]), errors)
        for ns in reversed(self._namespaces):
            _attempt(lambda ns=ns: netns.delete(ns), errors)  # type: ignore[misc]
        self._namespaces.clear()
        for host in self.hosts.values():
            if host.cpu_group is not None:
                _attempt(host.cpu_group.remove, errors)
        _attempt(lambda: cpu_cgroup.remove_tree(cpu_cgroup.CPU_ROOT / self.name), errors)
        unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise RuntimeError("test bed teardown: " + "; ".join(errors))

    def __enter__(self) -> Testbed:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- hosts and links ----------------------------------------------------------

    def add_host(self, name: str, egress: str | None = "100mbit", ingress: str | None = "100mbit",
                 delay_ms: float = 0, cpus: float | None = None) -> Host:
        """`cpus`: a fixed CPU share for everything the host runs (None: unlimited)."""
        if name in self.hosts or len(name) > 12 or not name.replace("-", "").isalnum():
            raise ValueError(f"bad or duplicate host name {name!r} (1-12 letters, digits, dashes)")
        ns = f"{self.name}-{name}"
        ip = f"{SUBNET}.{len(self.hosts) + 2}"
        host = Host(name, ns, ip, f"v-{name}", egress, ingress)
        if cpus is not None:
            host.cpu_group = cpu_cgroup.CpuGroup.create(self.name, name, cpus)
        self._new_namespace(ns)
        netns.add_veth(ns, "eth0", self.bridge_ns, host.bridge_if, self.bridge)
        netns.add_address(ns, "eth0", f"{ip}/24")
        self.hosts[name] = host
        self.shape(name, egress, ingress, delay_ms)
        return host

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def unplaced(self, name: str) -> list[str]:
        """The processes in host `name`'s namespace that are not in its CPU group ("pid command")."""
        host = self.hosts[name]
        if host.cpu_group is None:
            return []
        inside = host.cpu_group.pids()
        out = []
        for pid in netns.pids(host.ns):
            if pid not in inside:
                try:
                    cmd = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue  # exited meanwhile
                out.append(f"{pid} {cmd}")
        return out

    def shape(self, name: str, egress: str | None, ingress: str | None, delay_ms: float = 0) -> None:
        """Rate-limit a host's link: `egress` what it sends, `ingress` what it receives."""
        host = self.hosts[name]
        netns.shape(host.ns, "eth0", egress, delay_ms)
        netns.shape(self.bridge_ns, host.bridge_if, ingress, delay_ms)
        host.egress, host.ingress = egress, ingress

    def cut(self, name: str) -> None:
        """Unplug the host's cable: nothing goes in or out until `restore`."""
        host = self.hosts[name]
        netns.set_link(self.bridge_ns, host.bridge_if, up=False)
        host.cut = True

    def restore(self, name: str) -> None:
        host = self.hosts[name]
        netns.set_link(self.bridge_ns, host.bridge_if, up=True)
        host.cut = False

    def run(self, name: str, argv: Sequence[str], timeout: float = 60, check: bool = True,
            ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a host's namespace (cwd: the repository, so `-m tests...` works)."""
        return netns.run_in(self.hosts[name].ns, argv, timeout=timeout, check=check, cwd=str(REPO))

    def spawn(self, name: str, label: str, argv: Sequence[str]) -> Proc:
        """A long-running process inside a host, logging to logs/<label>.log; stopped on close."""
        proc = Proc(label, [*self.hosts[name].prefix, *argv], self._log(label))
        self._procs.append(proc)
        return proc.start()

    def _log(self, label: str) -> Path:
        n = self._restarts.get(label, 0)
        self._restarts[label] = n + 1
        return self.logs / (f"{label}.log" if n == 0 else f"{label}.{n + 1}.log")

    # -- real parts ---------------------------------------------------------------

    def start_dockerds(self, names: Iterable[str], extra_args: Sequence[str] = ()) -> None:
        """Start a private dockerd inside each named host, in parallel (`extra_args`: more dockerd flags)."""
        todo = [self.hosts[n] for n in names]
        for host in todo:
            base = self.dir / "docker" / host.name
            host.dockerd = Dockerd(base, prefix=host.prefix, log_path=self.logs / f"{host.name}.dockerd.log",
                                   extra_args=extra_args)
        with concurrent.futures.ThreadPoolExecutor(len(todo) or 1) as pool:
            list(pool.map(lambda h: h.dockerd.start(), todo))  # type: ignore[union-attr]

    def start_tracker(self, name: str, *extra: str, port: int = TRACKER_PORT) -> Tracker:
        host = self.hosts[name]
        tracker = Tracker.start(self.dir, *extra, prefix=host.prefix, listen=f"{host.ip}:{port}",
                                log=self._log("tracker"))
        self._procs.append(tracker.proc)
        return tracker

    def restart_tracker(self, tracker: Tracker) -> None:
        """Start the tracker process again with the same arguments (and data) after it stopped."""
        assert tracker.proc.popen is not None and tracker.proc.popen.poll() is not None, "tracker still runs"
        proc = Proc("tracker", tracker.proc.args, self._log("tracker"))
        self._procs.append(proc)
        tracker.proc = proc.start()
        proc.wait_line(r"tracker listening on (http://\S+)")

    def start_agent(self, name: str, tracker_url: str, token: str, *extra: str, wait: bool = True) -> Agent:
        host = self.hosts[name]
        extra_docker = ("--docker-host", host.docker_host) if host.dockerd is not None else ()
        agent = Agent.start(self.dir, name, tracker_url, token, *extra_docker, *extra, wait=False,
                            prefix=host.prefix, listen=f"{host.ip}:{PEER_PORT}", log=self._log(f"{name}.agent"))
        self._procs.append(agent.proc)
        host.agent = agent
        if wait:
            wait_agent_ready(agent)
        return agent

    def restart_agent(self, name: str, wait: bool = True) -> Agent:
        """Start a stopped (or killed) agent again: same arguments, same data dir, a new log file."""
        agent = self.hosts[name].agent
        assert agent is not None and agent.proc.popen is not None and agent.proc.popen.poll() is not None
        agent.proc = Proc(agent.name, agent.args, self._log(f"{name}.agent")).start()
        self._procs.append(agent.proc)
        if wait:
            wait_agent_ready(agent)
        return agent

    def capture(self, label: str = "bridge") -> Capture:
        """tcpdump on the bridge: every frame between any two hosts."""
        cap = Capture(self.bridge_ns, self.bridge, self.logs / f"{label}.pcap", self.logs / f"{label}.tcpdump.log")
        self._captures.append(cap)
        return cap.start()


def wait_agent_ready(agent: Agent, timeout: float = 90) -> None:
    agent.peer_port = int(agent.proc.wait_line(r"agent ready: .* peers on port (\d+)", timeout).group(1))


def _attempt(fn: Callable[[], object], errors: list[str]) -> None:
    try:
        fn()
    except Exception as exc:  # teardown goes on; the errors are reported at the end
        errors.append(f"{type(exc).__name__}: {exc}")


# -- a fleet: tracker + builder + hosts, each with its agent ------------------------


@dataclass
class PullJob:
    """A `swarm pull` running in the background (the client talks to the agent's socket)."""
    host: str
    refs: tuple[str, ...]
    popen: subprocess.Popen[str]
    log: Path
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None

    def done(self) -> bool:
        return self.popen.poll() is not None

    def wait(self, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"swarm pull {' '.join(self.refs)} on {self.host} still running after "
                                 f"{timeout}s:\n{self.output()[-2000:]}") from None
        if self.seconds is None:
            self.seconds = time.monotonic() - self.started
        return subprocess.CompletedProcess(self.popen.args, self.popen.returncode, self.output(), "")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ok(self, timeout: float = 300) -> str:
        result = self.wait(timeout)
        if result.returncode != 0:
            raise AssertionError(f"swarm pull {' '.join(self.refs)} on {self.host} exited {result.returncode}:\n"
                                 f"{result.stdout[-2000:]}")
        return result.stdout


class Fleet:
    """`tracker`, `builder` and hosts h1..hN in one test bed, each host with its dockerd and agent."""

    def __init__(self, bed: Testbed, hosts: int = 4, *, builder_egress: str | None = "100mbit",
                 host_egress: str | None = "100mbit", host_ingress: str | None = "100mbit",
                 tracker_args: Sequence[str] = ("--announce-interval", "5"),
                 agent_args: Sequence[str] = (), builder_args: Sequence[str] = (),
                 host_cpus: float | None = None) -> None:
        """`host_cpus`: the same fixed CPU share for the builder and every host (the tracker is
        not limited: it stands for a separate machine of the fleet's infrastructure)."""
        self.bed = bed
        self.host_cpus = host_cpus
        self.host_names = [f"h{i}" for i in range(1, hosts + 1)]
        self._rates = (builder_egress, host_egress, host_ingress)
        self._tracker_args = list(tracker_args)
        self._agent_args = list(agent_args)
        self._builder_args = list(builder_args)
        self.tracker: Tracker | None = None
        self.url = ""
        self.key = bed.dir / "builder.key"
        self.pubkey = ""
        self.tokens: dict[str, str] = {}
        self._jobs = 0

    def start(self) -> Fleet:
        bed = self.bed
        builder_egress, host_egress, host_ingress = self._rates
        bed.add_host("tracker", egress=None, ingress=None)
        bed.add_host("builder", egress=builder_egress, ingress=None, cpus=self.host_cpus)
        for name in self.host_names:
            bed.add_host(name, egress=host_egress, ingress=host_ingress, cpus=self.host_cpus)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            engines = pool.submit(bed.start_dockerds, ["builder", *self.host_names])
            self.tracker = bed.start_tracker("tracker", *self._tracker_args)
            self.url = self.tracker.url
            self.pubkey = run_swarm("keygen", str(self.key)).stdout.strip()
            engines.result()
        self.tokens["builder"] = self.tracker.token("builder", "builder", "--key", self.pubkey)
        builder = bed.start_agent("builder", self.url, self.tokens["builder"], *self._builder_args, wait=False)
        agents = [builder]
        for name in self.host_names:
            agents.append(self.add_agent(name, wait=False))
        for agent in agents:
            wait_agent_ready(agent)
        return self

    def add_agent(self, name: str, *extra: str, wait: bool = True) -> Agent:
        assert self.tracker is not None
        self.tokens[name] = self.tracker.token(name, "host")
        return self.bed.start_agent(name, self.url, self.tokens[name], "--trust", self.pubkey,
                                    *self._agent_args, *extra, wait=wait)

    # -- accessors ---------------------------------------------------------------

    def host(self, name: str) -> Host:
        return self.bed.hosts[name]

    def agent(self, name: str) -> Agent:
        agent = self.bed.hosts[name].agent
        assert agent is not None, f"{name} has no agent"
        return agent

    def api(self, name: str) -> Any:
        return self.bed.hosts[name].api()

    def status(self, name: str) -> dict[str, Any]:
        """`swarm status --json`, asked over the agent's socket in-process (fast enough to poll)."""
        from swarm.agent.client import AgentClient
        return AgentClient(self.agent(name).data / "agent.sock").status().to_map()

    # -- images -------------------------------------------------------------------

    def build(self, tag: str, layers: Sequence[Mapping[str, bytes]], cmd: Sequence[str]) -> str:
        from swarm.images.synthetic import build_image
        return build_image(self.api("builder"), tag, layers, cmd)

    def seed(self, *refs: str) -> str:
        return self.agent("builder").swarm("seed", *refs, "--key", str(self.key), timeout=300).stdout

    def manifest(self, ref: str) -> Any:
        """The signed manifest of `ref` as the builder's agent stored it."""
        from swarm.core.signing import SignedManifest
        for path in (self.agent("builder").data / "manifests").glob("*.msgpack"):
            manifest = SignedManifest.from_bytes(path.read_bytes()).verify(None)
            if str(manifest.ref) == ref:
                return manifest
        raise AssertionError(f"the builder has no manifest for {ref}")

    def start_pull(self, name: str, *refs: str) -> PullJob:
        self._jobs += 1
        log = self.bed.logs / f"{name}.pull{self._jobs}.log"
        out = open(log, "w")
        popen = subprocess.Popen([*SWARM, "pull", *refs, "--data", str(self.agent(name).data)],
                                 stdout=out, stderr=subprocess.STDOUT, text=True, cwd=str(REPO))
        out.close()
        return PullJob(name, refs, popen, log)

    def pull_all(self, *refs: str, names: Sequence[str] | None = None, timeout: float = 300) -> dict[str, str]:
        jobs = [self.start_pull(n, *refs) for n in (names or self.host_names)]
        return {job.host: job.ok(timeout) for job in jobs}

    # -- progress and byte counts ---------------------------------------------------

    def layer_bytes(self, name: str, blobs: Iterable[str]) -> tuple[int, int]:
        """(done, total) over the torrents of `blobs` on host `name` (0 done for a torrent not there yet)."""
        wanted = set(blobs)
        done = total = 0
        for t in self.status(name)["torrents"]:
            if t["blob"] in wanted:
                done += int(t["done"])
                total += int(t["total"])
        return done, total

    def fraction(self, name: str, ref: str) -> float:
        """How much of `ref`'s blobs host `name` holds, 0..1 (1.0 once done)."""
        manifest = self.manifest(ref)
        blobs = {layer.blob: layer.blob_size for layer in manifest.layers}
        done, _total = self.layer_bytes(name, blobs)
        return done / sum(blobs.values())

    def received(self, name: str) -> int:
        """Payload bytes this agent process received from peers, over every torrent it has."""
        return sum(int(t["downloaded"]) for t in self.status(name)["torrents"])

    def received_from(self, name: str) -> dict[str, int]:
        """Payload bytes received per sending peer (by name), over the life of each torrent."""
        by_peer: dict[str, int] = {}
        for torrent in self.status(name)["torrents"]:
            for peer in torrent["peers"]:
                by_peer[peer["name"]] = by_peer.get(peer["name"], 0) + int(peer["downloaded"])
        return by_peer

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_for(predicate, timeout, what, interval=0.1)

