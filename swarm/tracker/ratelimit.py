"""Per-address limit on failed authentications (someone guessing token secrets).

After `limit` failures within `window` seconds from one IP address, every
authenticated request from that address is refused (HTTP 429, or a bencoded
failure for announce/scrape) until the oldest failure leaves the window.
Only guesses count: a missing, malformed or unknown secret. A known but
revoked token is refused without counting, so a revoked host that keeps
retrying does not lock out the healthy hosts behind the same address.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

DEFAULT_LIMIT = 20
DEFAULT_WINDOW = 60.0
#: addresses remembered at most; past that the oldest entries go first
MAX_ADDRESSES = 100_000


class FailureLimiter:
    def __init__(
        self, limit: int = DEFAULT_LIMIT, window: float = DEFAULT_WINDOW, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit  # 0: no limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, ip: str) -> bool:
        if self.limit <= 0:
            return False
        times = self._failures.get(ip)
        if times is None:
            return False
        self._trim(times, self._clock())
        return len(times) >= self.limit

    def failed(self, ip: str) -> None:
        if self.limit <= 0:
            return
        times = self._failures.pop(ip, None)
        if times is None:
            times = deque(maxlen=self.limit)
            if len(self._failures) >= MAX_ADDRESSES:
                del self._failures[next(iter(self._failures))]
        times.append(self._clock())
        self._failures[ip] = times  # re-inserted: the dict's order is least recently failed first

    def prune(self) -> None:
        now = self._clock()
        for ip in list(self._failures):
            times = self._failures[ip]
            self._trim(times, now)
            if not times:
                del self._failures[ip]

    def _trim(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()
