"""The local socket API between `swarm` commands and the agent.

One connection carries one request, a msgpack map {"op": ..., ...}. The agent
answers with a stream of msgpack maps: any number of
{"type": "progress", ...}, then exactly one {"type": "result", "data": ...}
or {"type": "error", "kind": ..., "message": ...}.

Ops: status {} · pull {"refs": [..]} · prepare {"images": [..], "key_id": str,
"archive": str|None} → {"manifests": [bytes]} · publish {"envelopes": [bytes]}.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarm.core import wire
from swarm.core.errors import AgentNotRunning, InvalidInput, error_from_kind

ProgressHandler = Callable[[dict[str, Any]], None]


def call(sock_path: Path, op: str, on_progress: ProgressHandler | None = None, **args: Any) -> Any:
    """Send one request to the local agent and return its result (blocking)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            s.connect(str(sock_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentNotRunning(
                f"no agent running at {sock_path}: start one with `swarm agent --data DIR ...`"
            ) from exc
        except PermissionError as exc:
            raise AgentNotRunning(f"not allowed to talk to the agent at {sock_path}") from exc
        s.sendall(wire.pack({"op": op, **args}))
        unpacker = wire.new_unpacker()
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                raise AgentNotRunning("the agent closed the connection before answering (did it stop?)")
            unpacker.feed(chunk)
            for msg in unpacker:
                if not isinstance(msg, dict):
                    raise InvalidInput("malformed answer from the agent")
                kind = msg.get("type")
                if kind == "progress":
                    if on_progress:
                        on_progress(msg)
                elif kind == "result":
                    return msg.get("data")
                elif kind == "error":
                    raise error_from_kind(str(msg.get("kind")), str(msg.get("message")))
    finally:
        s.close()
