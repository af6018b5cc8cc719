"""msgpack with pinned options: the only place swarm packs or unpacks msgpack.

`pack_canonical` gives the deterministic bytes used for signatures: maps with
sorted string keys, bytes as bin, str as str, no floats.
"""

from __future__ import annotations

from typing import Any

import msgpack

from swarm.core.errors import InvalidInput

#: largest message accepted by `unpack` unless told otherwise (manifests carry torrents)
MAX_MESSAGE = 64 * 1024 * 1024


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise InvalidInput("canonical maps need string keys")
        return {k: _canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        raise InvalidInput("canonical form has no floats")
    return obj


def pack_canonical(obj: Any) -> bytes:
    return pack(_canonical(obj))


def unpack(data: bytes, max_size: int = MAX_MESSAGE) -> Any:
    if len(data) > max_size:
        raise InvalidInput(f"message of {len(data)} bytes is over the {max_size} byte limit")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise InvalidInput(f"not a valid msgpack message: {exc}") from exc


def unpack_map(data: bytes, max_size: int = MAX_MESSAGE) -> dict[str, Any]:
    obj = unpack(data, max_size)
    if not isinstance(obj, dict):
        raise InvalidInput("expected a msgpack map")
    return obj


def new_unpacker(max_size: int = MAX_MESSAGE) -> msgpack.Unpacker:
    """A streaming unpacker for framed socket messages."""
    return msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max_size)
