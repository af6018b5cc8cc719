"""Layers in image order: which to download now, and the image a loaded prefix makes.

A host that loads while it downloads wants layer 1 first: Docker registers
layers bottom-up, so a layer that arrived early but sits above a missing one
waits. The window keeps the first unfinished layers wanted (at least two, and
at least `min_bytes` of them, so the next layer is under way while one ends) and
the rest not wanted yet; the swarm then moves through the image in order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from swarm.core.errors import InvalidInput

#: the window holds at least this many blob bytes (a run of small layers is fetched together)
#: measured in bench/results/fleet-findings.md (8 MiB: more duplicates from the builder)
WINDOW_BYTES = 48 * 1024 * 1024
WINDOW_LAYERS = 2


def download_window(
    pending: Sequence[tuple[str, int]], min_layers: int = WINDOW_LAYERS, min_bytes: int = WINDOW_BYTES
) -> list[str]:
    """The blobs to download now, of `pending` (blob, size) not yet downloaded, in image order."""
    window: list[str] = []
    total = 0
    for blob, size in pending:
        if len(window) >= min_layers and total >= min_bytes:
            break
        window.append(blob)
        total += size
    return window


def loadable_prefix(blobs: Sequence[str], ready: set[str]) -> int:
    """How many layers from the bottom are ready (`blobs` in image order, one per layer)."""
    n = 0
    for blob in blobs:
        if blob not in ready:
            break
        n += 1
    return n


def prefix_config(config: bytes, count: int, label: str) -> bytes:
    """The image config of the bottom `count` layers of `config`'s image: what a staged load
    registers in Docker so the layers stay there until the whole image is loaded.

    `label` (the pull's reference) makes the config, hence the image ID, this pull's own.
    History is dropped: it describes the whole image, and Docker checks it against the layers.
    """
    try:
        doc = json.loads(config)
        diff_ids = doc["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"image config without rootfs.diff_ids: {exc}") from exc
    if not isinstance(diff_ids, list) or not 0 < count < len(diff_ids):
        raise InvalidInput(f"no prefix of {count} layers in an image of {len(diff_ids)}")
    doc["rootfs"] = {"type": "layers", "diff_ids": diff_ids[:count]}
    doc.pop("history", None)
    doc["swarm_partial"] = f"{label} {count}/{len(diff_ids)}"
    return json.dumps(doc, sort_keys=True).encode()
