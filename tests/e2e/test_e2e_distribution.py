"""Scenario 1: a three-layer image reaches four hosts in network namespaces."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from swarm.images.synthetic import run_image
from swarm.images.synthetic import payload
from tests.e2e.images import CMD, HELLO, MiB, app_layers
from tests.support.testbed import Fleet

pytestmark = [pytest.mark.netns, pytest.mark.docker, pytest.mark.slow]


def test_three_layer_image_reaches_four_hosts(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(hosts=4)
    builder_id = fleet.build("app:1", app_layers(), CMD)
    seeded = fleet.seed("app:1")
    assert f"app:1 {builder_id}" in seeded
    manifest = fleet.manifest("app:1")
    assert len(manifest.layers) == 4  # busybox + three

    pulled = fleet.pull_all("app:1")

    blob_total = sum(layer.blob_size for layer in manifest.layers)
    for name in fleet.host_names:
        assert f"app:1 {builder_id}" in pulled[name]
        api = fleet.api(name)
        assert api.inspect_image("app:1")["Id"] == builder_id
        assert run_image(api, "app:1") == HELLO
        # every byte came over the bridge from peers, not from anywhere else
        assert fleet.received(name) >= blob_total
    # the hosts fed each other: together they got more from hosts than from the builder alone could give once
    from_hosts = sum(v for name in fleet.host_names for peer, v in fleet.received_from(name).items()
                     if peer != "builder")
    assert from_hosts > 0


#: a blob "crossed once" if a host received less than this times its size (libtorrent's
#: end game asks several peers for the last blocks: ~15% extra seen on a 3 MiB blob)
ONCE = 1.5
#: end-game duplicate blocks of a small layer under load (16 blocks): far below a second copy of the big one
DUPLICATES = 256 * 1024


def _downloaded_by_blob(fleet: Fleet, name: str) -> dict[str, int]:
    return {t["blob"]: int(t["downloaded"]) for t in fleet.status(name)["torrents"]}


def test_no_layer_crosses_the_network_twice_to_the_same_host(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(hosts=3)
    first = app_layers(big=12 * MiB)
    fleet.build("app:1", first, CMD)
    fleet.seed("app:1")
    fleet.pull_all("app:1")
    a = fleet.manifest("app:1")
    before = {name: _downloaded_by_blob(fleet, name) for name in fleet.host_names}
    for name in fleet.host_names:
        for layer in a.layers:
            got = before[name][layer.blob]
            assert layer.blob_size <= got < ONCE * layer.blob_size + DUPLICATES, (name, layer.blob, got)

    # the same image under a second tag: nothing crosses the network
    fleet.api("builder").tag("app:1", "app", "2")
    fleet.seed("app:2")
    fleet.pull_all("app:2")
    for name in fleet.host_names:
        assert fleet.api(name).inspect_image("app:2")["Id"] == fleet.api(name).inspect_image("app:1")["Id"]
        assert _downloaded_by_blob(fleet, name) == before[name], name

    # a second image sharing two layers (busybox and the big one): only its own layers come
    second = [first[0], {"/data/other.bin": payload(3 * MiB, seed=99)}, {"/hello.txt": b"the other app\n"}]
    other_id = fleet.build("other:1", second, CMD)
    fleet.seed("other:1")
    b = fleet.manifest("other:1")
    shared = {layer.blob for layer in a.layers} & {layer.blob for layer in b.layers}
    new = {layer.blob: layer.blob_size for layer in b.layers if layer.blob not in shared}
    assert len(shared) == 2 and len(new) == 2, (shared, new)
    fleet.pull_all("other:1")
    for name in fleet.host_names:
        assert fleet.api(name).inspect_image("other:1")["Id"] == other_id
        assert run_image(fleet.api(name), "other:1") == b"the other app\n"
        after = _downloaded_by_blob(fleet, name)
        for blob in shared:  # a shared layer's torrent received nothing more
            assert after[blob] == before[name][blob], (name, blob)
        for blob, size in new.items():  # each new blob came once (end-game duplicate blocks aside)
            assert size <= after[blob] < ONCE * size + DUPLICATES, (name, blob, after[blob], size)
        assert set(after) == set(before[name]) | set(new), name  # one torrent per blob, no duplicates
