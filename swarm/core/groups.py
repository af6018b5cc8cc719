"""Host groups: names, their fixed-length ids, and which group a repository belongs to.

A group is a set of hosts allowed to read a set of repositories. The tracker
keeps the groups, each host token's memberships and the repository patterns
that map repositories to groups; a repository no pattern maps is in
`default`.

Each group has an id, `g` + the first 24 hex digits of
sha256(b"swarm-group\\0" + name). Every layer torrent of an image of group G
is named after G's id, and a host's certificate carries one SAN DNS name per
group id: libtorrent then completes a TLS handshake for a torrent only with
peers whose certificate names that torrent's group (or `*`). The ids all have
the same length, so none is a prefix of another (libtorrent before 2.0.13
matched SANs by prefix).

Pattern rule: a pattern is an fnmatch pattern over the repository name
(`payments/*`, `base`, `team-?/*`). When several patterns match, the most
specific wins: the one with the most literal (non-wildcard) characters; a tie
goes to the pattern that sorts first. So `payments/cards` beats `payments/*`,
which beats `*`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping

from swarm.core.errors import InvalidInput

DEFAULT = "default"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_PATTERN = re.compile(r"[a-z0-9._/*?\[\]!-]{1,255}")
_ID = re.compile(r"g[0-9a-f]{24}")
ID_LENGTH = 25
_WILDCARDS = frozenset("*?[]!")


def check_name(name: str) -> str:
    """`name` if it is a valid group name, else InvalidInput (one line)."""
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"invalid group name {name[:70]!r}: lowercase letters, digits and '-' (up to 63)")
    return name


def check_pattern(pattern: str) -> str:
    """`pattern` if it is a valid repository pattern (no tag part), else InvalidInput."""
    if not _PATTERN.fullmatch(pattern):
        raise InvalidInput(
            f"invalid repository pattern {pattern[:70]!r}: repository characters and * ? [] only, no tag"
        )
    return pattern


def group_id(name: str) -> str:
    """The group's fixed-length id: the torrent name and certificate SAN of its images."""
    digest = hashlib.sha256(b"swarm-group\0" + check_name(name).encode()).hexdigest()
    return "g" + digest[:24]


def is_group_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


def specificity(pattern: str) -> int:
    return sum(1 for c in pattern if c not in _WILDCARDS)


def resolve(repository: str, mappings: Mapping[str, str]) -> str:
    """The group of `repository` under `mappings` (pattern -> group): most specific match, else default."""
    best: tuple[int, str] | None = None
    for pattern in mappings:
        if fnmatch.fnmatchcase(repository, pattern):
            key = (-specificity(pattern), pattern)
            if best is None or key < best:
                best = key
    return DEFAULT if best is None else mappings[best[1]]


def certificate_names(groups: Iterable[str]) -> list[str]:
    """The SAN DNS names of a host certificate for these groups: their ids, sorted."""
    return sorted({group_id(g) for g in groups})


def _literal_ends(pattern: str) -> tuple[str, str, bool]:
    """(literal text before the first wildcard, after the last one, whether it has any)."""
    cuts = [i for i, c in enumerate(pattern) if c in _WILDCARDS]
    if not cuts:
        return pattern, pattern, False
    return pattern[: cuts[0]], pattern[cuts[-1] + 1 :], True


def may_overlap(a: str, b: str) -> bool:
    """Whether some repository could match both fnmatch patterns. Errs towards True (never a
    false False): literal heads and tails must agree, which is all two globs always share."""
    head_a, tail_a, wild_a = _literal_ends(a)
    head_b, tail_b, wild_b = _literal_ends(b)
    if not wild_a and not wild_b:
        return a == b
    if not wild_a:
        return fnmatch.fnmatchcase(a, b)
    if not wild_b:
        return fnmatch.fnmatchcase(b, a)
    heads = head_a.startswith(head_b) or head_b.startswith(head_a)
    tails = tail_a.endswith(tail_b) or tail_b.endswith(tail_a)
    return heads and tails


def reachable_groups(publish: Iterable[str], mappings: Mapping[str, str]) -> set[str]:
    """The groups a builder with these publish patterns may publish into: every group whose mapping
    patterns may overlap one of them, and `default` unless each pattern lies inside one mapping
    pattern. A superset, never less: a builder's certificate must name every group it seeds."""
    reached: set[str] = set()
    for raw in publish:
        # a pattern with a tag part (`app:prod-*`) names repositories by the part before it
        pattern = raw.rpartition(":")[0] if raw.rfind(":") > raw.rfind("/") else raw
        reached.update(g for m, g in mappings.items() if may_overlap(pattern, m))
        if not any(fnmatch.fnmatchcase(pattern, m) for m in mappings):
            reached.add(DEFAULT)
    return reached
