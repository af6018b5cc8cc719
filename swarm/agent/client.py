"""The typed client of the agent's socket API (see swarm/agent/api.py), for `swarm` commands."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from swarm.agent.api import (
    Message,
    Note,
    PrepareRequest,
    PrepareResponse,
    PublishRequest,
    PublishResponse,
    PullProgress,
    PullRequest,
    PullResponse,
    StatusRequest,
    StatusResponse,
)
from swarm.core import wire
from swarm.core.errors import AgentNotRunning, InvalidInput, error_from_kind

P = TypeVar("P", bound=Message)
CLOSED = "the agent closed the connection before answering (did it stop?)"
OnNote = Callable[[Note], None]
OnPullProgress = Callable[[PullProgress], None]


class AgentClient:
    """One blocking connection per call to the agent listening on `socket_path`."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def status(self) -> StatusResponse:
        return StatusResponse.from_map(self._call(StatusRequest.op, StatusRequest()))

    def pull(self, refs: Sequence[str], on_progress: OnPullProgress | None = None, seed: bool = False) -> PullResponse:
        answer = self._call(PullRequest.op, PullRequest(tuple(refs), seed), PullProgress, on_progress)
        return PullResponse.from_map(answer)

    def prepare(
        self, images: Sequence[str], key_id: str, archive: Path | None = None, on_note: OnNote | None = None
    ) -> PrepareResponse:
        request = PrepareRequest(tuple(images), key_id, str(archive) if archive else None)
        return PrepareResponse.from_map(self._call(PrepareRequest.op, request, Note, on_note))

    def publish(self, envelopes: Sequence[bytes], on_note: OnNote | None = None) -> PublishResponse:
        answer = self._call(PublishRequest.op, PublishRequest(tuple(envelopes)), Note, on_note)
        return PublishResponse.from_map(answer)

    def _call(
        self, op: str, request: Message, progress: type[P] | None = None, on_progress: Callable[[P], None] | None = None
    ) -> Any:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._connect(s)
            self._send(s, wire.pack({"op": op, **request.to_map()}))
            unpacker = wire.new_unpacker()
            while True:
                chunk = self._recv(s)
                if not chunk:
                    raise AgentNotRunning(CLOSED)
                unpacker.feed(chunk)
                for msg in unpacker:
                    if not isinstance(msg, dict):
                        raise InvalidInput("malformed answer from the agent")
                    kind = msg.get("type")
                    if kind == "progress":
                        if progress is not None and on_progress is not None:
                            on_progress(progress.from_map(msg))
                    elif kind == "result":
                        return msg.get("data")
                    elif kind == "error":
                        raise error_from_kind(str(msg.get("kind")), str(msg.get("message")))
        finally:
            s.close()

    @staticmethod
    def _send(s: socket.socket, data: bytes) -> None:
        try:
            s.sendall(data)
        except OSError as exc:  # the agent stopped between accept and read
            raise AgentNotRunning(f"{CLOSED}: {exc.strerror or exc}") from exc

    @staticmethod
    def _recv(s: socket.socket) -> bytes:
        try:
            return s.recv(1 << 16)
        except OSError as exc:  # ECONNRESET: the agent died with our request unread
            raise AgentNotRunning(f"{CLOSED}: {exc.strerror or exc}") from exc

    def _connect(self, s: socket.socket) -> None:
        try:
            s.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentNotRunning(
                f"no agent running at {self.socket_path}: start one with `swarm agent --data DIR ...`"
            ) from exc
        except PermissionError as exc:
            raise AgentNotRunning(f"not allowed to talk to the agent at {self.socket_path}") from exc
