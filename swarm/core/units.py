"""Sizes (`10GiB`) and rates (`50MB/s`, `100mbit`) given on the command line."""

from __future__ import annotations

import re

from swarm.core.errors import UsageError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_BITS = {"bit": 1, "kbit": 1000, "mbit": 1000**2, "gbit": 1000**3}
_NUM = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str) -> int:
    m = _NUM.fullmatch(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"invalid size {text!r}: use e.g. 500MB or 10GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_rate(text: str) -> int:
    """Bytes per second; 0 means unlimited."""
    body = text.strip()
    if body.lower().endswith("/s"):
        body = body[:-2]
    m = _NUM.fullmatch(body)
    if m:
        unit = m.group(2).lower()
        if unit in _BITS:
            return int(float(m.group(1)) * _BITS[unit] / 8)
        if unit in _UNITS:
            return int(float(m.group(1)) * _UNITS[unit])
    raise UsageError(f"invalid rate {text!r}: use e.g. 50MB/s or 100mbit")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
