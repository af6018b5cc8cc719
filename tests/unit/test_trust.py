"""Pure logic of trust: the key document, which key signs which repository, the newest per tag."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from swarm.agent.trust import KeyDocumentFollower, TagHistory
from swarm.core.errors import InvalidInput, NotFound, UntrustedManifest, UsageError
from swarm.core.manifest import Manifest
from swarm.core.refs import ImageRef
from swarm.core.signing import SigningKey
from swarm.core.trust import DelegatedKey, KeyDocument, SignedKeyDocument, TrustPolicy
from tests.unit.test_core_manifest import make_manifest


def test_policy_pinned_delegated_expired_and_out_of_pattern() -> None:
    pinned, listed, other = (SigningKey.generate().public_raw for _ in range(3))
    doc = KeyDocument(3, (DelegatedKey(listed, ("myapp/*", "base:prod-*"), 2000),))
    policy = TrustPolicy([pinned], doc)
    web, base, tools = ImageRef.parse("myapp/web:1"), ImageRef.parse("base:prod-1"), ImageRef.parse("tools:1")
    policy.check(pinned, tools, 1000)  # --trust keys sign anything
    policy.check(listed, web, 1000)
    policy.check(listed, base, 1000)
    with pytest.raises(UntrustedManifest, match="may not sign"):
        policy.check(listed, tools, 1000)
    with pytest.raises(UntrustedManifest, match="expired"):
        policy.check(listed, web, 2000)
    with pytest.raises(UntrustedManifest, match="untrusted key"):
        policy.check(other, web, 1000)


def test_key_document_round_trip_signature_and_spec() -> None:
    root = SigningKey.generate()
    builder = SigningKey.generate()
    doc = KeyDocument.from_spec({"version": 2, "keys": [
        {"key": builder.public_text, "repositories": ["myapp/*"], "expires": "2030-01-01"}]})
    assert doc.keys[0].expires == 1893456000
    signed = SignedKeyDocument.from_bytes(SignedKeyDocument.sign(doc, root).to_bytes())
    assert signed.verify(root.public_raw) == doc
    with pytest.raises(UntrustedManifest, match="not the pinned root"):
        signed.verify(SigningKey.generate().public_raw)
    body = bytearray(signed.document)
    body[-1] ^= 1
    with pytest.raises((UntrustedManifest, InvalidInput)):
        dataclasses.replace(signed, document=bytes(body)).verify(root.public_raw)
    for bad in ({"version": 0, "keys": []}, {"version": 1}, {"version": 1, "keys": [{"key": "x"}]},
                {"version": 1, "keys": [{"key": builder.public_text, "repositories": ["bad pattern"],
                                         "expires": 5}]},
                {"version": 1, "keys": [{"key": builder.public_text, "repositories": ["a"], "expires": "soon"}]}):
        with pytest.raises(UsageError):
            KeyDocument.from_spec(bad)


def _at(created_ms: int, tag: str = "1") -> tuple[Manifest, bytes]:
    m = dataclasses.replace(make_manifest("k" * 16, tag), created_ms=created_ms)
    return m, m.to_bytes()


def test_tag_history_refuses_older_and_same_age_different_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "accepted.msgpack"
    history = TagHistory(path)
    new, new_body = _at(2000)
    history.check(new, new_body)
    history.record(new, new_body)
    history.check(new, new_body)  # the same manifest again: fine
    old, old_body = _at(1000)
    with pytest.raises(UntrustedManifest, match="older manifest"):
        history.check(old, old_body)
    twin = dataclasses.replace(new, config=b'{"other":1}')
    with pytest.raises(UntrustedManifest):
        history.check(twin, twin.to_bytes())
    other_tag, other_body = _at(1000, "2")
    history.check(other_tag, other_body)  # per tag
    history.record(old, old_body)  # never moves back
    again = TagHistory(path)  # after a restart
    assert again.newest("myapp/web:1") == 2000
    with pytest.raises(UntrustedManifest):
        again.check(old, old_body)
    path.write_bytes(b"\xc1junk")
    assert TagHistory(path).newest("myapp/web:1") is None  # unreadable: logged, starts empty


def test_follower_never_goes_back_and_survives_a_silent_tracker(tmp_path: Path) -> None:
    root = SigningKey.generate()
    k = SigningKey.generate().public_raw

    def signed(version: int, by: SigningKey = root) -> bytes:
        return SignedKeyDocument.sign(KeyDocument(version, (DelegatedKey(k, ("*",), 4_000_000_000),)), by).to_bytes()

    served: list[bytes | None] = [signed(2)]

    async def fetch() -> bytes:
        if served[0] is None:
            raise NotFound("none")
        return served[0]

    async def run() -> None:
        follower = KeyDocumentFollower(root.public_raw, tmp_path / "keys.msgpack", fetch)
        assert (await follower.refresh(force=True)).version == 2  # type: ignore[union-attr]
        for stale in (signed(1), signed(9, SigningKey.generate())):
            served[0] = stale
            assert (await follower.refresh(force=True)).version == 2  # type: ignore[union-attr]
        served[0] = None
        assert (await follower.refresh(force=True)).version == 2  # type: ignore[union-attr]
        served[0] = signed(3)
        assert (await follower.refresh(force=True)).version == 3  # type: ignore[union-attr]
        restarted = KeyDocumentFollower(root.public_raw, tmp_path / "keys.msgpack", fetch)
        assert restarted.version == 3

    asyncio.run(run())
