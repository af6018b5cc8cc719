"""`swarm pull` progress, drawn from the agent's PullProgress messages.

Three views of the same numbers: live rows on a terminal (a total row per
image with rate, ETA and peers, then one row per layer), a plain line every
few seconds and at every stage when stderr is not a terminal, and JSON lines
on stdout for scripts (`--json`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from swarm.agent.api import LayerProgress, PulledImage, PullProgress
from swarm.core.units import human_bytes

#: seconds between two plain progress lines of a download
PLAIN_EVERY = 3.0

STAGE_WORDS = {
    "resolving": "fetching the signed manifest",
    "downloading": "downloading",
    "verifying": "verifying sha256",
    "loading": "loading into Docker",
    "waiting-for-docker": "waiting for Docker",
    "done": "done",
}


def stage_words(msg: PullProgress) -> str:
    if msg.stage == "done" and msg.note:
        return msg.note  # "already in Docker"
    return STAGE_WORDS.get(msg.stage, msg.stage)


def layer_words(layer: LayerProgress, stage: str) -> str:
    """What a layer is doing, in swarm's words rather than libtorrent's state names."""
    if layer.state == "cached":
        return "cached"
    if layer.state == "in-docker":
        return "loaded"
    if layer.state == "queued":
        return "queued (lower layers first)"
    downloaded = layer.total > 0 and layer.done >= layer.total
    if downloaded or layer.state in ("finished", "seeding"):
        return {"verifying": "verifying", "loading": "loading", "done": "done"}.get(stage, "downloaded")
    if layer.state in ("checking", "checking-resume"):
        return "checking what is on disk"
    if layer.state == "waiting" or layer.state == "downloading-metadata":
        return "waiting"
    if layer.peers == 0:
        return "looking for peers"
    return "downloading"


def peers_words(n: int) -> str:
    return "1 peer" if n == 1 else f"{n} peers"


def short_id(blob: str) -> str:
    return blob.removeprefix("sha256:")[:12]


@dataclass(frozen=True)
class Totals:
    """The bytes an image still fetches (cached layers left out), how fast, and from how many peers."""

    done: int
    total: int
    rate: int
    peers: int

    @classmethod
    def of(cls, msg: PullProgress) -> Totals:
        fetched = [layer for layer in msg.layers if layer.state != "cached"]
        return cls(
            sum(min(layer.done, layer.total) for layer in fetched),
            sum(layer.total for layer in fetched),
            sum(layer.rate for layer in fetched),
            max((layer.peers for layer in fetched), default=0),
        )

    @property
    def eta(self) -> float | None:
        if self.rate <= 0:
            return None
        return max(0, self.total - self.done) / self.rate


def eta_words(seconds: float | None) -> str:
    if seconds is None:
        return "ETA -"
    s = int(seconds + 0.5)
    return f"ETA {s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"ETA {s // 60}:{s % 60:02d}"


def summary(msg: PullProgress) -> str:
    """One line: stage, bytes, rate, ETA, peers (the plain view's line, the live view's total row)."""
    t = Totals.of(msg)
    words = stage_words(msg)
    if msg.stage == "waiting-for-docker" and msg.note:
        words += f" ({msg.note})"
    if msg.stage != "downloading":
        return words
    pct = 100 * t.done // t.total if t.total else 100
    return (
        f"{words} {human_bytes(t.done)} of {human_bytes(t.total)} ({pct}%), {human_bytes(t.rate)}/s, "
        f"{eta_words(t.eta)}, {peers_words(t.peers)}"
    )


class PullView(Protocol):
    def __enter__(self) -> PullView: ...
    def __exit__(self, *exc: object) -> None: ...
    def update(self, msg: PullProgress) -> None: ...
    def pulled(self, img: PulledImage, note: str) -> None: ...


class LiveView:
    """On a terminal: per image a total row, then one row per layer, redrawn in place."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._latest: dict[str, PullProgress] = {}
        self._live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.update(self._render())
        self._live.stop()

    def update(self, msg: PullProgress) -> None:
        previous = self._latest.get(msg.ref)
        self._latest[msg.ref] = msg
        # a stage may last less than a refresh: draw each one at once
        self._live.update(self._render(), refresh=previous is None or previous.stage != msg.stage)

    def pulled(self, img: PulledImage, note: str) -> None:
        if note:
            self._console.print(note, markup=False, highlight=False)
        click.echo(f"{img.ref} {img.image_id}")

    def _render(self) -> Group:
        table = Table.grid(padding=(0, 2))
        for _ in range(4):
            table.add_column()
        for msg in self._latest.values():
            t = Totals.of(msg)
            table.add_row(
                Text(msg.ref, style="bold"),
                ProgressBar(t.total or 1, t.done if t.total else 1, width=30),
                f"{human_bytes(t.done)} / {human_bytes(t.total)}",
                summary(msg),
            )
            for layer in msg.layers:
                table.add_row(
                    f"  {short_id(layer.blob)}",
                    ProgressBar(layer.total or 1, layer.done, width=30),
                    human_bytes(layer.total),
                    layer_words(layer, msg.stage),
                )
        return Group(table)


class PlainView:
    """Not a terminal: a line at every stage and every PLAIN_EVERY seconds of a download; no drawing."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._stage: dict[str, str] = {}
        self._last_line: dict[str, float] = {}

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, msg: PullProgress) -> None:
        now = time.monotonic()
        if self._stage.get(msg.ref) != msg.stage:
            self._stage[msg.ref] = msg.stage
            if msg.stage == "downloading":
                self._line(
                    f"{msg.ref}: {len(msg.layers)} layers, "
                    + ", ".join(
                        f"{short_id(layer.blob)} {human_bytes(layer.total)}"
                        + (" cached" if layer.state == "cached" else "")
                        for layer in msg.layers
                    )
                )
        elif msg.stage != "downloading" or now - self._last_line.get(msg.ref, 0.0) < PLAIN_EVERY:
            return
        self._last_line[msg.ref] = now
        self._line(f"{msg.ref}: {summary(msg)}")

    def _line(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False, soft_wrap=True)

    def pulled(self, img: PulledImage, note: str) -> None:
        if note:
            self._line(note)
        click.echo(f"{img.ref} {img.image_id}")


class JsonView:
    """`--json`: one JSON object a line on stdout, {"event": "progress"|"pulled", ...}."""

    def __enter__(self) -> JsonView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, msg: PullProgress) -> None:
        t = Totals.of(msg)
        self._emit(
            {
                "event": "progress",
                "ref": msg.ref,
                "stage": msg.stage,
                "note": msg.note,
                "done": t.done,
                "total": t.total,
                "rate": t.rate,
                "eta": t.eta,
                "peers": t.peers,
                "layers": [
                    {
                        "blob": layer.blob,
                        "id": short_id(layer.blob),
                        "size": layer.total,
                        "done": layer.done,
                        "rate": layer.rate,
                        "peers": layer.peers,
                        "state": layer_words(layer, msg.stage),
                    }
                    for layer in msg.layers
                ],
            }
        )

    def pulled(self, img: PulledImage, note: str) -> None:
        self._emit({"event": "pulled", **img.to_map()})

    @staticmethod
    def _emit(event: dict[str, Any]) -> None:
        click.echo(json.dumps(event, separators=(",", ":")))


def pull_view(as_json: bool, err: Console) -> PullView:
    """JSON lines if asked, live rows on a terminal, plain lines otherwise."""
    if as_json:
        return JsonView()
    if err.is_terminal and not err.is_dumb_terminal:
        return LiveView(err)
    return PlainView(err)
