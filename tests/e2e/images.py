"""Test images for the e2e scenarios: small, deterministic, made on the builder's own dockerd."""

from __future__ import annotations

import random

from swarm.images.synthetic import payload

MiB = 1024 * 1024
HELLO = b"hello from every host of the fleet\n"
CMD = ["/bin/busybox", "cat", "/hello.txt"]


def app_layers(big: int = 16 * MiB, seed: int = 1) -> list[dict[str, bytes]]:
    """Three layers on top of busybox: a big random one, a medium one, and the greeting."""
    return [
        {"/data/big.bin": payload(big, seed=seed)},
        {"/data/medium.bin": payload(4 * MiB, seed=seed + 1)},
        {"/hello.txt": HELLO},
    ]


def marker_layer(marker: bytes, size: int, seed: int = 7) -> bytes:
    """`size` bytes of random data with `marker` every few KiB: zstd cannot compress the
    random parts, so the marker stays a literal in the compressed blob (it would be
    readable on the wire if the transfer were plaintext)."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(rng.randrange(2048, 6144))
        out += marker
    return bytes(out[:size])
