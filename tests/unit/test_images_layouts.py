"""read_archive on legacy and OCI layouts built in memory; image_tar_stream round trips."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from swarm.core.errors import DigestMismatch, InvalidInput
from swarm.images.export import ExportedImage, read_archive
from swarm.images.load import image_tar_stream
from swarm.images.synthetic import payload


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


L1 = layer_tar({"hello.txt": b"hello\n"})
L2 = layer_tar({"data/b.bin": payload(70_000, seed=2)})
L3 = layer_tar({"data/c.txt": payload(30_000, seed=3, compressible=True)})


def config_for(layers: list[bytes]) -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/x"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]},
    }, separators=(",", ":")).encode()


class TarBuilder:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def file(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def dir(self, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        self.tar.addfile(info)

    def link(self, name: str, target: str, hard: bool = False) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
        info.linkname = target
        self.tar.addfile(info)

    def done(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def legacy_archive(layers: list[bytes], config: bytes | None = None, hard: bool = False) -> bytes:
    """Like engine 20.10's `docker save`: layer 3 repeats layer 1 as a link
    that comes *before* its target in the stream."""
    config = config or config_for(layers)
    ids = [f"{i:064x}" for i in range(1, len(layers) + 1)]
    t = TarBuilder()
    first_dup: dict[str, int] = {}
    for i, data in enumerate(layers):
        first_dup.setdefault(sha(data), i)
    # links first (sorted names put them anywhere; make it the hard case)
    order = sorted(range(len(layers)), key=lambda i: first_dup[sha(layers[i])] == i)
    for i in order:
        t.dir(ids[i] + "/")
        j = first_dup[sha(layers[i])]
        if j != i:
            if hard:
                t.link(f"{ids[i]}/layer.tar", f"{ids[j]}/layer.tar", hard=True)
            else:
                t.link(f"{ids[i]}/layer.tar", f"../{ids[j]}/layer.tar")
        else:
            t.file(f"{ids[i]}/layer.tar", data=layers[i])
        t.file(f"{ids[i]}/VERSION", b"1.0")
        t.file(f"{ids[i]}/json", b"{}")
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    t.file(config_name, config)
    t.file("manifest.json", json.dumps([{"Config": config_name, "RepoTags": ["demo/x:1"],
                                         "Layers": [f"{x}/layer.tar" for x in ids]}]).encode())
    t.file("repositories", b"{}")
    return t.done()


def oci_archive(layers: list[bytes], gzip_layers: set[int], config: bytes | None = None,
                nested: bool = True) -> bytes:
    config = config or config_for(layers)
    t = TarBuilder()
    blobs: dict[str, bytes] = {}

    def add(data: bytes) -> str:
        digest = sha(data)
        blobs[digest] = data
        return digest

    descriptors = []
    for i, data in enumerate(layers):
        stored = gzip.compress(data, mtime=0) if i in gzip_layers else data
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if i in gzip_layers else "")
        descriptors.append({"mediaType": media, "digest": add(stored), "size": len(stored)})
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": add(config),
                   "size": len(config)},
        "layers": descriptors,
    }).encode()
    top = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": add(manifest),
           "size": len(manifest)}
    if nested:
        inner = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [{**top, "platform": {"architecture": "amd64", "os": "linux"}},
                                          {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                           "digest": "sha256:" + "0" * 64, "size": 1,
                                           "platform": {"architecture": "arm64", "os": "linux"}}]}).encode()
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": add(inner), "size": len(inner)}
    top["annotations"] = {"io.containerd.image.name": "docker.io/demo/x:1",
                          "org.opencontainers.image.ref.name": "1"}
    t.dir("blobs/")
    t.dir("blobs/sha256/")
    for digest, data in blobs.items():
        t.file("blobs/sha256/" + digest[7:], data)
    t.file("index.json", json.dumps({"schemaVersion": 2, "manifests": [top]}).encode())
    t.file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    return t.done()


def chunked(data: bytes, size: int = 7777) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def check(image: ExportedImage, layers: list[bytes], blobs_dir: Path) -> None:
    assert [x.diff_id for x in image.layers] == [sha(x) for x in layers]
    assert [x.size for x in image.layers] == [len(x) for x in layers]
    for exported, original in zip(image.layers, layers):
        assert exported.compression == "zstd"
        assert exported.path == blobs_dir / exported.blob[7:]
        blob = exported.path.read_bytes()
        assert sha(blob) == exported.blob
        assert len(blob) == exported.blob_size
        assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read() == original
    # only finished blobs, no temp files left behind
    assert sorted(p.name for p in blobs_dir.iterdir()) == sorted({x.blob[7:] for x in image.layers})


@pytest.mark.parametrize("hard", [False, True])
def test_legacy_layout_with_linked_duplicate(tmp_path: Path, hard: bool) -> None:
    layers = [L1, L2, L1, L3]
    archive = legacy_archive(layers, hard=hard)
    image = read_archive(chunked(archive), tmp_path)
    check(image, layers, tmp_path)
    assert image.repo_tags == ["demo/x:1"]
    assert image.config == config_for(layers)
    assert image.layers[0] == image.layers[2]


def test_legacy_layout_from_file_object(tmp_path: Path) -> None:
    layers = [L1, L2, L3]
    image = read_archive(io.BytesIO(legacy_archive(layers)), tmp_path)
    check(image, layers, tmp_path)


def test_gzipped_archive(tmp_path: Path) -> None:
    layers = [L1, L2]
    image = read_archive(io.BytesIO(gzip.compress(legacy_archive(layers))), tmp_path)
    check(image, layers, tmp_path)


@pytest.mark.parametrize("nested", [True, False])
def test_oci_layout_gzip_and_duplicate(tmp_path: Path, nested: bool) -> None:
    layers = [L1, L2, L3, L1]
    image = read_archive(chunked(oci_archive(layers, gzip_layers={1}, nested=nested)), tmp_path)
    check(image, layers, tmp_path)
    assert image.repo_tags == ["docker.io/demo/x:1"]


def test_oci_layer_larger_than_memory_threshold(tmp_path: Path) -> None:
    big = layer_tar({"big.bin": payload(5 * 1024 * 1024, seed=9)})
    layers = [L1, big]
    image = read_archive(chunked(oci_archive(layers, gzip_layers={1}), 1 << 20), tmp_path)
    check(image, layers, tmp_path)


def test_config_diff_ids_that_lie(tmp_path: Path) -> None:
    lying = config_for([L1, L3])  # the archive has L1, L2
    with pytest.raises(DigestMismatch, match="layer 2"):
        read_archive(io.BytesIO(legacy_archive([L1, L2], config=lying)), tmp_path / "a")
    with pytest.raises(DigestMismatch, match="layer 2"):
        read_archive(io.BytesIO(oci_archive([L1, L2], {1}, config=lying)), tmp_path / "b")
    with pytest.raises(DigestMismatch):
        read_archive(io.BytesIO(legacy_archive([L1, L2], config=config_for([L1]))), tmp_path / "c")


def test_oci_blob_not_matching_its_name(tmp_path: Path) -> None:
    archive = oci_archive([L1, L2], set())
    tampered = archive.replace(b"hello\n", b"jello\n")
    with pytest.raises(DigestMismatch):
        read_archive(io.BytesIO(tampered), tmp_path)


def test_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        read_archive(io.BytesIO(b"this is not a tar file" * 100), tmp_path)
    with pytest.raises(InvalidInput):
        read_archive(io.BytesIO(legacy_archive([L1])[:3000]), tmp_path)
    t = TarBuilder()
    t.file("something.txt", b"x")
    with pytest.raises(InvalidInput, match="neither manifest.json nor index.json"):
        read_archive(io.BytesIO(t.done()), tmp_path)


def test_existing_blob_is_kept(tmp_path: Path) -> None:
    first = read_archive(io.BytesIO(legacy_archive([L1])), tmp_path)
    path = first.layers[0].path
    before = path.stat().st_ino
    second = read_archive(io.BytesIO(legacy_archive([L1])), tmp_path)
    assert second.layers[0] == first.layers[0]
    assert path.stat().st_ino == before
    assert len(list(tmp_path.iterdir())) == 1


# --- image_tar_stream ------------------------------------------------------


def exported(tmp_path: Path, layers: list[bytes]) -> ExportedImage:
    return read_archive(io.BytesIO(legacy_archive(layers)), tmp_path)


def test_image_tar_stream_round_trip(tmp_path: Path) -> None:
    layers = [L1, L2, L1, L3]
    image = exported(tmp_path, layers)
    stream = image_tar_stream("demo/x:1", image.config,
                              [(x.diff_id, x.size, x.path, x.compression) for x in image.layers])
    data = b"".join(stream)
    assert len(data) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert manifest == [{
            "Config": hashlib.sha256(image.config).hexdigest() + ".json",
            "RepoTags": ["demo/x:1"],
            "Layers": [f"{sha(x)[7:]}/layer.tar" for x in layers],
        }]
        assert tar.extractfile(manifest[0]["Config"]).read() == image.config  # type: ignore[union-attr]
        for layer in layers:
            assert tar.extractfile(f"{sha(layer)[7:]}/layer.tar").read() == layer  # type: ignore[union-attr]
    # the duplicate layer is stored once
    assert names.count(f"{sha(L1)[7:]}/layer.tar") == 1
    # and the same stream reads back as an archive
    again = read_archive(io.BytesIO(data), tmp_path / "again")
    assert again.config == image.config
    assert [x.diff_id for x in again.layers] == [x.diff_id for x in image.layers]


def test_image_tar_stream_uncompressed_source(tmp_path: Path) -> None:
    raw = tmp_path / "raw.tar"
    raw.write_bytes(L2)
    config = config_for([L2])
    data = b"".join(image_tar_stream("demo/y:2", config, [(sha(L2), len(L2), raw, "none")]))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile(f"{sha(L2)[7:]}/layer.tar").read() == L2  # type: ignore[union-attr]


def test_image_tar_stream_wrong_diff_id(tmp_path: Path) -> None:
    image = exported(tmp_path, [L1, L2])
    layers = [(x.diff_id, x.size, x.path, x.compression) for x in image.layers]
    layers[1] = (sha(b"something else"), layers[1][1], layers[1][2], layers[1][3])
    with pytest.raises(DigestMismatch, match="expected " + sha(b"something else")):
        b"".join(image_tar_stream("demo/x:1", image.config, layers))


def test_image_tar_stream_wrong_size(tmp_path: Path) -> None:
    image = exported(tmp_path, [L1, L2])
    for delta in (-512, 512):
        layers = [(x.diff_id, x.size, x.path, x.compression) for x in image.layers]
        layers[1] = (layers[1][0], layers[1][1] + delta, layers[1][2], layers[1][3])
        with pytest.raises(DigestMismatch):
            b"".join(image_tar_stream("demo/x:1", image.config, layers))


def test_image_tar_stream_corrupt_blob(tmp_path: Path) -> None:
    image = exported(tmp_path, [L2])
    x = image.layers[0]
    broken = tmp_path / "broken"
    blob = bytearray(x.path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    broken.write_bytes(bytes(blob))
    with pytest.raises(DigestMismatch):
        b"".join(image_tar_stream("demo/x:1", image.config, [(x.diff_id, x.size, broken, "zstd")]))


def test_image_tar_stream_missing_blob(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="missing"):
        b"".join(image_tar_stream("demo/x:1", config_for([L1]), [(sha(L1), len(L1), tmp_path / "nope", "zstd")]))


def test_image_tar_stream_leaves_out_the_layers_docker_holds(tmp_path: Path) -> None:
    image = exported(tmp_path, [L1, L2, L3])
    layers = [(x.diff_id, x.size, x.path, x.compression) for x in image.layers]
    data = b"".join(image_tar_stream("demo/x:1", image.config, layers, frozenset({sha(L1), sha(L2)})))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = [n for n in tar.getnames() if n.endswith("/layer.tar")]
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert files == [f"{sha(L3)[7:]}/layer.tar"]
    assert manifest[0]["Layers"] == [f"{sha(x)[7:]}/layer.tar" for x in (L1, L2, L3)]  # every layer is named
