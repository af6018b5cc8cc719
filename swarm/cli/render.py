"""Terminal rendering for the client commands (rich)."""

from __future__ import annotations

import time

from rich.console import Console

from swarm.agent.api import CACHED, NOT_CACHED, ImageInfo, PulledImage, StatusResponse
from swarm.cli.tables import print_table
from swarm.core.units import human_bytes

err = Console(stderr=True)
out = Console()


def status_table(status: StatusResponse) -> None:
    out.print(
        f"[bold]{status.name}[/] ({status.role}{', relay' if status.relay else ''})  tracker {status.tracker} "
        f"{'reachable' if status.tracker_reachable else '[red]unreachable[/]'}  "
        f"certificate expires in {max(0, status.certificate_expires - int(time.time())) // 60} min  "
        f"peer port {status.peer_port}"
    )
    cache = status.cache
    line = f"cache: {human_bytes(cache.bytes)} in {cache.blobs} blobs"
    if cache.reserved:
        line += f", {human_bytes(cache.reserved)} reserved for downloads"
    if cache.budget:
        line += f" (budget {human_bytes(cache.budget)})"
    if cache.over_budget:
        line += f"  [bold red]OVER BUDGET by {human_bytes(cache.over_budget)}[/] (nothing left to evict)"
    out.print(line)
    print_table(
        out,
        ("image", "id", "group", "layers", "cached"),
        [(img.ref, img.image_id[7:19], img.group, str(img.layers), _cached(img)) for img in status.images],
        title="images",
    )
    print_table(
        out,
        ("blob", "state", "progress", "down", "up", "peers"),
        [
            (
                t.blob[7:19],
                t.state,
                f"{t.progress * 100:.0f}%",
                f"{human_bytes(t.download_rate)}/s",
                f"{human_bytes(t.upload_rate)}/s",
                str(sum(1 for p in t.peers if p.connected)),
            )
            for t in status.torrents
        ],
        title="layers",
    )


def _cached(img: ImageInfo) -> str:
    """Whether this host still holds (and so seeds) the image's blobs."""
    if img.cache == CACHED:
        return "yes"
    if img.cache == NOT_CACHED:
        return "[yellow]no[/] (evicted; not seeded)"
    return f"[yellow]{img.cached_blobs} of {img.blobs} blobs[/] (partly evicted; not seeded whole)"


def pulled_note(img: PulledImage) -> str:
    """A line for stderr about a pull that loaded nothing ("" for an ordinary pull)."""
    if img.outcome == "cached":
        return f"{img.ref}: cached and seeding (relay, not loaded into Docker)"
    if img.outcome != "already-in-docker":
        return ""
    if img.seeding:
        return f"{img.ref}: already in Docker"
    return (
        f"{img.ref}: already in Docker; its layers are no longer cached here, so this host does not "
        f"seed it (`swarm pull --seed {img.ref}` fetches them)"
    )
