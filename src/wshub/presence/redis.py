"""A :class:`~wshub.interfaces.Presence` in Redis: who is connected, cluster-wide.

Every key shares the hash tag ``{<prefix>:presence}`` (one Redis Cluster slot), so each Lua script
reads the node heartbeats and writes the entries it needs atomically:

- ``{p:presence}:nodes``, a sorted set: node id → time of its last heartbeat (ms, Redis's own
  clock, so nodes' clocks don't matter). Each node beats every ``node_ttl / 3`` seconds.
- ``{p:presence}:user:<user>``, a hash: connection id → node id.
- ``{p:presence}:chan:<channel>``, a hash: user → the key below (members, each user once).
- ``{p:presence}:cu:<len>:<channel>:<user>``, a hash: connection id → node id, the user's
  connections in the channel (the length makes the name unambiguous).
- ``{p:presence}:node:<node>``, a set: every entry the node wrote, so that a node's entries can
  be removed together. An entry is a JSON array ``[key, connection, channel key, user]``.

A node whose heartbeat is older than ``node_ttl`` is dead: reads ignore its entries (and delete
the connection entries they meet), and the next heartbeat of any node removes all of them and the
node itself. Nobody has to clean up after a ``kill -9``. That heartbeat also returns the
(channel, user) pairs whose last connection went with the dead node, and only that node reports
them (``on_departed``), so the channel hears one ``presence_leave`` per user, cluster-wide. Reads
therefore never remove a user from a channel's member hash; only a ``leave`` or that sweep does.

Each node also keeps its own entries in memory. When its heartbeat finds that the cluster gave it
up (it was cut off for longer than ``node_ttl``, or Redis lost its data) or a write failed while
Redis was unreachable, it writes its entries again, replacing what Redis held for it: presence
heals itself after an outage. No ``presence_join`` / ``presence_leave`` events are sent for what
changes that way.

In a Redis Cluster (``redis+cluster://``) every presence key is in the one slot of the tag
``{<prefix>:presence}``: the scripts stay atomic, and online status and presence channels are
cluster-wide because every node of the hub reads and writes that slot, whichever shard holds the
streams. Behind Sentinel (``redis+sentinel://``) the connections follow the master; what a
failover lost (asynchronous replication) is written again by the healing above.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from redis.commands.core import AsyncScript

from ..errors import BackendUnavailable
from ..redis_support import (
    AnyRedis,
    Backoff,
    Batcher,
    check_prefix,
    connect_redis,
    describe,
    ping,
    stop_task,
)

__all__ = ["RedisPresence"]

logger = logging.getLogger("wshub.presence.redis")

# KEYS[1] = nodes; ARGV[1] = node_ttl (ms).
_PRELUDE = """
local nodes, ttl = KEYS[1], tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - ttl
local alive_cache = {}
local function alive(node)
  local a = alive_cache[node]
  if a == nil then
    local beat = redis.call('ZSCORE', nodes, node)
    a = beat ~= false and tonumber(beat) >= cutoff
    alive_cache[node] = a
  end
  return a
end
-- connections of live nodes in a hash of connection -> node; dead ones are deleted on the way
local function live(key)
  local n = 0
  local h = redis.call('HGETALL', key)
  for i = 1, #h, 2 do
    if alive(h[i + 1]) then n = n + 1 else redis.call('HDEL', key, h[i]) end
  end
  return n
end
local function add(entry, node, index)
  local e = cjson.decode(entry)
  redis.call('HSET', e[1], e[2], node)
  if e[3] ~= '' then redis.call('HSET', e[3], e[4], e[1]) end
  redis.call('SADD', index, entry)
end
-- removes a node's entries; with `departed`, appends channel key, user for every user whose
-- last live connection in a channel this removed
local function remove_node(index, departed)
  for _, entry in ipairs(redis.call('SMEMBERS', index)) do
    local e = cjson.decode(entry)
    redis.call('HDEL', e[1], e[2])
    if e[3] ~= '' and live(e[1]) == 0 and redis.call('HDEL', e[3], e[4]) == 1 and departed then
      departed[#departed + 1] = e[3]
      departed[#departed + 1] = e[4]
    end
  end
  redis.call('DEL', index)
end
"""

# ARGV[2] = node, [3] = prefix of node index keys. Returns {1 when the node was alive before,
# {channel key, user, ...} of the members that left with the dead nodes removed now}.
_HEARTBEAT = (
    _PRELUDE
    + """
local was_alive = alive(ARGV[2])
redis.call('ZADD', nodes, now, ARGV[2])
local departed = {}
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', '(' .. cutoff)) do
  remove_node(ARGV[3] .. dead, departed)
  redis.call('ZREM', nodes, dead)
end
return {was_alive and 1 or 0, departed}
"""
)

# KEYS[2] = this node's index; ARGV[2] = node, ARGV[3...] = entries. Replaces the node's entries.
_RESYNC = (
    _PRELUDE
    + """
remove_node(KEYS[2])
redis.call('ZADD', nodes, now, ARGV[2])
for i = 3, #ARGV do add(ARGV[i], ARGV[2], KEYS[2]) end
return 0
"""
)

# KEYS[2] = index, KEYS[3] = the entry's hash; ARGV[2] = node, [3] = entry.
# Returns 1 when the hash had no live connection before (the user's first).
_ADD = (
    _PRELUDE
    + """
local first = live(KEYS[3]) == 0
add(ARGV[3], ARGV[2], KEYS[2])
return first and 1 or 0
"""
)

# KEYS[2] = index, KEYS[3] = the entry's hash; ARGV[2] = connection, [3] = entry, [4] = channel
# key or '', [5] = user. Returns 1 when that was the user's last live connection in the hash.
_REMOVE = (
    _PRELUDE
    + """
redis.call('SREM', KEYS[2], ARGV[3])
if redis.call('HDEL', KEYS[3], ARGV[2]) == 0 then return 0 end
if live(KEYS[3]) > 0 then return 0 end
if ARGV[4] ~= '' then redis.call('HDEL', ARGV[4], ARGV[5]) end
return 1
"""
)

# KEYS[2] = user hash.
_CONNECTIONS = (
    _PRELUDE
    + """
return live(KEYS[2])
"""
)

# KEYS[2] = channel hash (user -> connections key).
# The live nodes, by their heartbeats.
_NODES = (
    _PRELUDE
    + """
return redis.call('ZRANGEBYSCORE', nodes, cutoff, '+inf')
"""
)

_MEMBERS = (
    _PRELUDE
    + """
local out = {}
local members = redis.call('HGETALL', KEYS[2])
for i = 1, #members, 2 do
  if live(members[i + 1]) > 0 then out[#out + 1] = members[i] end
end
return out
"""
)

# ARGV[2] = node.
_CLOSE = (
    _PRELUDE
    + """
remove_node(KEYS[2])
redis.call('ZREM', nodes, ARGV[2])
return 0
"""
)

_SOURCES = {
    "heartbeat": _HEARTBEAT,
    "resync": _RESYNC,
    "add": _ADD,
    "remove": _REMOVE,
    "connections": _CONNECTIONS,
    "members": _MEMBERS,
    "nodes": _NODES,
    "close": _CLOSE,
}


class RedisPresence:
    """Cluster-wide presence in Redis (see the module docstring).

    ``node_ttl`` seconds without a heartbeat and a node is gone with its entries; it beats every
    ``node_ttl / 3``. ``timeout`` bounds each Redis call.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "wshub",
        node_ttl: float = 10.0,
        timeout: float = 1.5,
    ) -> None:
        if node_ttl <= 0:
            raise ValueError("node_ttl must be positive")
        self.url = url
        self.where = f"Redis presence at {describe(url)}"
        self.node_ttl = node_ttl
        self.node_id = ""
        self._base = f"{{{check_prefix(prefix)}:presence}}:"
        self._ttl_ms = max(1, int(node_ttl * 1000))
        self._timeout = timeout
        self._client: AnyRedis | None = None
        self._batcher: Batcher | None = None
        self._scripts: dict[str, AsyncScript] = {}
        # This node's entries, as written to Redis: what a resync writes again.
        self._entries: dict[bytes, None] = {}
        self._dirty = False  # a write may have failed: Redis may not match _entries
        self._beating: asyncio.Task[None] | None = None
        self._on_departed: Callable[[str, str], None] | None = None

    # -- keys ----------------------------------------------------------------------------------

    @property
    def nodes_key(self) -> str:
        return self._base + "nodes"

    def _index(self, node: str) -> str:
        return f"{self._base}node:{node}"

    def _user_key(self, user_id: str) -> str:
        return f"{self._base}user:{user_id}"

    def _channel_key(self, channel: str) -> str:
        return f"{self._base}chan:{channel}"

    def _channel_user_key(self, channel: str, user_id: str) -> str:
        return f"{self._base}cu:{len(channel.encode())}:{channel}:{user_id}"

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(
        self, node_id: str, on_departed: Callable[[str, str], None] | None = None
    ) -> None:
        """Register the node (its first heartbeat); BackendUnavailable if Redis can't be
        reached now. ``on_departed(channel, user_id)``: a member left with a dead node."""
        if self._client is not None:
            return
        self.node_id = node_id
        self._on_departed = on_departed
        client = connect_redis(self.url, timeout=self._timeout, name="wshub-presence")
        self._client = client
        self._batcher = Batcher(client, self.where)
        self._scripts = {name: client.register_script(src) for name, src in _SOURCES.items()}
        try:
            await self._beat(first=True)
        except BackendUnavailable:
            await self._batcher.close()
            self._client = self._batcher = None
            await client.aclose()
            raise
        self._beating = asyncio.create_task(self._beat_forever(), name="wshub-redis-presence")

    async def close(self) -> None:
        """Stop beating and remove every entry of this node (best effort: if Redis is down, the
        others drop them after ``node_ttl``)."""
        if self._beating is not None:
            await stop_task(self._beating)
            self._beating = None
        client = self._client
        if client is None:
            return
        try:
            await self._run("close", [self._index(self.node_id)], [self.node_id])
        except BackendUnavailable as exc:
            logger.warning("%s: could not remove this node's entries: %s", self.where, exc)
        finally:
            if self._batcher is not None:
                await self._batcher.close()
            self._client = self._batcher = None
            self._entries.clear()
            await client.aclose()

    async def healthy(self) -> bool:
        """Whether Redis answers PING within a second."""
        return self._client is not None and await ping(self._client, 1.0)

    # -- Presence ------------------------------------------------------------------------------

    async def connect(self, user_id: str, conn_id: str) -> None:
        await self._add(self._user_key(user_id), conn_id, "", user_id)

    async def disconnect(self, user_id: str, conn_id: str) -> None:
        await self._remove(self._user_key(user_id), conn_id, "", user_id)

    async def connections(self, user_id: str) -> int:
        return int(await self._run("connections", [self._user_key(user_id)], []))

    async def join(self, channel: str, user_id: str, conn_id: str) -> bool:
        key = self._channel_user_key(channel, user_id)
        return await self._add(key, conn_id, self._channel_key(channel), user_id)

    async def leave(self, channel: str, user_id: str, conn_id: str) -> bool:
        key = self._channel_user_key(channel, user_id)
        return await self._remove(key, conn_id, self._channel_key(channel), user_id)

    async def members(self, channel: str) -> list[str]:
        users = await self._run("members", [self._channel_key(channel)], [])
        return [u.decode() for u in users]

    async def nodes(self) -> list[str]:
        """Ids of the nodes whose heartbeat is younger than ``node_ttl``."""
        return [n.decode() for n in await self._run("nodes", [], [])]

    # -- internals -----------------------------------------------------------------------------

    def _entry(self, key: str, conn_id: str, channel_key: str, user_id: str) -> bytes:
        return orjson.dumps([key, conn_id, channel_key, user_id if channel_key else ""])

    async def _add(self, key: str, conn_id: str, channel_key: str, user_id: str) -> bool:
        entry = self._entry(key, conn_id, channel_key, user_id)
        self._entries[entry] = None
        keys = [self._index(self.node_id), key]
        return bool(await self._write("add", keys, [self.node_id, entry]))

    async def _remove(self, key: str, conn_id: str, channel_key: str, user_id: str) -> bool:
        entry = self._entry(key, conn_id, channel_key, user_id)
        self._entries.pop(entry, None)
        keys = [self._index(self.node_id), key]
        return bool(await self._write("remove", keys, [conn_id, entry, channel_key, user_id]))

    async def _write(self, script: str, keys: list[str], args: list[str | bytes]) -> int:
        try:
            return int(await self._run(script, keys, args))
        except BackendUnavailable:
            self._dirty = True  # the next successful heartbeat writes our entries again
            raise

    async def _run(self, script: str, keys: Iterable[str], args: Iterable[str | bytes]) -> Any:
        if self._batcher is None:
            raise BackendUnavailable(f"{self.where}: presence is not started")
        return await self._batcher.script(
            self._scripts[script], [self.nodes_key, *keys], [self._ttl_ms, *args]
        )

    async def _beat(self, *, first: bool = False) -> None:
        """One heartbeat; rewrites this node's entries when the cluster gave the node up or a
        write may have been lost."""
        alive, departed = await self._run("heartbeat", [], [self.node_id, self._base + "node:"])
        self._report_departed(departed)
        if alive and not self._dirty:
            return
        if not alive and not first:
            logger.warning("%s: this node was given up; writing its entries again", self.where)
        self._dirty = False
        # Commands reach Redis in submission order (Batcher), so this snapshot of the entries
        # lands before every change made after it, and after every change made before it.
        await self._run("resync", [self._index(self.node_id)], [self.node_id, *self._entries])

    def _report_departed(self, departed: list[bytes]) -> None:
        if not departed or self._on_departed is None:
            return
        prefix = len(self._channel_key(""))
        for i in range(0, len(departed) - 1, 2):
            channel, user = departed[i][prefix:].decode(), departed[i + 1].decode()
            try:
                self._on_departed(channel, user)
            except Exception:
                logger.exception("%s: on_departed failed", self.where)

    async def _beat_forever(self) -> None:
        interval = self.node_ttl / 3
        backoff = Backoff(min(0.05, interval), interval)
        down = False
        while True:
            try:
                await self._beat()
            except BackendUnavailable as exc:
                self._dirty = True
                if not down:
                    logger.warning("%s: heartbeat failed, retrying: %s", self.where, exc)
                down = True
                await asyncio.sleep(backoff.delay())
                continue
            except Exception:
                logger.exception("%s: heartbeat failed", self.where)
            if down:
                logger.warning("%s: heartbeats resumed", self.where)
                down = False
                backoff.reset()
            await asyncio.sleep(interval)
