"""The Docker adapter against a real (private) dockerd."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest

from swarm.core.errors import DigestMismatch, DockerUnreachable, ImageNotFound
from swarm.images import load
from swarm.images.docker_client import connect
from swarm.images.export import export_image, read_archive
from swarm.images.synthetic import build_image, payload, run_image

pytestmark = pytest.mark.docker

HELLO = b"hello from a swarm layer\n"


@pytest.fixture
def api(dockerd: Any) -> Any:
    return connect(dockerd.host)


def three_layer_image(api: Any, tag: str) -> str:
    return build_image(api, tag, [
        {"hello.txt": HELLO},
        {"data/random.bin": payload(3 * 1024 * 1024, seed=7)},
        {"data/text.txt": payload(2 * 1024 * 1024, seed=8, compressible=True)},
    ], cmd=["/bin/busybox", "cat", "/hello.txt"])


def test_export_remove_load_run(api: Any, tmp_path: Path) -> None:
    tag = "swarm-test/three:1"
    original = three_layer_image(api, tag)
    exported = export_image(api, tag, tmp_path / "blobs")
    assert exported.image_id == original
    assert exported.repo_tags == [tag]
    assert len(exported.layers) == 4  # busybox + 3
    text_layer = exported.layers[3]
    assert text_layer.blob_size < text_layer.size / 3  # compressible text really got compressed
    for layer in exported.layers:
        assert layer.path.exists() and layer.path.stat().st_size == layer.blob_size

    api.remove_image(tag)
    assert not load.has_image(api, tag)
    assert load.image_id(api, tag) is None

    stream = load.image_tar_stream(tag, exported.config,
                                   [(x.diff_id, x.size, x.path, x.compression) for x in exported.layers])
    loaded = load.load_image(api, stream)
    assert loaded == tag
    assert load.image_id(api, tag) == original
    assert load.has_image(api, tag)

    out = run_image(api, tag)
    assert out == HELLO

    # loading again (every layer already present) works too
    stream = load.image_tar_stream(tag, exported.config,
                                   [(x.diff_id, x.size, x.path, x.compression) for x in exported.layers])
    assert load.load_image(api, stream) == tag


def test_duplicate_layers_survive_the_round_trip(api: Any, tmp_path: Path) -> None:
    tag = "swarm-test/dup:1"
    # [A, B, A]: the third layer puts back what the second changed (see synthetic)
    # (B must change every file of A: vfs diffs hold only changed files)
    a, b = {"f.txt": b"twice\n"}, {"f.txt": b"B\n"}
    original = build_image(api, tag, [a, b, a], cmd=["/bin/busybox", "cat", "/f.txt"])
    exported = export_image(api, tag, tmp_path)
    assert exported.layers[1].diff_id == exported.layers[3].diff_id
    api.remove_image(tag)
    load.load_image(api, load.image_tar_stream(
        tag, exported.config, [(x.diff_id, x.size, x.path, x.compression) for x in exported.layers]))
    assert load.image_id(api, tag) == original
    assert run_image(api, tag) == b"twice\n"


def test_read_archive_of_docker_save(api: Any, tmp_path: Path) -> None:
    tag = "swarm-test/archive:1"
    original = build_image(api, tag, [{"a.txt": b"a\n"}], cmd=["/bin/busybox", "true"], with_busybox=False)
    archive = tmp_path / "image.tar"
    with open(archive, "wb") as f:
        for chunk in api.get_image(tag):
            f.write(chunk)
    with tarfile.open(archive) as tar:
        assert "manifest.json" in tar.getnames()
    with open(archive, "rb") as f:
        image = read_archive(f, tmp_path / "blobs")
    assert image.image_id == original
    assert len(image.layers) == 1


def test_load_refuses_corrupt_blob(api: Any, tmp_path: Path) -> None:
    tag = "swarm-test/corrupt:1"
    build_image(api, tag, [{"x.bin": payload(100_000, seed=3)}], cmd=["/bin/busybox", "true"],
                with_busybox=False)
    exported = export_image(api, tag, tmp_path)
    api.remove_image(tag)
    layer = exported.layers[0]
    wrong = "sha256:" + "ab" * 32
    with pytest.raises(DigestMismatch):
        load.load_image(api, load.image_tar_stream(tag, exported.config,
                                                   [(wrong, layer.size, layer.path, layer.compression)]))
    assert not load.has_image(api, tag)


def test_unknown_image(api: Any, tmp_path: Path) -> None:
    with pytest.raises(ImageNotFound, match="no image swarm-test/nothing-here:1"):
        export_image(api, "swarm-test/nothing-here:1", tmp_path)
    assert load.image_id(api, "swarm-test/nothing-here:1") is None


def test_unreachable_docker(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/no-docker.sock"
    with pytest.raises(DockerUnreachable, match=f"cannot reach Docker at {host}"):
        connect(host)
    with pytest.raises(DockerUnreachable, match="cannot reach Docker at"):
        connect("tcp://127.0.0.1:1")


def test_engine_gone_after_connect(dockerd_factory: Any, tmp_path: Path) -> None:
    d = dockerd_factory()
    api = connect(d.host)
    d.stop()
    with pytest.raises(DockerUnreachable, match="cannot reach Docker at " + d.host):
        export_image(api, "anything:1", tmp_path)
    with pytest.raises(DockerUnreachable):
        load.image_id(api, "anything:1")
    with pytest.raises(DockerUnreachable):
        load.load_image(api, iter([b"\0" * 1024]))


def test_several_dockerds_at_once(dockerd_factory: Any) -> None:
    engines = [dockerd_factory(), dockerd_factory()]
    for i, d in enumerate(engines):
        api = connect(d.host)
        build_image(api, f"swarm-test/multi:{i}", [{"n.txt": str(i).encode()}],
                    cmd=["/bin/busybox", "cat", "/n.txt"])
    for i, d in enumerate(engines):
        assert run_image(connect(d.host), f"swarm-test/multi:{i}") == str(i).encode()
        assert load.image_id(connect(d.host), f"swarm-test/multi:{1 - i}") is None
