"""Connection limits in front of the HTTP server: in total and per client address.

A slow or hostile client that opens connections and sends nothing holds a
file descriptor each until the header timeout; with enough of them the
process runs out of descriptors and the tracker stops answering everyone.
`LimitedSite` accepts every connection and closes at once those past the
limits, so descriptors in use stay below `total` plus the listening sockets.
The total defaults to what RLIMIT_NOFILE leaves after a reserve for the
database, the peer store and the workers' pipes.

With TLS the event loop does the handshake first, so a connection counts
from the end of its handshake; a handshake must end within the client
timeout, which bounds the descriptors half-done handshakes hold. (Doing TLS
after the limits with start_tls was tried: libtorrent's HTTPS announces then
stalled until the timeout.)
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from swarm.tracker.options import DEFAULT_MAX_CONNECTIONS_PER_ADDRESS

log = logging.getLogger("swarm.tracker.connections")

#: descriptors kept free of client connections (database, peer store, logs, workers)
FD_RESERVE = 64


def default_total() -> int:
    """Client connections one process may hold: its descriptor limit less a reserve (at least 16)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(16, soft - FD_RESERVE)


class ConnectionLimits:
    """Open connections per address and in total.

    At the total, a new connection from an address with fewer open than the busiest one
    closes the busiest address's oldest connection instead of being refused: a flood from
    a few addresses cannot keep everyone else out."""

    def __init__(self, total: int | None = None, per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS) -> None:
        self.total = default_total() if total is None else total
        self.per_address = per_address
        self.open = 0
        self.refused = 0
        self._by_address: dict[str, dict[object, Callable[[], None]]] = {}  # oldest first
        self._warned = False

    def admit(self, address: str, key: object, close: Callable[[], None]) -> bool:
        """Count connection `key` from `address` (`close` aborts it), or refuse it (False)."""
        mine = len(self._by_address.get(address, ()))
        if mine >= self.per_address or (self.open >= self.total and not self._evict_for(mine)):
            self.refused += 1
            if not self._warned:
                log.warning(
                    "connection limit reached (%d open, %d from %s): closing new ones", self.open, mine, address
                )
                self._warned = True
            return False
        self.open += 1
        self._by_address.setdefault(address, {})[key] = close
        return True

    def _evict_for(self, mine: int) -> bool:
        busiest = max(self._by_address, key=lambda a: len(self._by_address[a]), default=None)
        if busiest is None or len(self._by_address[busiest]) <= mine + 1:
            return False
        oldest = next(iter(self._by_address[busiest]))
        close = self._by_address[busiest][oldest]
        self.release(busiest, oldest)
        close()
        return True

    def release(self, address: str, key: object) -> None:
        conns = self._by_address.get(address)
        if conns is None or conns.pop(key, None) is None:
            return  # evicted earlier
        self.open -= 1
        if not conns:
            del self._by_address[address]
        if self.open < self.total * 0.9:
            self._warned = False


class _Guard(asyncio.Protocol):
    """Stands before one connection's real protocol: admits it, or closes it at once."""

    def __init__(self, limits: ConnectionLimits, factory: Callable[[], asyncio.Protocol]) -> None:
        self._limits = limits
        self._factory = factory
        self._address: str | None = None
        self._inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        abort = cast(asyncio.Transport, transport).abort  # uvloop's transports are not asyncio.Transport subclasses
        if not self._limits.admit(address, self, abort):
            abort()
            return
        self._address = address
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is not None:
            self._limits.release(self._address, self)
            self._address = None
        if self._inner is not None:
            self._inner.connection_lost(exc)


class LimitedSite(web.TCPSite):
    """aiohttp's TCPSite, with every connection going through ConnectionLimits."""

    __slots__ = ("_handshake_timeout", "_limits", "_tls")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limits: ConnectionLimits,
        *,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float = 15.0,
        backlog: int = 1024,
        reuse_port: bool | None = None,
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog, reuse_port=reuse_port)
        self._limits = limits
        self._tls = tls
        self._handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        return ("https" if self._tls else "http") + super().name.partition(":")[2]

    async def start(self) -> None:
        self._runner._reg_site(self)
        server: Any = self._runner.server
        assert server is not None
        limits = self._limits
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Guard(limits, server),
            self._host,
            self._port,
            ssl=self._tls,
            ssl_handshake_timeout=self._handshake_timeout if self._tls else None,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
