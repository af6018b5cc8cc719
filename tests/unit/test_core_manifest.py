"""Canonical manifest bytes and their signatures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgpack
import pytest

from swarm.core import wire
from swarm.core.errors import InvalidInput, UntrustedManifest, UsageError
from swarm.core.manifest import Layer, Manifest
from swarm.core.signing import SignedManifest, SigningKey, format_public_key, parse_public_key


def make_manifest(key_id: str, tag: str = "1") -> Manifest:
    layer = Layer(diff_id="sha256:" + "a" * 64, size=10240, blob="sha256:" + "b" * 64, blob_size=300,
                  compression="zstd", info_hash=bytes(range(32)), torrent=b"d4:infod4:name3:abcee")
    return Manifest(repository="myapp/web", tag=tag, config=b'{"architecture":"amd64"}', layers=(layer, layer),
                    key_id=key_id, created_ms=1_700_000_000_000, publisher="b1")


def test_canonical_bytes_are_stable_and_sorted() -> None:
    m = make_manifest("k" * 16)
    data = m.to_bytes()
    assert data == make_manifest("k" * 16).to_bytes()
    decoded = msgpack.unpackb(data, raw=False)
    assert list(decoded) == sorted(decoded)
    assert list(decoded["layers"][0]) == sorted(decoded["layers"][0])
    assert Manifest.from_bytes(data) == m


def test_image_id_is_sha256_of_config() -> None:
    m = make_manifest("k" * 16)
    assert m.image_id == "sha256:" + __import__("hashlib").sha256(m.config).hexdigest()


def test_non_canonical_encoding_is_refused() -> None:
    m = make_manifest("k" * 16)
    fields = msgpack.unpackb(m.to_bytes(), raw=False)
    reordered = msgpack.packb(dict(reversed(list(fields.items()))), use_bin_type=True)
    with pytest.raises(InvalidInput, match="canonical"):
        Manifest.from_bytes(reordered)


@pytest.mark.parametrize("change", [
    {"extra": 1},
    {"version": 3},
    {"version": 1},
    {"layers": []},
    {"tag": ""},
])
def test_malformed_manifests_are_refused(change: dict[str, object]) -> None:
    fields = msgpack.unpackb(make_manifest("k" * 16).to_bytes(), raw=False)
    fields.update(change)
    with pytest.raises(InvalidInput):
        Manifest.from_bytes(wire.pack_canonical(fields))


def test_bad_layer_fields_are_refused() -> None:
    fields = msgpack.unpackb(make_manifest("k" * 16).to_bytes(), raw=False)
    fields["layers"][0]["blob"] = "md5:abc"
    with pytest.raises(InvalidInput, match="blob"):
        Manifest.from_bytes(wire.pack_canonical(fields))


def test_sign_and_verify_round_trip() -> None:
    key = SigningKey.generate()
    signed = key.sign(make_manifest(key.key_id))
    env = SignedManifest.from_bytes(signed.to_bytes())
    assert env.verify([key.public_raw]) == make_manifest(key.key_id)
    assert env.verify(None).tag == "1"


def test_tampered_manifest_fails_verification() -> None:
    key = SigningKey.generate()
    signed = key.sign(make_manifest(key.key_id))
    other = make_manifest(key.key_id, tag="2").to_bytes()
    with pytest.raises(UntrustedManifest, match="does not verify"):
        dataclasses.replace(signed, manifest=other).verify([key.public_raw])
    flipped = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    with pytest.raises(UntrustedManifest):
        dataclasses.replace(signed, signature=flipped).verify(None)


def test_untrusted_key_is_refused_before_anything_else() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    signed = key.sign(make_manifest(key.key_id))
    with pytest.raises(UntrustedManifest, match="untrusted key"):
        signed.verify([other.public_raw])


def test_key_id_must_match_the_signing_key() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    with pytest.raises(InvalidInput):
        key.sign(make_manifest(other.key_id))


def test_public_key_text_round_trip_and_errors() -> None:
    key = SigningKey.generate()
    assert parse_public_key(format_public_key(key.public_raw)) == key.public_raw
    for bad in ("", "ed25519:", "ed25519:!!!", "rsa:AAAA", "ed25519:" + "QUJD"):
        with pytest.raises(UsageError):
            parse_public_key(bad)


def test_key_file_is_private_and_reloads(tmp_path: Path) -> None:
    import os
    import stat
    path = tmp_path / "builder.key"
    key = SigningKey.generate()
    key.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert SigningKey.load(path).public_raw == key.public_raw
    (tmp_path / "junk").write_text("nope")
    with pytest.raises(UsageError, match="not a PEM"):
        SigningKey.load(tmp_path / "junk")


def test_envelope_garbage_is_refused() -> None:
    for data in (b"", b"\xc1", wire.pack([1, 2]), wire.pack({"manifest": b"x", "signature": b"s", "key": b"k"})):
        with pytest.raises(InvalidInput):
            SignedManifest.from_bytes(data)
