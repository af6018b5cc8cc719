"""The agent's unix socket server: framing and dispatch only (the protocol: swarm/agent/api.py)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from swarm.core import wire
from swarm.core.errors import InvalidInput, SwarmError

log = logging.getLogger(__name__)

#: sends one progress map to the client
RawEmit = Callable[[dict[str, Any]], Awaitable[None]]
#: answers one request map with the result map
Handler = Callable[[dict[str, Any], RawEmit], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024 * 1024


class SocketServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self._path = path
        self._handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self._path), limit=MAX_REQUEST)
        os.chmod(self._path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def emit(msg: dict[str, Any]) -> None:
            writer.write(wire.pack({"type": "progress", **msg}))
            await writer.drain()

        try:
            request = await _read_request(reader)
            handler = self._handlers.get(str(request.get("op")))
            if handler is None:
                raise InvalidInput(f"unknown op {request.get('op')!r}")
            result = await handler(request, emit)
            writer.write(wire.pack({"type": "result", "data": result}))
        except SwarmError as exc:
            writer.write(wire.pack({"type": "error", "kind": exc.kind, "message": exc.message}))
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except Exception as exc:
            log.exception("request failed")
            writer.write(wire.pack({"type": "error", "kind": "error", "message": f"agent error: {exc}"}))
        try:
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except ConnectionError:
            pass


async def _read_request(reader: asyncio.StreamReader) -> dict[str, Any]:
    unpacker = wire.new_unpacker(MAX_REQUEST)
    while True:
        chunk = await reader.read(1 << 16)
        if not chunk:
            raise InvalidInput("empty request")
        unpacker.feed(chunk)
        for msg in unpacker:
            if not isinstance(msg, dict):
                raise InvalidInput("a request is a msgpack map")
            return msg
