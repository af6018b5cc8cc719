"""A lean Redis connection for the announce path: one socket, commands pipelined (RESP2).

redis-py spends more CPU per announce than the announce itself (a pooled connection
checked out and back per call, a retry wrapper, a pure-Python reply parser; see
bench/results/fleet-findings.md). Here every call appends its command to one buffer that
is written once per event-loop turn, and one reader task parses the replies in order and
hands each to its caller's future: N announces arriving together cost one write and one
read. A reply later than `timeout` drops the connection and fails every call waiting on
it; the next call reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

#: replies are read in chunks of this size
_CHUNK = 1 << 16


class ReplyError(Exception):
    """Redis answered with an error (`-ERR ...`, `-NOSCRIPT ...`)."""


class _Incomplete(Exception):
    pass


def supported(url: str) -> bool:
    """URLs this connection understands (options in a query string are left to redis-py)."""
    u = urlsplit(url)
    return u.scheme in ("redis", "rediss", "unix") and not u.query


def encode(args: tuple[bytes | str | int, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One reply starting at `pos`: (value, position after it); _Incomplete if it has not all arrived."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos], bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == 58:  # ':'
        return int(line), pos
    if kind == 36:  # '$'
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + n]), pos + n + 2
    if kind == 42:  # '*'
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 43:  # '+'
        return line, pos
    if kind == 45:  # '-'
        return ReplyError(line.decode(errors="replace")), pos
    raise ConnectionError(f"unexpected reply from redis: {bytes(buf[pos - len(line) - 3 : pos])!r}")


class Pipe:
    def __init__(self, url: str, timeout: float = 10.0, connect_timeout: float = 5.0) -> None:
        u = urlsplit(url)
        self._unix = u.path if u.scheme == "unix" else None
        self._host, self._port = u.hostname or "127.0.0.1", u.port or 6379
        self._ssl = ssl.create_default_context() if u.scheme == "rediss" else None
        db = u.path.strip("/") if u.scheme != "unix" else ""
        self._hello: list[tuple[bytes | str | int, ...]] = []
        if u.password is not None:
            user = unquote(u.username) if u.username else None
            self._hello.append(("AUTH", user, unquote(u.password)) if user else ("AUTH", unquote(u.password)))
        if db and db != "0":
            self._hello.append(("SELECT", db))
        self._timeout, self._connect_timeout = timeout, connect_timeout
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        self._waiting: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._out = bytearray()
        self._flush_due = False
        self._scripts: dict[bytes, str] = {}

    async def call(self, *args: bytes | str | int) -> Any:
        writer = self._writer if self._writer is not None else await self._connect()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((loop.time(), fut))
        self._out += encode(args)
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush, writer)
        result = await fut
        if isinstance(result, ReplyError):
            raise result
        return result

    async def evalsha(self, script: bytes, args: list[bytes | str | int]) -> Any:
        """EVALSHA, loading the script first if this Redis does not have it yet."""
        sha = self._scripts.get(script) or hashlib.sha1(script).hexdigest()
        self._scripts[script] = sha
        try:
            return await self.call("EVALSHA", sha, 0, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.call("SCRIPT", "LOAD", script)
        return await self.call("EVALSHA", sha, 0, *args)

    def _flush(self, writer: asyncio.StreamWriter) -> None:
        self._flush_due = False
        if self._out and writer is self._writer:
            writer.write(self._out)
            self._out = bytearray()

    async def _connect(self) -> asyncio.StreamWriter:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None:
                return self._writer
            opening = (
                asyncio.open_unix_connection(self._unix)
                if self._unix is not None
                else asyncio.open_connection(self._host, self._port, ssl=self._ssl)
            )
            reader, writer = await asyncio.wait_for(opening, self._connect_timeout)
            for command in self._hello:
                writer.write(encode(command))
            buf = bytearray()
            for _ in self._hello:
                while True:
                    try:
                        reply, pos = parse(buf, 0)
                        break
                    except _Incomplete:
                        chunk = await asyncio.wait_for(reader.read(_CHUNK), self._connect_timeout)
                        if not chunk:
                            raise ConnectionError("redis closed the connection") from None
                        buf += chunk
                del buf[:pos]
                if isinstance(reply, ReplyError):
                    writer.close()
                    raise reply
            self._out = bytearray()
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read(reader, writer, buf))
            asyncio.get_running_loop().call_later(1.0, self._watch, writer)
            return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, buf: bytearray) -> None:
        error: BaseException = ConnectionError("redis closed the connection")
        try:
            while True:
                chunk = await reader.read(_CHUNK)
                if not chunk:
                    break
                buf += chunk
                pos = 0
                while pos < len(buf):
                    try:
                        reply, pos = parse(buf, pos)
                    except _Incomplete:
                        break
                    if not self._waiting:
                        raise ConnectionError("redis sent a reply nobody asked for")
                    _, fut = self._waiting.popleft()
                    if not fut.done():
                        fut.set_result(reply)
                del buf[:pos]
        except (OSError, ConnectionError, ValueError) as exc:
            error = exc
        finally:
            self._drop(writer, error)

    def _watch(self, writer: asyncio.StreamWriter) -> None:
        """Once a second: a reply overdue means a Redis that hangs; give up on the connection."""
        if writer is not self._writer:
            return
        loop = asyncio.get_running_loop()
        if self._waiting and loop.time() - self._waiting[0][0] > self._timeout:
            self._drop(writer, TimeoutError(f"no reply from redis in {self._timeout:g} s"))
            return
        loop.call_later(1.0, self._watch, writer)

    def _drop(self, writer: asyncio.StreamWriter, error: BaseException) -> None:
        if writer is not self._writer:
            return
        self._writer = None
        self._out = bytearray()
        writer.close()
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
        waiting, self._waiting = self._waiting, deque()
        for _, fut in waiting:
            if not fut.done():
                fut.set_exception(ConnectionError(str(error) or type(error).__name__))

    async def aclose(self) -> None:
        if self._writer is not None:
            writer = self._writer
            self._drop(writer, ConnectionError("closed"))
            try:
                await writer.wait_closed()
            except OSError:
                pass
