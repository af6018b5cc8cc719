"""A PeerStore in Redis (redis-py's asyncio client), shared by tracker replicas: `--redis URL`.

Every operation is one Lua script, so an announce is one round trip and is
atomic with respect to other replicas. Announces go over a connection of
their own, pipelined (resp.py: the announces of one event-loop turn are one
write); the rare operations (scrape, sweep, revocation) use redis-py. The
announce script reads each entry once, writes only what a re-announce
changes (its times), and returns the handout as two strings, not two per
peer. Keys, for a torrent whose raw 20-byte announce hash is H (keys are
binary-safe) under the prefix P (default "swarm"):

  P:s:H   zset  complete peers (member: raw peer_id, score: last announce, unix s)
  P:l:H   zset  incomplete peers
  P:d:H   hash  peer_id -> "ip|port|host"
  P:e:H   hash  "ip|port" -> peer_id (a peer that restarts with a new id replaces the old)
  P:n:H   int   completed downloads (scrape's `downloaded`)
  P:h:N   set   H .. peer_id for every peer announced by token name N (revocation)
  P:o:H..N zset  token N's peers in torrent H (score: last announce), for the per-host cap
  P:t     set   H of every torrent with peers (sweeping, the active-peer gauge)

The scripts build key names from the prefix, so this store wants one Redis
(or a primary), not Redis Cluster. Times are the trackers' wall clocks, which
replicas of one fleet are expected to keep in step (NTP); the ttl is long
(two announce intervals) next to any drift that matters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from swarm.core.errors import SwarmError
from swarm.tracker.peers import resp
from swarm.tracker.peers.base import (
    ENDPOINT_TAKEN,
    MAX_NUMWANT,
    MAX_PEERS_PER_HOST,
    PEER_ID_TAKEN,
    Handout,
    Peer,
    SwarmCounts,
)

#: handed-out Peer records kept for reuse (past that the cache starts over)
MAX_CACHED_PEERS = 100_000

_LIB = r"""
local P = ARGV[1]
local function k(kind, h) return P .. ':' .. kind .. ':' .. h end
local function split(v)
  local a, b, c = string.match(v, '^([^|]*)|([^|]*)|(.*)$')
  return a, b, c
end
local function drop(h, p)
  local d = k('d', h)
  local v = redis.call('HGET', d, p)
  if v then
    local ip, port, host = split(v)
    local ep = ip .. '|' .. port
    if redis.call('HGET', k('e', h), ep) == p then redis.call('HDEL', k('e', h), ep) end
    redis.call('HDEL', d, p)
    redis.call('SREM', P .. ':h:' .. host, h .. p)
    redis.call('ZREM', k('o', h) .. host, p)
  end
  redis.call('ZREM', k('s', h), p)
  redis.call('ZREM', k('l', h), p)
end
local function expire(h, cutoff)
  local gone = 0
  for _, kind in ipairs({'s', 'l'}) do
    local old = redis.call('ZRANGEBYSCORE', k(kind, h), '-inf', '(' .. cutoff)
    for _, p in ipairs(old) do drop(h, p); gone = gone + 1 end
  end
  return gone
end
local function host_of(h, p)
  local v = redis.call('HGET', k('d', h), p)
  if not v then return nil end
  local _, _, host = split(v)
  return host
end
local function counts(h)
  return {redis.call('ZCARD', k('s', h)), redis.call('ZCARD', k('l', h)),
          tonumber(redis.call('GET', k('n', h)) or '0')}
end
"""

_HANDLE = (
    _LIB
    + r"""
local h, now, cutoff = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local pid, ip, port, left, host = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8]), ARGV[9]
local event, numwant, per_host = ARGV[10], tonumber(ARGV[11]), tonumber(ARGV[12])
expire(h, cutoff)
local d, e = k('d', h), k('e', h)
local ep = ip .. '|' .. port
local rec = ep .. '|' .. host
-- ownership: the peer_id's entry and the endpoint's holder must be this host's (or nobody's)
local prev = redis.call('HGET', d, pid)
if prev then
  local _, _, owner = split(prev)
  if owner ~= host then
    local c = counts(h)
    return {c[1], c[2], c[3], -1}
  end
end
local holder = redis.call('HGET', e, ep)
if holder and holder ~= pid then
  local owner = host_of(h, holder)
  if owner and owner ~= host then
    local c = counts(h)
    return {c[1], c[2], c[3], -2}
  end
  drop(h, holder)  -- this host's peer restarted with a new id on the same endpoint
end
if event == 'stopped' then
  drop(h, pid)
  local c = counts(h)
  return {c[1], c[2], c[3], 0}
end
if prev and prev ~= rec then drop(h, pid); prev = nil end
local mine = k('o', h) .. host
if not prev then
  -- a new entry (a regular re-announce has all of these already)
  while redis.call('ZCARD', mine) >= per_host do
    drop(h, redis.call('ZRANGE', mine, 0, 0)[1])
  end
  redis.call('HSET', d, pid, rec)
  redis.call('HSET', e, ep, pid)
  redis.call('SADD', P .. ':h:' .. host, h .. pid)
  redis.call('SADD', P .. ':t', h)
end
redis.call('ZADD', mine, now, pid)
if left == 0 then
  redis.call('ZADD', k('s', h), now, pid); redis.call('ZREM', k('l', h), pid)
else
  redis.call('ZADD', k('l', h), now, pid); redis.call('ZREM', k('s', h), pid)
end
if event == 'completed' then redis.call('INCR', k('n', h)) end
local recs, ids = {}, {}
local nseeds = 0
local want = numwant
local function pick(kind)
  if want <= 0 then return 0 end
  local got = 0
  local members = redis.call('ZRANDMEMBER', k(kind, h), want + 1)
  local others = {}
  for _, p in ipairs(members) do
    if p ~= pid and #others < want then table.insert(others, p) end
  end
  if #others == 0 then return 0 end
  local found = redis.call('HMGET', d, unpack(others))
  for i, p in ipairs(others) do
    if found[i] then
      table.insert(recs, found[i]); table.insert(ids, string.char(#p) .. p); got = got + 1
    end
  end
  want = want - got
  return got
end
if left > 0 then nseeds = pick('s') end
pick('l')
local c = counts(h)
-- two strings rather than two per peer: "ip|port|host" lines, and length-prefixed peer ids
return {c[1], c[2], c[3], nseeds, table.concat(recs, '\n'), table.concat(ids)}
"""
)

_SCRAPE = (
    _LIB
    + r"""
local cutoff = ARGV[2]
local res = {}
for i = 3, #ARGV do
  expire(ARGV[i], cutoff)
  local c = counts(ARGV[i])
  table.insert(res, c[1]); table.insert(res, c[2]); table.insert(res, c[3])
end
return res
"""
)

_ENTRIES = (
    _LIB
    + r"""
local h, limit = ARGV[2], tonumber(ARGV[4])
expire(h, ARGV[3])
local res = {}
for _, kind in ipairs({'s', 'l'}) do
  for _, p in ipairs(redis.call('ZRANGE', k(kind, h), 0, limit - 1)) do
    if #res >= 3 * limit then return res end
    local v = redis.call('HGET', k('d', h), p)
    if v then table.insert(res, v); table.insert(res, p); table.insert(res, kind) end
  end
end
return res
"""
)

_DROP_HOST = (
    _LIB
    + r"""
local members = redis.call('SMEMBERS', P .. ':h:' .. ARGV[2])
for _, m in ipairs(members) do drop(string.sub(m, 1, 20), string.sub(m, 21)) end
redis.call('DEL', P .. ':h:' .. ARGV[2])
return #members
"""
)

_SWEEP = (
    _LIB
    + r"""
local cutoff = ARGV[2]
local gone, active = 0, 0
for _, h in ipairs(redis.call('SMEMBERS', P .. ':t')) do
  gone = gone + expire(h, cutoff)
  local n = redis.call('ZCARD', k('s', h)) + redis.call('ZCARD', k('l', h))
  if n == 0 then redis.call('SREM', P .. ':t', h) end
  active = active + n
end
return {gone, active}
"""
)


class RedisPeerStore:
    def __init__(
        self,
        url: str,
        ttl: float,
        prefix: str = "swarm",
        max_connections: int = 64,
        clock: Callable[[], float] = time.time,
        per_host: int = MAX_PEERS_PER_HOST,
    ) -> None:
        self.ttl = ttl
        self.per_host = per_host
        self._clock = clock
        self.prefix = prefix
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url, max_connections=max_connections, socket_connect_timeout=5, socket_timeout=10
        )
        # announces, the hot path, go through one pipelined connection of their own
        self._pipe = resp.Pipe(url) if resp.supported(url) else None
        self._handle_source = _HANDLE.encode()
        #: handed-out peers by their reply fields: most announces hand out peers seen before
        self._peer_cache: dict[tuple[bytes, bytes, int], Peer] = {}
        self._handle = self._redis.register_script(_HANDLE)
        self._scrape = self._redis.register_script(_SCRAPE)
        self._entries = self._redis.register_script(_ENTRIES)
        self._drop_host = self._redis.register_script(_DROP_HOST)
        self._sweep = self._redis.register_script(_SWEEP)

    def _cutoff(self) -> str:
        return repr(self._clock() - self.ttl)

    async def _run(self, script: Any, args: list[Any]) -> Any:
        try:
            return await script(keys=[], args=[self.prefix, *args])
        except aioredis.RedisError as exc:
            raise SwarmError(f"peer store (redis) failed: {exc}") from exc

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except aioredis.RedisError as exc:
            raise SwarmError(f"cannot reach the peer store (redis): {exc}") from exc

    async def _run_handle(self, args: list[Any]) -> Any:
        if self._pipe is None:
            return await self._run(self._handle, args)
        try:
            return await self._pipe.evalsha(self._handle_source, [self.prefix, *args])
        except (OSError, ConnectionError, TimeoutError, resp.ReplyError) as exc:
            raise SwarmError(f"peer store (redis) failed: {exc}") from exc

    async def handle(self, info_hash: bytes, peer: Peer, event: str, numwant: int) -> Handout:
        n = max(0, min(numwant, MAX_NUMWANT))
        res = await self._run_handle(
            [
                info_hash,
                repr(self._clock()),
                self._cutoff(),
                peer.peer_id,
                peer.ip,
                str(peer.port),
                str(peer.left),
                peer.host,
                event,
                str(n),
                str(self.per_host),
            ],
        )
        counts = SwarmCounts(int(res[0]), int(res[1]), int(res[2]))
        nseeds = int(res[3])
        if nseeds < 0:
            return Handout([], counts, refused=PEER_ID_TAKEN if nseeds == -1 else ENDPOINT_TAKEN)
        peers = []
        cache = self._peer_cache
        recs, ids = (bytes(res[4]), bytes(res[5])) if len(res) > 4 else (b"", b"")  # `stopped`: no handout
        pos = 0
        for i, rec in enumerate(recs.split(b"\n") if recs else ()):
            end = pos + 1 + ids[pos]
            key = (rec, ids[pos + 1 : end], 0 if i < nseeds else 1)
            pos = end
            known = cache.get(key)
            if known is None:
                ip, port, host = rec.decode().split("|", 2)
                if len(cache) >= MAX_CACHED_PEERS:
                    cache.clear()
                known = cache[key] = Peer(ip, int(port), key[1], key[2], host)
            peers.append(known)
        return Handout(peers, counts)

    async def scrape(self, info_hashes: list[bytes]) -> dict[bytes, SwarmCounts]:
        res = await self._run(self._scrape, [self._cutoff(), *info_hashes])
        return {
            h: SwarmCounts(int(res[3 * i]), int(res[3 * i + 1]), int(res[3 * i + 2])) for i, h in enumerate(info_hashes)
        }

    async def entries(self, info_hash: bytes, limit: int) -> list[Peer]:
        if limit <= 0:
            return []
        res = await self._run(self._entries, [info_hash, self._cutoff(), str(limit)])
        peers = []
        for pos in range(0, len(res), 3):
            ip, port, host = bytes(res[pos]).decode().split("|", 2)
            peers.append(Peer(ip, int(port), bytes(res[pos + 1]), 0 if bytes(res[pos + 2]) == b"s" else 1, host))
        return peers

    async def drop_host(self, host: str) -> int:
        return int(await self._run(self._drop_host, [host]))

    async def _sweep_counts(self) -> tuple[int, int]:
        gone, active = await self._run(self._sweep, [self._cutoff()])
        return int(gone), int(active)

    async def sweep(self) -> int:
        return (await self._sweep_counts())[0]

    async def active(self) -> int:
        return (await self._sweep_counts())[1]

    async def aclose(self) -> None:
        if self._pipe is not None:
            await self._pipe.aclose()
        await self._redis.aclose()
