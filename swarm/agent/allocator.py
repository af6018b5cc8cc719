"""The C allocator (glibc malloc) of the agent process: fewer arenas, free memory given back.

The agent's heavy work runs on short-lived threads (a blob writer per exported layer, the
torrent hasher, asyncio's default executor, libtorrent's disk and hashing threads), and
glibc gives each thread that meets contention an arena of its own, up to 8 per core. Freed
blocks stay in whichever arena served them, so RSS ratchets up with every image seeded or
pulled even though nothing leaks (bench/agent_memory.py: +28% over 20 publish/pull cycles
with glibc's defaults). Two arenas, and `malloc_trim` after each big job, keep it flat.

Without glibc (musl, another libc) every call here does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: mallopt's M_ARENA_MAX (malloc.h)
_M_ARENA_MAX = -8
#: arenas at most: the main one and one shared by every other thread
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    return libc


_LIBC = _libc()


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap malloc's arenas; call before threads start (arenas made earlier stay). True if applied."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, arenas))


def trim() -> None:
    """Give the free memory of every arena back to the system (a few ms; after a seed or a pull)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
