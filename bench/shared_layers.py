"""What it costs a host in two groups to seed one blob in both groups' swarms.

The same blob in images of groups web and pci has two torrents (each named after its group). A host
in both holds the blob for the first and must serve the second too. Three ways, alternated in one run:

- `one-file`: the second torrent is added over the very same file (libtorrent `renamed_files`), in
  seed mode: what the agent does;
- `hardlink`: a second name for the same inode, the second torrent over it;
- `copy`: a second file with the same bytes.

For each: seconds from "the second torrent is wanted" to "it is seeding", and disk bytes used by
both (distinct inodes, allocated blocks). A real libtorrent session; the blob is random bytes.

    python3 bench/shared_layers.py --size-mib 256 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import libtorrent as lt

from swarm.core.groups import group_id
from swarm.engine.metainfo import make_torrent

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
RESULTS = Path(__file__).resolve().parent / "results" / "shared-layers.md"
VARIANTS = ("one-file", "hardlink", "copy")


def disk_bytes(root: Path) -> int:
    seen, total = set(), 0
    for f in root.iterdir():
        st = f.stat()
        if f.is_file() and st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_blocks * 512
    return total


def seeding(session: Any, handle: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not handle.status().is_seeding:
        if time.monotonic() > deadline:
            raise RuntimeError("the torrent did not reach seeding")
        session.wait_for_alert(20)
        session.pop_alerts()


def add_seed(session: Any, metainfo: bytes, save_dir: Path, file_name: str) -> Any:
    """A seed-mode torrent whose one file is `save_dir/file_name` (as `Engine.add(file_name=...)`)."""
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(metainfo)
    atp.save_path = str(save_dir)
    atp.renamed_files = {0: file_name}
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    atp.flags |= lt.torrent_flags.seed_mode
    return session.add_torrent(atp)


def run(variant: str, blob: Path, torrents: tuple[bytes, bytes]) -> tuple[float, int]:
    """(seconds until the second group's torrent seeds, disk bytes both use) for one variant."""
    settings = {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "alert_mask": lt.alert_category.status,
    }
    session = lt.session(settings)
    first = add_seed(session, torrents[0], blob.parent, blob.name)
    seeding(session, first)
    started = time.perf_counter()
    second = blob.name
    if variant == "hardlink":
        second = blob.name + ".pci"
        os.link(blob, blob.parent / second)
    elif variant == "copy":
        second = blob.name + ".pci"
        shutil.copyfile(blob, blob.parent / second)
        os.sync()
    other = add_seed(session, torrents[1], blob.parent, second)
    seeding(session, other)
    elapsed = time.perf_counter() - started
    used = disk_bytes(blob.parent)
    session.remove_torrent(first)
    session.remove_torrent(other)
    (blob.parent / (blob.name + ".pci")).unlink(missing_ok=True)
    return elapsed, used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results: dict[str, list[tuple[float, int]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="swarm-shared-", dir="/var/tmp") as tmp:
        blobs = Path(tmp) / "blobs"
        blobs.mkdir()
        blob = blobs / ("ab" * 32)
        with open(blob, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(1024 * 1024))
        torrents = (make_torrent(blob, CA, group_id("web")), make_torrent(blob, CA, group_id("pci")))
        for r in range(a.rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # alternate: neither always runs first
            for v in order:
                results[v].append(run(v, blob, torrents))
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    lines = [
        "# One blob in two groups' swarms on one host",
        "",
        f"`python bench/shared_layers.py --size-mib {a.size_mib} --rounds {a.rounds}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"load average {load_before} before, {load_after} after; variants alternated per round.",
        "",
        "| variant | second swarm seeding after (s, median) | runs (s) | disk for both (MiB) |",
        "|---|---|---|---|",
    ]
    for v in VARIANTS:
        times = [t for t, _ in results[v]]
        disk = statistics.median(d for _, d in results[v]) / 2**20
        lines.append(f"| {v} | {statistics.median(times):.4f} | {', '.join(f'{t:.4f}' for t in times)} | {disk:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
