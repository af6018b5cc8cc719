"""Terminal rendering for the client commands (rich)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from rich.table import Table

from swarm.agent.api import CACHED, NOT_CACHED, ImageInfo, PulledImage, PullProgress, StatusResponse
from swarm.core.units import human_bytes

err = Console(stderr=True)
out = Console()


class PullProgressBars:
    """One bar per layer blob, fed by the agent's progress messages."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TextColumn("{task.fields[peers]} peers"), console=err, transient=False,
        )
        self._tasks: dict[tuple[str, str], TaskID] = {}
        self._stages: dict[str, str] = {}

    def __enter__(self) -> PullProgressBars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, msg: PullProgress) -> None:
        if self._stages.get(msg.ref) != msg.stage:
            self._stages[msg.ref] = msg.stage
            if not err.is_terminal:
                err.print(f"{msg.ref}: {msg.stage}")
        for layer in msg.layers:
            key = (msg.ref, layer.blob)
            desc = f"{msg.ref} {layer.blob[7:19]} {layer.state}"
            if key not in self._tasks:
                self._tasks[key] = self._progress.add_task(desc, total=layer.total, peers=0)
            self._progress.update(self._tasks[key], description=desc, completed=layer.done, peers=layer.peers)


def status_table(status: StatusResponse) -> None:
    out.print(f"[bold]{status.name}[/] ({status.role})  tracker {status.tracker} "
              f"{'reachable' if status.tracker_reachable else '[red]unreachable[/]'}  "
              f"certificate expires in {max(0, status.certificate_expires - int(time.time())) // 60} min  "
              f"peer port {status.peer_port}")
    cache = status.cache
    line = f"cache: {human_bytes(cache.bytes)} in {cache.blobs} blobs"
    if cache.reserved:
        line += f", {human_bytes(cache.reserved)} reserved for downloads"
    if cache.budget:
        line += f" (budget {human_bytes(cache.budget)})"
    if cache.over_budget:
        line += f"  [bold red]OVER BUDGET by {human_bytes(cache.over_budget)}[/] (nothing left to evict)"
    out.print(line)
    images = Table("image", "id", "layers", "cached", title="images")
    for img in status.images:
        images.add_row(img.ref, img.image_id[7:19], str(img.layers), _cached(img))
    out.print(images)
    layers = Table("blob", "state", "progress", "down", "up", "peers", title="layers")
    for t in status.torrents:
        layers.add_row(t.blob[7:19], t.state, f"{t.progress * 100:.0f}%",
                       f"{human_bytes(t.download_rate)}/s", f"{human_bytes(t.upload_rate)}/s",
                       str(sum(1 for p in t.peers if p.connected)))
    out.print(layers)


def _cached(img: ImageInfo) -> str:
    """Whether this host still holds (and so seeds) the image's blobs."""
    if img.cache == CACHED:
        return "yes"
    if img.cache == NOT_CACHED:
        return "[yellow]no[/] (evicted; not seeded)"
    return f"[yellow]{img.cached_blobs} of {img.blobs} blobs[/] (partly evicted; not seeded whole)"


def pulled_note(img: PulledImage) -> str:
    """A line for stderr about a pull that loaded nothing ("" for an ordinary pull)."""
    if img.outcome != "already-in-docker":
        return ""
    if img.seeding:
        return f"{img.ref}: already in Docker"
    return (f"{img.ref}: already in Docker; its layers are no longer cached here, so this host does not "
            f"seed it (`swarm pull --seed {img.ref}` fetches them)")
