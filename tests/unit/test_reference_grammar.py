"""Docker's image reference grammar against Docker's own test tables.

tests/unit/data/docker_reference_cases.json holds the tables of distribution/reference's
reference_test.go and regexp_test.go (the source commit is inside), converted to JSON with
their values unchanged: every name Docker accepts, every one it refuses, and why.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from swarm.core import reference
from swarm.core.errors import UsageError
from swarm.core.refs import ImageRef, matches

CASES: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "docker_reference_cases.json").read_text())

# reference.go's and go-digest's error variables -> their messages
GO_ERRORS = {
    "ErrNameEmpty": reference.NAME_EMPTY,
    "ErrReferenceInvalidFormat": reference.INVALID_FORMAT,
    "ErrNameContainsUppercase": reference.NAME_CONTAINS_UPPERCASE,
    "ErrNameTooLong": reference.NAME_TOO_LONG,
    "digest.ErrDigestUnsupported": reference.DIGEST_UNSUPPORTED,
    "digest.ErrDigestInvalidLength": reference.DIGEST_INVALID_LENGTH,
}


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [c["input"][:60] or "<empty>" for c in cases]


@pytest.mark.parametrize("case", CASES["TestReferenceParse"], ids=_ids(CASES["TestReferenceParse"]))
def test_reference_parse(case: dict[str, Any]) -> None:
    if "err" in case:
        with pytest.raises(reference.ReferenceError) as refused:
            reference.parse(case["input"])
        assert refused.value.reason == GO_ERRORS[case["err"]]
        return
    ref = reference.parse(case["input"])
    assert ref.name == case["repository"]
    assert ref.domain == case.get("domain", "")
    assert ref.tag == case.get("tag")
    assert ref.digest == case.get("digest")


def _check_regexp(pattern: re.Pattern[str], case: dict[str, Any]) -> None:
    found = pattern.match(case["input"])
    assert (found is not None) == case["match"], case
    if found is not None and "subs" in case:
        assert [g or "" for g in found.groups()[: len(case["subs"])]] == case["subs"]


@pytest.mark.parametrize("case", CASES["TestDomainRegexp"], ids=_ids(CASES["TestDomainRegexp"]))
def test_domain_regexp(case: dict[str, Any]) -> None:
    _check_regexp(reference.ANCHORED_DOMAIN_RE, case)


@pytest.mark.parametrize("case", CASES["TestFullNameRegexp"], ids=_ids(CASES["TestFullNameRegexp"]))
def test_full_name_regexp(case: dict[str, Any]) -> None:
    _check_regexp(reference.ANCHORED_NAME_RE, case)


@pytest.mark.parametrize("case", CASES["TestReferenceRegexp"], ids=_ids(CASES["TestReferenceRegexp"]))
def test_reference_regexp(case: dict[str, Any]) -> None:
    _check_regexp(reference.REFERENCE_RE, case)


@pytest.mark.parametrize("case", CASES["TestIdentifierRegexp"], ids=_ids(CASES["TestIdentifierRegexp"]))
def test_identifier_regexp(case: dict[str, Any]) -> None:
    assert reference.is_identifier(case["input"]) == case["match"]


def test_names_ci_systems_write() -> None:
    assert ImageRef.parse("localhost:5000/app:1") == ImageRef("localhost:5000/app", "1")
    web = ImageRef.parse("registry.example.com:5000/team/web-app:1.2.3-rc.1")
    assert web == ImageRef("registry.example.com:5000/team/web-app", "1.2.3-rc.1")
    assert str(web) == "registry.example.com:5000/team/web-app:1.2.3-rc.1"
    assert ImageRef.parse("localhost:5000/app") == ImageRef("localhost:5000/app", "latest")
    assert ImageRef.parse("[::1]:5000/app:1").repository == "[::1]:5000/app"
    # a trailing newline is not part of a name (Python's `$` would let it through)
    with pytest.raises(UsageError):
        ImageRef.parse("app:1\n")
    with pytest.raises(UsageError, match="64-byte hexadecimal"):
        ImageRef.parse("a" * 64)


def test_digests_pin_a_tag_where_accepted() -> None:
    image_id = "sha256:" + "ab" * 32
    pinned = ImageRef.parse(f"localhost:5000/app:1@{image_id}", digest=True)
    assert pinned == ImageRef("localhost:5000/app", "1") and pinned.digest == image_id
    assert str(pinned) == "localhost:5000/app:1" and pinned.pinned == f"localhost:5000/app:1@{image_id}"
    with pytest.raises(UsageError, match="a digest is not accepted here"):
        ImageRef.parse(f"app:1@{image_id}")
    with pytest.raises(UsageError, match="by tag"):
        ImageRef.parse(f"app@{image_id}", digest=True)


def test_watch_patterns_with_a_registry_port() -> None:
    ref = ImageRef.parse("localhost:5000/team/app:prod-3")
    assert matches("localhost:5000/team/*", ref)
    assert matches("localhost:5000/team/app", ref)
    assert matches("localhost:5000/team/app:prod-*", ref)
    assert not matches("localhost:5000/team/app:dev-*", ref)
