"""Scenario 1: a three-layer image reaches four hosts in network namespaces."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from swarm.images.synthetic import run_image
from tests.e2e.images import CMD, HELLO, app_layers
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
