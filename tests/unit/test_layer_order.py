"""Image order: the download window, the loadable bottom of an image, a partial image's config."""

from __future__ import annotations

import hashlib
import json

import pytest

from swarm.core.errors import InvalidInput
from swarm.core.layer_order import download_window, loadable_prefix, prefix_config

MIB = 1024 * 1024


def test_window_holds_two_layers_when_they_are_big_enough() -> None:
    pending = [("a", 30 * MIB), ("b", 30 * MIB), ("c", 30 * MIB)]
    assert download_window(pending) == ["a", "b"]


def test_window_takes_small_layers_until_it_holds_enough_bytes() -> None:
    pending = [("a", MIB), ("b", 2 * MIB), ("c", 3 * MIB), ("d", 4 * MIB), ("e", 4 * MIB)]
    assert download_window(pending, min_bytes=8 * MIB) == ["a", "b", "c", "d"]


def test_window_of_the_last_layer_and_of_nothing() -> None:
    assert download_window([("z", 1)]) == ["z"]
    assert download_window([]) == []


def test_loadable_prefix_stops_at_the_first_missing_layer() -> None:
    assert loadable_prefix(["a", "b", "c"], {"a", "c"}) == 1
    assert loadable_prefix(["a", "b", "a"], {"a", "b"}) == 3
    assert loadable_prefix(["a", "b"], set()) == 0


def _config(n: int) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["true"]},
                       "rootfs": {"type": "layers", "diff_ids": [f"sha256:{i:064x}" for i in range(n)]},
                       "history": [{"created_by": f"step {i}"} for i in range(n)]}).encode()


def test_prefix_config_keeps_the_bottom_layers_and_is_the_pulls_own() -> None:
    doc = json.loads(prefix_config(_config(4), 2, "demo/app:1"))
    assert doc["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{i:064x}" for i in range(2)]}
    assert "history" not in doc and doc["config"] == {"Cmd": ["true"]} and doc["os"] == "linux"
    ids = {hashlib.sha256(prefix_config(_config(4), 2, ref)).hexdigest() for ref in ("demo/app:1", "demo/app:2")}
    assert len(ids) == 2, "two pulls never share a partial image"


@pytest.mark.parametrize("count", [0, 4, 5])
def test_prefix_config_refuses_a_prefix_that_is_not_a_proper_one(count: int) -> None:
    with pytest.raises(InvalidInput):
        prefix_config(_config(4), count, "demo/app:1")


def test_prefix_config_refuses_a_config_without_layers() -> None:
    with pytest.raises(InvalidInput):
        prefix_config(b'{"os": "linux"}', 1, "demo/app:1")
