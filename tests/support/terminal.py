"""Run a command under a pseudo-terminal, as a person at a terminal would, and keep what it drew."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
from collections.abc import Sequence

#: box drawing and block elements: what a table or a bar is drawn with
DRAWING = {chr(c) for c in range(0x2500, 0x25A0)}


def run_in_pty(args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 180,
               columns: int = 160) -> tuple[int, str]:
    """(exit code, everything written to the terminal: stdout and stderr, escape sequences included)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(list(args), stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns), **(env or {})})
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError:   # EIO: every process holding the terminal has closed it
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, b"".join(chunks).decode(errors="replace")
