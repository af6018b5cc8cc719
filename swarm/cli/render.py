"""Terminal rendering for the client commands (rich)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from rich.table import Table

from swarm.agent.api import PullProgress, StatusResponse
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
    out.print(f"cache: {human_bytes(cache.bytes)} in {cache.blobs} blobs"
              + (f" (budget {human_bytes(cache.budget)})" if cache.budget else ""))
    images = Table("image", "id", "layers", title="images")
    for img in status.images:
        images.add_row(img.ref, img.image_id[7:19], str(img.layers))
    out.print(images)
    layers = Table("blob", "state", "progress", "down", "up", "peers", title="layers")
    for t in status.torrents:
        layers.add_row(t.blob[7:19], t.state, f"{t.progress * 100:.0f}%",
                       f"{human_bytes(t.download_rate)}/s", f"{human_bytes(t.upload_rate)}/s",
                       str(sum(1 for p in t.peers if p.connected)))
    out.print(layers)
