"""Host groups in the database: groups, token memberships, repository pattern -> group.

Mixed into SQLStorage; same SQL on both backends. Every change bumps the
`groups` counter in `meta`, which trackers read with the revocation counter,
so a membership change counts at the very next request.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from swarm.core.errors import InvalidInput, NotFound
from swarm.core.groups import DEFAULT


@dataclass(frozen=True)
class GroupRecord:
    name: str
    created: int
    patterns: tuple[str, ...]
    members: tuple[str, ...]


class GroupStore(Protocol):
    def add_group(self, name: str) -> None: ...

    def remove_group(self, name: str) -> None: ...

    def group_records(self) -> list[GroupRecord]: ...

    def map_pattern(self, pattern: str, group: str) -> None: ...

    def unmap_pattern(self, pattern: str) -> bool: ...

    def group_patterns(self) -> dict[str, str]: ...

    def change_memberships(self, token: str, add: list[str], remove: list[str]) -> None: ...

    def memberships(self) -> dict[str, frozenset[str]]:
        """Token name -> its groups, for every token."""

    def manifest_group(self, ref: str) -> str | None: ...

    def hash_groups(self, announce_hash: bytes) -> frozenset[str]:
        """The groups of the manifests naming this announce hash (empty: not published)."""


class GroupSQL:
    """GroupStore over the SQLStorage primitives (`_tx`, `_x`, `_all`, `_one`)."""

    def _tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _x(self, c: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        raise NotImplementedError

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        raise NotImplementedError

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        raise NotImplementedError

    def _bump_groups(self, c: Any) -> None:
        self._x(c, "UPDATE meta SET value = value + 1 WHERE key = 'groups'")

    def _require_groups(self, c: Any, groups: list[str]) -> None:
        for g in groups:
            if self._x(c, "SELECT 1 FROM host_groups WHERE name = ?", (g,)).fetchone() is None:
                raise NotFound(f"no group named {g!r}")

    def add_group(self, name: str) -> None:
        with self._tx() as c:
            if self._x(c, "SELECT 1 FROM host_groups WHERE name = ?", (name,)).fetchone() is not None:
                raise InvalidInput(f"a group named {name!r} already exists")
            self._x(c, "INSERT INTO host_groups (name, created) VALUES (?, ?)", (name, int(time.time())))
            self._bump_groups(c)

    def remove_group(self, name: str) -> None:
        """Remove a group and its memberships; refused for `default` and while patterns or images use it."""
        if name == DEFAULT:
            raise InvalidInput("the default group cannot be removed")
        with self._tx() as c:
            self._require_groups(c, [name])
            if self._x(c, "SELECT 1 FROM group_patterns WHERE grp = ?", (name,)).fetchone() is not None:
                raise InvalidInput(f"group {name!r} still has repository patterns: unmap them first")
            if self._x(c, "SELECT 1 FROM manifests WHERE grp = ?", (name,)).fetchone() is not None:
                raise InvalidInput(f"group {name!r} still has published images")
            self._x(c, "DELETE FROM token_groups WHERE grp = ?", (name,))
            self._x(c, "DELETE FROM host_groups WHERE name = ?", (name,))
            self._bump_groups(c)

    def group_records(self) -> list[GroupRecord]:
        patterns: dict[str, list[str]] = {}
        for pattern, grp in self._all("SELECT pattern, grp FROM group_patterns ORDER BY pattern"):
            patterns.setdefault(grp, []).append(pattern)
        members: dict[str, list[str]] = {}
        for token, grp in self._all("SELECT token, grp FROM token_groups ORDER BY token"):
            members.setdefault(grp, []).append(token)
        return [
            GroupRecord(name, int(created), tuple(patterns.get(name, ())), tuple(members.get(name, ())))
            for name, created in self._all("SELECT name, created FROM host_groups ORDER BY name")
        ]

    def map_pattern(self, pattern: str, group: str) -> None:
        with self._tx() as c:
            self._require_groups(c, [group])
            self._x(c, "DELETE FROM group_patterns WHERE pattern = ?", (pattern,))
            self._x(c, "INSERT INTO group_patterns (pattern, grp) VALUES (?, ?)", (pattern, group))
            self._bump_groups(c)

    def unmap_pattern(self, pattern: str) -> bool:
        with self._tx() as c:
            gone = bool(self._x(c, "DELETE FROM group_patterns WHERE pattern = ?", (pattern,)).rowcount)
            if gone:
                self._bump_groups(c)
            return gone

    def group_patterns(self) -> dict[str, str]:
        return {p: g for p, g in self._all("SELECT pattern, grp FROM group_patterns")}

    def change_memberships(self, token: str, add: list[str], remove: list[str]) -> None:
        with self._tx() as c:
            if self._x(c, "SELECT 1 FROM tokens WHERE name = ?", (token,)).fetchone() is None:
                raise NotFound(f"no token named {token!r}")
            self._require_groups(c, add + remove)
            for g in remove:
                self._x(c, "DELETE FROM token_groups WHERE token = ? AND grp = ?", (token, g))
            for g in add:
                self._x(c, "DELETE FROM token_groups WHERE token = ? AND grp = ?", (token, g))
                self._x(c, "INSERT INTO token_groups (token, grp) VALUES (?, ?)", (token, g))
            self._bump_groups(c)

    def memberships(self) -> dict[str, frozenset[str]]:
        out: dict[str, set[str]] = {}
        for token, grp in self._all("SELECT token, grp FROM token_groups"):
            out.setdefault(token, set()).add(grp)
        return {t: frozenset(g) for t, g in out.items()}

    def manifest_group(self, ref: str) -> str | None:
        row = self._one("SELECT grp FROM manifests WHERE ref = ?", (ref,))
        return None if row is None else str(row[0])

    def hash_groups(self, announce_hash: bytes) -> frozenset[str]:
        rows = self._all(
            "SELECT DISTINCT m.grp FROM torrents t JOIN manifests m ON m.ref = t.ref WHERE t.announce_hash = ?",
            (announce_hash,),
        )
        return frozenset(str(r[0]) for r in rows)
