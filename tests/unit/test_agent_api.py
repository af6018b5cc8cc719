"""The agent's socket messages: every one survives msgpack both ways; malformed maps are refused."""

from __future__ import annotations

import pytest

from swarm.agent.api import (
    CacheInfo, ImageInfo, LayerProgress, Note, PeerInfo, PrepareRequest, PrepareResponse, PublishRequest,
    PublishResponse, PulledImage, PullProgress, PullRequest, PullResponse, StatusResponse, TorrentInfo,
)
from swarm.core import wire
from swarm.core.api import ManifestEntry
from swarm.core.errors import InvalidInput

PROGRESS = PullProgress("app:1", "downloading", "", (LayerProgress("sha256:" + "a" * 64, 10, 5, 100, 2, "downloading"),))
MESSAGES = [
    Note("published app:1"),
    PROGRESS,
    StatusResponse(
        name="h1", role="host", tracker="http://127.0.0.1:7070", tracker_reachable=True, certificate_expires=1,
        certificate_error="", peer_port=6881, trusted_keys=("ed25519:x",),
        images=(ImageInfo("app:1", "sha256:" + "b" * 64, 2),), pulls=(PROGRESS,),
        torrents=(TorrentInfo("sha256:" + "a" * 64, "ab" * 32, "seeding", 1.0, 10, 10, 0, 0, 10, 0, 0, "",
                              (PeerInfo("builder", "", 10, 0, False),)),),
        cache=CacheInfo(10, 1, 0, 0)),
    PullRequest(("app:1", "app:2")),
    PullRequest(("app:1",), seed=True),
    PullResponse((PulledImage("app:1", "sha256:" + "b" * 64),)),
    PullResponse((PulledImage("app:1", "sha256:" + "b" * 64, "already-in-docker", False),)),
    ImageInfo("app:2", "sha256:" + "c" * 64, 3, 2, 1, "partial"),
    CacheInfo(30, 2, 20, 10, 5),
    PrepareRequest(("app:1",), "0123456789abcdef", None),
    PrepareRequest(("app:1",), "0123456789abcdef", "/tmp/app.tar"),
    PrepareResponse((b"manifest",)),
    PublishRequest((b"envelope",)),
    PublishResponse((ManifestEntry("app:1", "sha256:" + "b" * 64, 1, 2, "builder1"),)),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    cls = type(message)
    assert cls.from_map(wire.unpack(wire.pack(message.to_map()))) == message  # type: ignore[attr-defined]


def test_status_map_is_plain_data() -> None:
    status = MESSAGES[2].to_map()
    assert status["torrents"][0]["peers"][0] == {"name": "builder", "address": "", "downloaded": 10,
                                                "uploaded": 0, "connected": False}
    assert status["cache"] == {"bytes": 10, "blobs": 1, "budget": 0, "over_budget": 0, "reserved": 0}


def test_maps_of_an_older_agent_still_decode() -> None:
    image = ImageInfo.from_map({"ref": "app:1", "image_id": "sha256:" + "b" * 64, "layers": 2})
    assert (image.blobs, image.cached_blobs, image.cache) == (0, 0, "none")
    pulled = PulledImage.from_map({"ref": "app:1", "image_id": "sha256:" + "b" * 64})
    assert (pulled.outcome, pulled.seeding) == ("loaded", True)
    assert PullRequest.from_map({"refs": ["app:1"]}).seed is False


@pytest.mark.parametrize("bad", [
    [], {"refs": []}, {"refs": "app:1"}, {"refs": [1]}, {}, {"refs": [b"app:1"]},
])
def test_malformed_pull_request(bad: object) -> None:
    with pytest.raises(InvalidInput):
        PullRequest.from_map(bad)


def test_malformed_nested_and_scalar_fields() -> None:
    good = PROGRESS.to_map()
    with pytest.raises(InvalidInput):
        PullProgress.from_map({**good, "layers": [{"blob": "x"}]})
    with pytest.raises(InvalidInput):
        LayerProgress.from_map({**good["layers"][0], "total": True})
    with pytest.raises(InvalidInput):
        PublishRequest.from_map({"envelopes": ["text"]})
    assert PullProgress.from_map({**good, "type": "progress"}) == PROGRESS  # unknown keys are ignored
