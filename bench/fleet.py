#!/usr/bin/env python3
"""Fleet benchmark: swarm vs a registry vs the physical bound, on one machine.

    python bench/fleet.py [--hosts 8] [--size-mib 512] [--layers 4] [--rate 100mbit]
                          [--variant random|compressible] [--timeout 2400] [--no-registry]

Builds a fleet in network namespaces with the e2e test bed (tests/support/testbed.py):
a tracker, a builder and N hosts, each with its own dockerd and swarm agent, every
host link shaped to --rate both ways, the builder's uplink too. Then, on the same
links, in one run:

1. generates a synthetic image on the builder (busybox + --layers layers of random
   or compressible data, --size-mib in all);
2. single host: times `docker save` of the image on the builder;
3. swarm: `swarm seed` on the builder, then `swarm pull` on every host at once;
   per-host completion measured from the moment `swarm seed` starts;
4. registry: removes the image from every host, runs Debian's docker-registry
   (distribution 2.8) on the builder, pushes the image (not timed), then every
   host `docker pull`s at once; per-host completion from the moment the pulls start;
5. single host: plain `docker load` of the image tarball vs the agent's load stage
   (the same tarball streamed out of the zstd blobs) on h1, and `docker load` of the
   top layer alone (the bound's load term);
6. writes bench/results/fleet-n<N>-<size>m-<variant>.{md,json,png} and regenerates
   bench/results/fleet.md (the table of every run).

The builder and every host run under the same fixed CPU share (a cgroup CFS quota,
--cpus-per-host, default cores/(N+1)); the single-host measurements run under it too.
The bound (docs/benchmarks.md): T >= max(F/u_seed, N*F/(u_seed + sum u_i), F/d_min)
for F the payload bytes on the wire (Kumar & Ross), plus the time `docker load` takes
for the top layer alone once the layers below it are loaded, under the same share.
Everything is torn down on exit, on failure and on timeout (the test bed's close()).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.chdir(REPO)  # agents are started as `python -m swarm...`: they import this checkout

from tests.support import netns  # noqa: E402
from tests.support.testbed import Fleet, Testbed  # noqa: E402

MiB = 1024 * 1024
RESULTS = REPO / "bench" / "results"
REGISTRY_BIN = "/usr/bin/docker-registry"
REGISTRY_PORT = 5000
CLK = os.sysconf("SC_CLK_TCK")


class Timeout(Exception):
    pass


# -- the test bed, with what the registry baseline needs --------------------------------


class BenchTestbed(Testbed):
    """The e2e test bed, with `--insecure-registry <builder>:5000` on every dockerd."""

    registry: str = ""

    def start_dockerds(self, names: Any, extra_args: Any = ()) -> None:
        self.registry = f"{self.hosts['builder'].ip}:{REGISTRY_PORT}"
        super().start_dockerds(names, [*extra_args, "--insecure-registry", self.registry])


# -- measuring ----------------------------------------------------------------------------


def ns_cpu(ns: str) -> float:
    """CPU seconds (user+system) of the processes now living in namespace `ns`."""
    total = 0
    for pid in netns.pids(ns):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return float(sum(parts) - idle), float(sum(parts))


class CpuMeter:
    def __init__(self, bed: Testbed, names: list[str]) -> None:
        self.bed, self.names = bed, names

    def __enter__(self) -> CpuMeter:
        self.start = {n: ns_cpu(self.bed.hosts[n].ns) for n in self.names}
        self.throttle0 = {n: throttled(self.bed, n) for n in self.names}
        self.m0 = machine_cpu()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self.t0
        self.per_host = {n: round(ns_cpu(self.bed.hosts[n].ns) - self.start[n], 2) for n in self.names}
        self.throttled = {n: round(throttled(self.bed, n) - self.throttle0[n], 2) for n in self.names}
        m1 = machine_cpu()
        busy, total = m1[0] - self.m0[0], m1[1] - self.m0[1]
        self.machine_busy = round(busy / total, 3) if total else 0.0

    def report(self) -> dict[str, Any]:
        return {"wall_s": round(self.seconds, 2), "machine_busy": self.machine_busy, "ns_cpu_s": self.per_host,
                "throttled_s": self.throttled}


def throttled(bed: Testbed, name: str) -> float:
    """Seconds the host's CPU group was held back by its quota so far (0 without a group)."""
    group = bed.hosts[name].cpu_group
    return group.throttled()[1] if group is not None else 0.0


def check_placement(bed: Testbed, names: list[str]) -> None:
    """Every process of every host runs under its host's CPU share (children included)."""
    stray = {n: bed.unplaced(n) for n in names}
    stray = {n: p for n, p in stray.items() if p}
    if stray:
        raise RuntimeError(f"processes outside their host's CPU group: {stray}")


def rate_bytes(rate: str) -> float:
    return netns._bytes_per_second(rate)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def bound(f: float, n: int, u_seed: float, u_hosts: list[float], d_min: float) -> float:
    """Kumar-Ross minimum distribution time of F bytes to n hosts."""
    return max(f / u_seed, n * f / (u_seed + sum(u_hosts)), f / d_min)


def docker_cli(host: str, *args: str, timeout: float = 900) -> float:
    t = time.monotonic()
    subprocess.run(["docker", "-H", host, *args], check=True, timeout=timeout, capture_output=True)
    return time.monotonic() - t


def remove_images(api: Any) -> None:
    for image in api.images(all=True):
        api.remove_image(image["Id"], force=True)
    left = api.images(all=True)
    if left:
        raise RuntimeError(f"images left after removal: {left}")


# -- the phases ---------------------------------------------------------------------------


def build(fleet: Fleet, tag: str, size: int, layers: int, compressible: bool) -> str:
    from swarm.images.synthetic import build_image, payload
    per = size // layers
    content = [{f"/data/layer{i}.bin": payload(per, seed=1000 + i, compressible=compressible)}
               for i in range(layers)]
    return build_image(fleet.api("builder"), tag, content, ["/bin/busybox", "true"])


class Sampler:
    """Every `every` s: per host, payload bytes received and sent over all torrents (agent status)."""

    def __init__(self, fleet: Fleet, names: list[str], t0: float, every: float) -> None:
        self.fleet, self.names, self.t0, self.every = fleet, names, t0, every
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            sample: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 2)}
            for n in self.names:
                try:
                    torrents = self.fleet.status(n)["torrents"]
                except Exception:
                    continue
                sample[n] = [sum(int(t["downloaded"]) for t in torrents), sum(int(t["uploaded"]) for t in torrents),
                             sum(int(t["done"]) for t in torrents)]
            self.samples.append(sample)


def run_seed(fleet: Fleet, ref: str, t0: float) -> list[tuple[float, str]]:
    """`swarm seed` on the builder; its progress lines with the second each appeared (from t0)."""
    from tests.support.procs import SWARM
    proc = subprocess.Popen([*SWARM, "seed", ref, "--key", str(fleet.key), "--data", str(fleet.agent("builder").data)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(REPO))
    steps = []
    assert proc.stdout is not None
    for line in proc.stdout:
        steps.append((round(time.monotonic() - t0, 2), line.strip()[:100]))
    if proc.wait(300) != 0:
        raise RuntimeError(f"swarm seed failed: {steps}")
    return steps


def swarm_phase(fleet: Fleet, ref: str, deadline: float, every: float = 1.0) -> dict[str, Any]:
    from swarm.agent.api import PullProgress
    from swarm.agent.client import AgentClient

    names = fleet.host_names
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    with CpuMeter(fleet.bed, ["builder", *names]) as cpu:
        t0 = time.monotonic()
        seed_steps = run_seed(fleet, ref, t0)
        seed_s = time.monotonic() - t0

        def pull(name: str) -> None:
            stages: dict[str, float] = {}

            def on_progress(progress: PullProgress) -> None:
                if progress.stage not in stages:
                    stages[progress.stage] = round(time.monotonic() - t0, 2)
            try:
                AgentClient(fleet.agent(name).data / "agent.sock").pull([ref], on_progress)
                results[name] = {"done_s": round(time.monotonic() - t0, 2), "stages": stages}
            except Exception as exc:  # reported below
                errors[name] = f"{type(exc).__name__}: {exc}"

        threads = [threading.Thread(target=pull, args=(n,), daemon=True) for n in names]
        for th in threads:
            th.start()
        timeline = Sampler(fleet, ["builder", *names], t0, every).start() if every else None
        for th in threads:
            th.join(max(1.0, deadline - time.monotonic()))
        if timeline is not None:
            timeline.stop()
    if errors or len(results) < len(names):
        raise RuntimeError(f"swarm pulls failed or timed out: {errors or set(names) - set(results)}")
    manifest = fleet.manifest(ref)
    blobs = {layer.blob: layer.blob_size for layer in manifest.layers}
    builder = fleet.status("builder")
    uploaded = sum(int(t["uploaded"]) for t in builder["torrents"] if t["blob"] in blobs)
    from_builder = {n: fleet.received_from(n).get("builder", 0) for n in names}
    return {
        "seed_s": round(seed_s, 2), "seed_steps": seed_steps, "hosts": results, "cpu": cpu.report(),
        "blob_bytes": sum(blobs.values()), "layer_bytes": sum(layer.size for layer in manifest.layers),
        "builder_uploaded": uploaded, "from_builder": from_builder, "image_id": manifest.image_id,
        "timeline": timeline.samples if timeline is not None else [],
    }


def registry_phase(fleet: Fleet, bed: BenchTestbed, ref: str, image_id: str, run_dir: Path,
                   deadline: float) -> dict[str, Any]:
    names = fleet.host_names
    for n in names:
        remove_images(fleet.api(n))
    storage = run_dir / "registry"
    storage.mkdir()
    config = run_dir / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
        f"http:\n  addr: {bed.registry}\n")
    proc = bed.spawn("builder", "registry", [REGISTRY_BIN, "serve", str(config)])
    deadline_up = time.monotonic() + 30
    while bed.run("builder", ["bash", "-c", f"exec 3<>/dev/tcp/{bed.hosts['builder'].ip}/{REGISTRY_PORT}"],
                  check=False).returncode != 0:
        if proc.popen is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"docker-registry exited:\n{proc.text()[-2000:]}")
        if time.monotonic() > deadline_up:
            raise RuntimeError("docker-registry did not listen within 30 s")
        time.sleep(0.2)

    repo = f"{bed.registry}/bench/{ref.split(':')[0].split('/')[-1]}"
    tag = ref.split(":")[1]
    builder = fleet.host("builder").api(timeout=1800)
    builder.tag(ref, repo, tag)
    t = time.monotonic()
    for event in builder.push(repo, tag, stream=True, decode=True):
        if "error" in event:
            raise RuntimeError(f"docker push: {event['error']}")
    push_s = time.monotonic() - t
    gz_sizes = registry_layer_sizes(storage, repo.split("/", 1)[1], tag)

    results: dict[str, float] = {}
    errors: dict[str, str] = {}
    with CpuMeter(bed, ["builder", *names]) as cpu:
        t0 = time.monotonic()

        def pull(name: str) -> None:
            try:
                api = fleet.host(name).api(timeout=1800)
                for event in api.pull(repo, tag=tag, stream=True, decode=True):
                    if "error" in event:
                        raise RuntimeError(event["error"])
                results[name] = round(time.monotonic() - t0, 2)
                got = api.inspect_image(f"{repo}:{tag}")["Id"]
                if got != image_id:
                    errors[name] = f"pulled {got}, expected {image_id}"
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"

        threads = [threading.Thread(target=pull, args=(n,), daemon=True) for n in names]
        for th in threads:
            th.start()
        for th in threads:
            th.join(max(1.0, deadline - time.monotonic()))
    if errors or len(results) < len(names):
        raise RuntimeError(f"registry pulls failed or timed out: {errors or set(names) - set(results)}")
    proc.stop()
    return {"hosts": results, "push_s": round(push_s, 2), "gz_bytes": sum(gz_sizes), "gz_layers": gz_sizes,
            "cpu": cpu.report(), "repo": repo}


def registry_layer_sizes(storage: Path, name: str, tag: str) -> list[int]:
    """The layer sizes of the manifest the registry serves for name:tag (read from its storage)."""
    v2 = storage / "docker" / "registry" / "v2"
    link = (v2 / "repositories" / name / "_manifests" / "tags" / tag / "current" / "link").read_text().strip()
    hex_ = link.split(":", 1)[1]
    manifest = json.loads((v2 / "blobs" / "sha256" / hex_[:2] / hex_ / "data").read_text())
    return [int(layer["size"]) for layer in manifest["layers"]]


def load_phase(fleet: Fleet, ref: str, run_dir: Path, repeats: int) -> dict[str, Any]:
    """h1, under its CPU share: plain `docker load` of the image tarball, the agent's load stage
    (streamed from the blobs), and `docker load` of the top layer alone (the layers below it loaded)."""
    from swarm.core.digest import digest_hex
    from swarm.images import load as docker_load

    manifest = fleet.manifest(ref)
    blobs_dir = fleet.agent("builder").data / "blobs"
    layers = [(layer.diff_id, layer.size, blobs_dir / digest_hex(layer.blob), layer.compression)
              for layer in manifest.layers]
    tarball = run_dir / "image.tar"
    with open(tarball, "wb") as f:
        for chunk in docker_load.image_tar_stream(ref, manifest.config, layers):
            f.write(chunk)
    top = run_dir / "top.tar"
    top_layer_tarball(tarball, top, digest_hex(layers[-1][0]))
    base_config = json.loads(manifest.config)
    base_config["rootfs"] = {"type": "layers", "diff_ids": base_config["rootfs"]["diff_ids"][:-1]}
    base_config.pop("history", None)
    base_config_bytes = json.dumps(base_config).encode()
    host = fleet.host("h1")
    api = host.api(timeout=1800)
    plain: list[float] = []
    stage: list[float] = []
    top_s: list[float] = []
    for _ in range(repeats):
        remove_images(api)
        plain.append(round(docker_cli(host.docker_host, "load", "-i", str(tarball)), 2))
        remove_images(api)
        t = time.monotonic()
        docker_load.load_image(api, docker_load.image_tar_stream(ref, manifest.config, layers))
        if docker_load.image_id(api, ref) != manifest.image_id:
            raise RuntimeError("the streamed load gave another image ID")
        stage.append(round(time.monotonic() - t, 2))
        remove_images(api)
        docker_load.load_image(api, docker_load.image_tar_stream("bench/base:1", base_config_bytes, layers[:-1]))
        top_s.append(round(docker_cli(host.docker_host, "load", "-i", str(top)), 2))
        if docker_load.image_id(api, ref) != manifest.image_id:
            raise RuntimeError("the top-layer load gave another image ID")
    size = tarball.stat().st_size
    tarball.unlink()
    top.unlink()
    return {"docker_load_s": plain, "load_stage_s": stage, "tarball_bytes": size, "top_layer_load_s": top_s,
            "top_layer_bytes": layers[-1][1]}


def top_layer_tarball(full: Path, out: Path, top_hex: str) -> None:
    """The image tarball `full` without the layer files of every layer but the top one.

    `docker load` opens a layer's file only when its engine lacks that layer, so with the
    lower layers already loaded this loads exactly what a streaming system has left to do
    once the top layer has arrived."""
    import tarfile
    with tarfile.open(full) as src, tarfile.open(out, "w") as dst:
        for member in src:
            if member.name.endswith("/layer.tar") and not member.name.startswith(top_hex):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)


# -- report ---------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    import libtorrent as lt
    docker_version = subprocess.run(["dockerd", "--version"], capture_output=True, text=True).stdout.strip()
    registry_version = (subprocess.run([REGISTRY_BIN, "--version"], capture_output=True, text=True).stdout.strip()
                        if shutil.which(REGISTRY_BIN) else "not installed")  # --no-registry runs need none
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "libtorrent": lt.__version__, "dockerd": docker_version, "registry": registry_version,
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    n = r["args"]["hosts"]
    u = rate_bytes(r["args"]["rate"])
    ld = r.get("load") or {}
    load_s = statistics.median(ld["docker_load_s"]) if ld else 0.0
    # runs before the top-layer measurement added the whole image's load
    last_s = statistics.median(ld["top_layer_load_s"]) if ld.get("top_layer_load_s") else load_s
    f = r["swarm"]["blob_bytes"]
    b_swarm = bound(f, n, u, [u] * n, u) + last_s
    sw = [h["done_s"] for h in r["swarm"]["hosts"].values()]
    sw_dist = [h["done_s"] - r["swarm"]["seed_s"] for h in r["swarm"]["hosts"].values()]
    s = {"n": n, "size_mib": r["args"]["size_mib"], "tag": r["args"].get("tag", ""), "variant": r["args"]["variant"],
         "rate": r["args"]["rate"], "cpus_per_host": r["args"].get("cpus_per_host"),
         "F": f, "bound_s": round(b_swarm, 1), "docker_load_s": round(load_s, 1), "last_load_s": round(last_s, 1),
         "swarm_p50": round(pct(sw, .5), 1), "swarm_max": round(max(sw), 1),
         "swarm_dist_max": round(max(sw_dist), 1), "seed_s": r["swarm"]["seed_s"],
         "swarm_over_bound": round(max(sw) / b_swarm, 2), "swarm_p50_over_bound": round(pct(sw, .5) / b_swarm, 2),
         "builder_dup": round(r["swarm"]["builder_uploaded"] / f, 2)}
    if r.get("registry"):
        rg = list(r["registry"]["hosts"].values())
        fg = r["registry"]["gz_bytes"]
        s.update(registry_p50=round(pct(rg, .5), 1), registry_max=round(max(rg), 1),
                 registry_over_swarm=round(max(rg) / max(sw), 2), F_gz=fg,
                 registry_bound_s=round(n * fg / u + last_s, 1))
    return s


def table_rows(summaries: list[dict[str, Any]]) -> list[str]:
    rows = ["| N | image | F (wire) | swarm p50 / max s | registry p50 / max s | bound s | swarm/bound "
            "| registry/swarm |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        reg = f"{s['registry_p50']} / {s['registry_max']}" if "registry_max" in s else "—"
        ratio = f"{s['registry_over_swarm']}x" if "registry_over_swarm" in s else "—"
        tag = f" ({s['tag']})" if s.get("tag") else ""
        star = "" if s["docker_load_s"] else " (no load)"
        cpus = s.get("cpus_per_host")
        tag += f", {cpus:.2f} CPU/host" if cpus else ""
        rows.append(f"| {s['n']} | {s['size_mib']} MiB {s['variant']} @ {s['rate']}{tag} | {s['F'] / MiB:.1f} MiB "
                    f"| {s['swarm_p50']} / {s['swarm_max']} | {reg} | {s['bound_s']}{star} "
                    f"| {s['swarm_over_bound']}x | {ratio} |")
    return rows


def write_report(r: dict[str, Any], stem: str) -> None:
    s = summarize(r)
    r["summary"] = s
    (RESULTS / f"{stem}.json").write_text(json.dumps(r, indent=1, sort_keys=True) + "\n")
    try:
        plot(r, s, RESULTS / f"{stem}.png")
    except ModuleNotFoundError as exc:  # matplotlib: `scripts/setup.sh --bench`
        print(f"no plot: {exc}", file=sys.stderr)
    a, m, sw = r["args"], r["machine"], r["swarm"]
    lines = [f"# Fleet benchmark: {a['hosts']} hosts, {a['size_mib']} MiB {a['variant']} image, {a['rate']} links",
             "",
             f"Run {r['started']} UTC; `{r['command']}`; took {r['wall_s']:.0f} s.",
             f"Machine: {m['nproc']} cores, {m['mem_gib']} GiB, kernel {m['kernel']}, Python {m['python']}, "
             f"libtorrent {m['libtorrent']}, {m['dockerd']}, {m['registry']}. "
             f"Load average before / after: {r['loadavg_before']} / {r['loadavg_after']}.",
             f"Settings: every host link {a['rate']} each way (tbf), builder uplink {a['rate']}; "
             f"{a['layers']} data layers + busybox; tracker announce interval 5 s; "
             f"swarm code: {r['git']}"
             + (f"; overrides {r['overrides']}." if r.get("overrides") else "."),
             "", *table_rows([s]), "",
             f"![per-host completion]({stem}.png)", "",
             "## Details", "",
             f"- Image: {sw['layer_bytes'] / MiB:.1f} MiB of layer tars; swarm's zstd blobs F = "
             f"{sw['blob_bytes'] / MiB:.1f} MiB"
             + (f"; the registry's gzip layers {r['registry']['gz_bytes'] / MiB:.1f} MiB." if r.get("registry")
                else "."),
             f"- Bound = max(F/u_seed, N·F/(u_seed+Σu_i), F/d_min) + load of the top layer after it arrives = "
             f"{s['bound_s'] - s.get('last_load_s', s['docker_load_s']):.1f} s + "
             f"{s.get('last_load_s', s['docker_load_s'])} s (payload bytes; TCP/IP headers alone cost ~4.5% of a "
             f"1500-byte-MTU link; docs/benchmarks.md). CPU per host: "
             + (f"{a['cpus_per_host']:.3f} cores (CFS quota, builder and every host)." if a.get("cpus_per_host")
                else "not limited."),
             "- `swarm seed` steps (s: message): " + "; ".join(f"{t}: {m}" for t, m in sw.get("seed_steps", [])),
             f"- swarm: `swarm seed` took {sw['seed_s']} s; pulls started when it returned; the last host "
             f"was done {s['swarm_dist_max']} s later. Builder uploaded {sw['builder_uploaded'] / MiB:.1f} MiB "
             f"({sw['builder_uploaded'] / sw['blob_bytes']:.2f} F).",
             "- swarm per host (s from seed start: done; stage first seen, 0.5 s resolution): "
             + "; ".join(f"{n} {h['done_s']} ({', '.join(f'{k} {v}' for k, v in h['stages'].items())})"
                         for n, h in sorted(sw["hosts"].items())),
             f"- swarm CPU: machine busy {sw['cpu']['machine_busy']:.0%} of {m['nproc']} cores over "
             f"{sw['cpu']['wall_s']} s; CPU seconds per host namespace (agent + dockerd): "
             + ", ".join(f"{k} {v}" for k, v in sw["cpu"]["ns_cpu_s"].items())
             + ("; held back by the quota (s): " + ", ".join(f"{k} {v}" for k, v in sw["cpu"]["throttled_s"].items())
                if sw["cpu"].get("throttled_s") else ""),
             f"- bytes each host got from the builder (MiB): "
             + ", ".join(f"{k} {v / MiB:.0f}" for k, v in sorted(sw["from_builder"].items()))]
    if r.get("registry"):
        rg = r["registry"]
        lines += [
            f"- registry: push (not timed) {rg['push_s']} s; per host (s from pull start): "
            + ", ".join(f"{k} {v}" for k, v in sorted(rg["hosts"].items())),
            f"- registry CPU: machine busy {rg['cpu']['machine_busy']:.0%} over {rg['cpu']['wall_s']} s; per host "
            "namespace: " + ", ".join(f"{k} {v}" for k, v in rg["cpu"]["ns_cpu_s"].items()),
            f"- registry bound (one server uploads N copies): N·F_gz/u_seed + top-layer load = "
            f"{s['registry_bound_s']} s"]
    if r.get("load"):
        ld = r["load"]
        lines += [
            "", "## Single host", "",
            "| step | plain Docker | swarm | ratio |", "| --- | ---: | ---: | ---: |",
            f"| export (`docker save` to a file vs `swarm seed`) | {r['docker_save_s']} s | {sw['seed_s']} s "
            f"| {sw['seed_s'] / r['docker_save_s']:.2f}x |",
            f"| load ({ld['tarball_bytes'] / MiB:.0f} MiB tarball: `docker load -i` vs the agent's load stage, "
            f"runs) | {ld['docker_load_s']} s | {ld['load_stage_s']} s "
            f"| {statistics.median(ld['load_stage_s']) / statistics.median(ld['docker_load_s']):.2f}x |",
        ]
        if ld.get("top_layer_load_s"):
            lines.append(f"| top layer alone ({ld['top_layer_bytes'] / MiB:.0f} MiB, the layers below loaded): "
                         f"`docker load -i` | {ld['top_layer_load_s']} s | | |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    regenerate_index()


def regenerate_index() -> None:
    runs = []
    for path in sorted(RESULTS.glob("fleet-n*.json")):
        r = json.loads(path.read_text())
        runs.append((r["summary"], path.stem, r))
    runs.sort(key=lambda x: (x[0]["variant"], x[0]["size_mib"], x[0]["n"]))
    lines = ["# Fleet benchmark: every run", "",
             "Written by `python bench/fleet.py` (see docs/benchmarks.md); one row per result file "
             "(the latest run of each setting). Times in seconds; swarm is measured from `swarm seed` "
             "starting, the registry from the pulls starting (push not timed). Findings and tuning: "
             "[fleet-findings.md](fleet-findings.md).", "",
             *table_rows([s for s, _stem, _r in runs]), "",
             "| run | started (UTC) | load avg before | seed s | docker save s | load stage / docker load s |",
             "| --- | --- | --- | ---: | ---: | --- |"]
    for s, stem, r in runs:
        ld = r.get("load") or {}
        lines.append(f"| [{stem}]({stem}.md) | {r['started']} | {r['loadavg_before']} | {s['seed_s']} "
                     f"| {r.get('docker_save_s', '—')} | {ld.get('load_stage_s', '—')} / "
                     f"{ld.get('docker_load_s', '—')} |")
    (RESULTS / "fleet.md").write_text("\n".join(lines) + "\n")


def plot(r: dict[str, Any], s: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"no plot {path.name}: matplotlib is not installed", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)

    def cdf(times: list[float], label: str, **kw: Any) -> None:
        xs = sorted(times)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step([0, *xs], [0, *ys], where="post", label=label, **kw)

    cdf([h["done_s"] for h in r["swarm"]["hosts"].values()], "swarm (from `swarm seed` start)", color="C0", lw=2)
    if r.get("registry"):
        cdf(list(r["registry"]["hosts"].values()), "registry (from `docker pull` start)", color="C3", lw=2)
        ax.axvline(s["registry_bound_s"], color="C3", ls=":", lw=1,
                   label=f"registry bound N·F_gz/u + top-layer load = {s['registry_bound_s']} s")
    ax.axvline(s["bound_s"], color="k", ls="--", lw=1.2, label=f"bound F/u + top-layer load = {s['bound_s']} s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("fraction of hosts with the image loaded")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(left=0)
    ax.grid(alpha=.3)
    ax.set_title(f"{s['n']} hosts, {s['size_mib']} MiB {s['variant']} image, {s['rate']} links")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--size-mib", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rate", default="100mbit")
    p.add_argument("--variant", choices=("random", "compressible"), default="random")
    p.add_argument("--timeout", type=float, default=2400, help="seconds for the whole run (then teardown)")
    p.add_argument("--no-registry", action="store_true", help="skip the registry baseline (tuning runs)")
    p.add_argument("--load-repeats", type=int, default=2)
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. a tuning variant)")
    p.add_argument("--keep-logs", action="store_true", help="keep the run's logs in /tmp")
    p.add_argument("--cpus-per-host", default="auto",
                   help="fixed CPU share of the builder and each host (cores), 'auto' = cores/(N+1), 'none'")
    a = p.parse_args()
    cores = os.cpu_count() or 1
    if a.cpus_per_host == "none":
        a.cpus_per_host = None
    else:
        try:
            a.cpus_per_host = cores / (a.hosts + 1) if a.cpus_per_host == "auto" else float(a.cpus_per_host)
        except ValueError:
            print(f"--cpus-per-host: expected a number, 'auto' or 'none', got {a.cpus_per_host!r}", file=sys.stderr)
            return 2
    for tool in (REGISTRY_BIN, "docker", "dockerd"):
        if not a.no_registry and shutil.which(tool) is None:
            print(f"{tool} is missing (apt-get install docker-registry docker.io)", file=sys.stderr)
            return 1

    def on_signal(signum: int, _frame: Any) -> None:
        raise Timeout(f"signal {signum}: stopping (timeout {a.timeout:.0f}s or interrupted)")
    signal.signal(signal.SIGALRM, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.alarm(int(a.timeout))
    deadline = time.monotonic() + a.timeout

    started = time.monotonic()
    run_dir = Path(f"/tmp/swarm-bench-{os.getpid()}")
    run_dir.mkdir()
    logs = run_dir / "logs"
    stem = f"fleet-n{a.hosts}-{a.size_mib}m-{a.variant}" + (f"-{a.tag}" if a.tag else "")
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    r: dict[str, Any] = {
        "args": vars(a), "command": "python bench/fleet.py " + " ".join(sys.argv[1:]),
        "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), "machine": machine_facts(),
        "loadavg_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]), "git": f"{REPO.name} {git}",
        # a scratch copy of swarm may read these to override settings while tuning
        "overrides": {k: v for k, v in os.environ.items() if k.startswith("SWARM_BENCH_")},
    }
    ok = False
    try:
        with BenchTestbed(logs) as bed:
            t = time.monotonic()
            fleet = Fleet(bed, hosts=a.hosts, builder_egress=a.rate, host_egress=a.rate,
                          host_ingress=a.rate, host_cpus=a.cpus_per_host).start()
            check_placement(bed, ["builder", *fleet.host_names])
            log(f"fleet of {a.hosts} hosts up in {time.monotonic() - t:.1f}s; logs in {logs}; CPU per host "
                + (f"{a.cpus_per_host:.3f} cores" if a.cpus_per_host else "unlimited"))
            ref = f"bench/{a.variant}:1"
            t = time.monotonic()
            image_id = build(fleet, ref, a.size_mib * MiB, a.layers, a.variant == "compressible")
            log(f"built {ref} {image_id[:19]} in {time.monotonic() - t:.1f}s")
            builder = fleet.host("builder")
            r["docker_save_s"] = round(docker_cli(builder.docker_host, "save", "-o", str(run_dir / "save.tar"),
                                                  ref), 2)
            (run_dir / "save.tar").unlink()
            log(f"docker save: {r['docker_save_s']}s")
            r["swarm"] = swarm_phase(fleet, ref, deadline)
            times = sorted(h["done_s"] for h in r["swarm"]["hosts"].values())
            log(f"swarm: seed {r['swarm']['seed_s']}s, hosts done {times}")
            check_placement(bed, ["builder", *fleet.host_names])
            if not a.no_registry:
                r["registry"] = registry_phase(fleet, bed, ref, image_id, run_dir, deadline)
                log(f"registry: hosts done {sorted(r['registry']['hosts'].values())}")
            if a.load_repeats:
                r["load"] = load_phase(fleet, ref, run_dir, a.load_repeats)
                log(f"load: docker load {r['load']['docker_load_s']}, load stage {r['load']['load_stage_s']}, "
                    f"top layer alone {r['load']['top_layer_load_s']}")
            r["loadavg_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            r["wall_s"] = time.monotonic() - started
            write_report(r, stem)
            log(f"wrote {RESULTS / stem}.md: " + json.dumps(r["summary"]))
            ok = True
    finally:
        signal.alarm(0)
        if ok and not a.keep_logs:
            shutil.rmtree(run_dir, ignore_errors=True)
        elif run_dir.exists():
            for leftover in ("save.tar", "image.tar", "top.tar", "registry"):
                shutil.rmtree(run_dir / leftover, ignore_errors=True) if (run_dir / leftover).is_dir() \
                    else (run_dir / leftover).unlink(missing_ok=True)
            print(f"logs kept in {logs}", file=sys.stderr)
    return 0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
