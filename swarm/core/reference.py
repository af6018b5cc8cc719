"""Docker's image reference grammar, ported from distribution/reference (regexp.go, reference.go).

Its regexes are the specification Docker itself parses names with, so they are
copied here term by term, under the same names, rather than rewritten; Go's
`\\w` and `[[:xdigit:]]` are ASCII classes, hence `re.ASCII` and `[0-9A-Fa-f]`.
tests/unit/test_reference_grammar.py runs upstream's own test tables against it.

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [domain '/'] remote-name
    domain    := host [':' port-number]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from swarm.core.errors import UsageError


def _optional(*res: str) -> str:
    return "(?:" + "".join(res) + ")?"


def _any_times(*res: str) -> str:
    return "(?:" + "".join(res) + ")*"


def _capture(*res: str) -> str:
    return "(" + "".join(res) + ")"


def _anchored(*res: str) -> str:
    # Go's `$` is Python's `\Z`: Python's `$` also matches before a final newline
    return "^" + "".join(res) + r"\Z"


ALPHANUMERIC = r"[a-z0-9]+"
SEPARATOR = r"(?:[._]|__|[-]+)"
DOMAIN_NAME_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
OPTIONAL_PORT = r"(?::[0-9]+)?"
TAG = r"[\w][\w.-]{0,127}"
DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9A-Fa-f]{32,}"
IDENTIFIER = r"([a-f0-9]{64})"
IPV6_ADDRESS = r"\[(?:[a-fA-F0-9:]+)\]"
DOMAIN_NAME = DOMAIN_NAME_COMPONENT + _any_times(r"\." + DOMAIN_NAME_COMPONENT)
HOST = "(?:" + DOMAIN_NAME + "|" + IPV6_ADDRESS + ")"
DOMAIN_AND_PORT = HOST + OPTIONAL_PORT
PATH_COMPONENT = ALPHANUMERIC + _any_times(SEPARATOR + ALPHANUMERIC)
REMOTE_NAME = PATH_COMPONENT + _any_times("/" + PATH_COMPONENT)
NAME = _optional(DOMAIN_AND_PORT + "/") + REMOTE_NAME

REFERENCE_RE = re.compile(
    _anchored(_capture(NAME), _optional(":", _capture(TAG)), _optional("@", _capture(DIGEST))), re.ASCII
)
ANCHORED_NAME_RE = re.compile(_anchored(_optional(_capture(DOMAIN_AND_PORT), "/"), _capture(REMOTE_NAME)), re.ASCII)
ANCHORED_DOMAIN_RE = re.compile(_anchored(DOMAIN_AND_PORT), re.ASCII)
ANCHORED_IDENTIFIER_RE = re.compile(_anchored(IDENTIFIER), re.ASCII)

REPOSITORY_NAME_TOTAL_LENGTH_MAX = 255

# the messages of reference.go and go-digest, word for word
NAME_EMPTY = "repository name must have at least one component"
INVALID_FORMAT = "invalid reference format"
NAME_CONTAINS_UPPERCASE = "repository name must be lowercase"
NAME_TOO_LONG = f"repository name must not be more than {REPOSITORY_NAME_TOTAL_LENGTH_MAX} characters"
DIGEST_UNSUPPORTED = "unsupported digest algorithm"
DIGEST_INVALID_LENGTH = "invalid checksum digest length"
DIGEST_INVALID_FORMAT = "invalid checksum digest format"
NAME_IS_IDENTIFIER = "invalid repository name, cannot specify 64-byte hexadecimal strings"


class ReferenceError(UsageError):
    """A string Docker would refuse as an image reference; `reason` is Docker's own wording."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid image name {text!r}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Reference:
    name: str  # [domain/]path, as written
    domain: str  # "" when the name has none
    path: str
    tag: str | None
    digest: str | None


def parse(text: str) -> Reference:
    """`Parse` of reference.go: the name as written (no docker.io/library/ normalization)."""
    if text == "":
        raise ReferenceError(text, NAME_EMPTY)
    match = REFERENCE_RE.match(text)
    if match is None:
        lowered = text.lower()
        if lowered != text and REFERENCE_RE.match(lowered):
            raise ReferenceError(text, NAME_CONTAINS_UPPERCASE)
        raise ReferenceError(text, INVALID_FORMAT)
    name, tag, digest = match.group(1), match.group(2), match.group(3)
    parts = ANCHORED_NAME_RE.match(name)
    domain, path = (parts.group(1) or "", parts.group(2)) if parts else ("", name)
    if len(path) > REPOSITORY_NAME_TOTAL_LENGTH_MAX:
        raise ReferenceError(text, NAME_TOO_LONG)
    if digest is not None:
        _check_digest(text, digest)
    return Reference(name=name, domain=domain, path=path, tag=tag, digest=digest)


def _check_digest(text: str, digest: str) -> None:
    """go-digest's Parse with only sha256 registered (the one algorithm Docker image IDs use)."""
    algorithm, _, encoded = digest.partition(":")
    if algorithm != "sha256":
        raise ReferenceError(text, DIGEST_UNSUPPORTED)
    if len(encoded) != 64:
        raise ReferenceError(text, DIGEST_INVALID_LENGTH)
    if not re.fullmatch(r"[a-f0-9]{64}", encoded):
        raise ReferenceError(text, DIGEST_INVALID_FORMAT)


def is_identifier(text: str) -> bool:
    """64 lowercase hex digits: Docker reads that as an image ID, never as a repository name."""
    return ANCHORED_IDENTIFIER_RE.match(text) is not None
