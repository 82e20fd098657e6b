"""A :class:`~wshub.interfaces.Store` in Redis, shared by every node of a cluster.

Each stream ``S`` has two keys; the braces make ``S`` their hash tag, so in Redis Cluster both
live in one slot and every script below touches a single slot:

- ``<prefix>:{S}:meta``, a hash: ``top`` (offset of the latest message ever appended), ``epoch``,
  ``cursor`` (handed to a live connection up to here);
- ``<prefix>:{S}:msgs``, a list of the kept messages, oldest first, each ``<expires-ms>|<data>``
  (``|<data>`` when it never expires). Offsets are not stored: retention only drops messages
  from the head, so the kept ones are consecutive and end at ``top``.

Offsets come from ``HINCRBY`` inside a Lua script, which Redis runs atomically: two nodes can never
hand out the same offset.

Epochs are per stream, created (``HSET`` when missing) by the first read, position or append. A
stream that was only looked at, never written, expires after ``unwritten_ttl`` seconds of
not being looked at, so random channel names don't leave keys behind; the first append makes its
hash permanent. When Redis loses a stream (``FLUSHALL``, a restart without persistence, eviction),
the hash goes with its messages and the next touch creates a new epoch: exactly what clients need
to know that they cannot resume. Messages whose hash is gone are deleted at that moment.

Durability is Redis's: with ``appendonly yes`` and ``appendfsync always`` an acknowledged append
survives a crash of Redis; with ``everysec`` up to a second can be lost. Redis must not evict
these keys (``maxmemory-policy noeviction``). Replication is asynchronous: with ``min_replicas``
(``WS_REDIS_MIN_REPLICAS``) every round trip ends with ``WAIT``, and its calls are acknowledged
only once that many replicas have them, so a failover cannot lose them.

The same code runs on one Redis, on the master Sentinel names (``redis+sentinel://``), and on a
Redis Cluster (``redis+cluster://``): there each script touches one stream's slot, and an append
that publishes uses ``SPUBLISH`` on a channel with the stream's hash tag (``wshub:{c:news}``), so
the publication is routed by the shard that holds the stream (see :mod:`wshub.brokers.redis`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis.commands.core import AsyncScript

from ..errors import BackendUnavailable
from ..interfaces import Append, Broker, Retention
from ..redis_support import (
    AnyRedis,
    Batcher,
    check_prefix,
    connect_redis,
    describe,
    ping,
    redis_errors,
    redis_kind,
)
from ..types import StoredMessage, StreamPosition

__all__ = ["RedisStore"]

# KEYS[1] = meta, KEYS[2] = msgs; ARGV[1] = a fresh epoch, ARGV[2] = unwritten ttl (ms).
_PRELUDE = """
local meta, msgs = KEYS[1], KEYS[2]
local function touch(expire_if_unwritten)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = ARGV[1]
    redis.call('HSET', meta, 'epoch', epoch)
    redis.call('DEL', msgs)  -- messages without their stream's hash belong to a lost epoch
  end
  local top = tonumber(redis.call('HGET', meta, 'top') or '0')
  if top == 0 and expire_if_unwritten then redis.call('PEXPIRE', meta, ARGV[2]) end
  return epoch, top
end
local function expired(item, now)
  local bar = string.find(item, '|', 1, true)
  local expires = tonumber(string.sub(item, 1, bar - 1))
  return expires ~= nil and expires < now
end
local function drop_expired_head(now)
  while true do
    local head = redis.call('LINDEX', msgs, 0)
    if not head or not expired(head, now) then return end
    redis.call('LPOP', msgs)
  end
end
"""

# ARGV[3] = item, [4] = size (-1: no limit), [5] = now (ms), [6] = ttl (ms, -1: none),
# [7] = the broker channel to publish on ('' for none), [8] = the publishing node's broker tag,
# [9] = PUBLISH, or SPUBLISH in a cluster (the channel has the stream's hash tag: same slot).
# The published message is <tag><offset>:<data> (wshub.core.streams.pack behind the tag).
_APPEND = (
    _PRELUDE
    + """
local epoch = touch(false)
local top = redis.call('HINCRBY', meta, 'top', 1)
redis.call('PERSIST', meta)
local size, now, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if size == 0 then
  redis.call('DEL', msgs)
else
  local n = redis.call('RPUSH', msgs, ARGV[3])
  if size > 0 and n > size then redis.call('LTRIM', msgs, -size, -1) end
  drop_expired_head(now)
  if ttl < 0 then
    redis.call('PERSIST', msgs)
  else  -- the list can go when its newest message expires, unless an older one never does
    local left = redis.call('PTTL', msgs)
    if n == 1 or (left >= 0 and left < ttl) then redis.call('PEXPIRE', msgs, ttl) end
  end
end
if ARGV[7] ~= '' then  -- publish with the offset in the same step: nodes get offset order
  local bar = string.find(ARGV[3], '|', 1, true)
  redis.call(ARGV[9], ARGV[7], ARGV[8] .. top .. ':' .. string.sub(ARGV[3], bar + 1))
end
return {top, epoch}
"""
)

# ARGV[3] = since, [4] = limit (-1: none), [5] = now (ms).
# Returns {top, epoch, offset1, item1, offset2, item2, ...}.
_READ = (
    _PRELUDE
    + """
local epoch, top = touch(true)
local since, limit, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
drop_expired_head(now)
local len = redis.call('LLEN', msgs)
local first = top - len + 1
local out = {top, epoch}
local i = math.max(0, since + 1 - first)
local count = 0
while i < len and (limit < 0 or count < limit) do
  local want = len - i
  if limit >= 0 then want = math.min(want, limit - count) end
  local chunk = redis.call('LRANGE', msgs, i, i + want - 1)
  for j, item in ipairs(chunk) do
    if not expired(item, now) then  -- kept past an earlier one with a shorter ttl
      out[#out + 1] = first + i + j - 1
      out[#out + 1] = item
      count = count + 1
    end
  end
  i = i + #chunk
end
return out
"""
)

_POSITION = (
    _PRELUDE
    + """
local epoch, top = touch(true)
return {top, epoch}
"""
)

# KEYS[1] = meta; ARGV[1] = offset. Forward only, and never past the stream's top.
_ADVANCE = """
local top = tonumber(redis.call('HGET', KEYS[1], 'top') or '0')
local cursor = tonumber(redis.call('HGET', KEYS[1], 'cursor') or '0')
local offset = tonumber(ARGV[1])
if offset > cursor and offset <= top then redis.call('HSET', KEYS[1], 'cursor', offset) end
return 0
"""


class RedisStore:
    """Streams, history and delivery cursors in Redis (see the module docstring).

    ``prefix`` starts every key; ``timeout`` bounds each Redis call (seconds); ``clock`` gives
    the time that retention by age is measured with; ``min_replicas`` > 0 acknowledges a call
    only once that many replicas have it (``WAIT``; not in a cluster).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "wshub",
        timeout: float = 1.5,
        unwritten_ttl: float = 86400.0,
        clock: Callable[[], float] = time.time,
        min_replicas: int = 0,
    ) -> None:
        self.url = url
        self.kind = redis_kind(url)
        if min_replicas and self.kind == "cluster":
            raise ValueError(
                "WS_REDIS_MIN_REPLICAS is not supported with redis+cluster:// (a pipeline spans "
                "shards, and WAIT covers one connection)"
            )
        if min_replicas < 0:
            raise ValueError("min_replicas must be 0 or more")
        self.min_replicas = min_replicas
        self.prefix = check_prefix(prefix)
        self.where = f"Redis store at {describe(url)}"
        self._timeout = timeout
        self._unwritten_ttl_ms = int(unwritten_ttl * 1000)
        self._clock = clock
        self._client: AnyRedis | None = None
        self._batcher: Batcher | None = None
        self._scripts: dict[str, AsyncScript] = {}
        # (broker channel prefix, node tag) when appends publish too (see publish_with).
        self._publish: tuple[bytes, bytes] | None = None
        self._publish_command = b"SPUBLISH" if self.kind == "cluster" else b"PUBLISH"

    def keys(self, stream: str) -> tuple[str, str]:
        """The stream's hash and list keys."""
        base = f"{self.prefix}:{{{stream}}}:"
        return base + "meta", base + "msgs"

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect; BackendUnavailable when Redis does not answer now."""
        if self._client is not None:
            return
        client = connect_redis(self.url, timeout=self._timeout, name="wshub-store")
        try:
            with redis_errors(self.where):
                await client.ping()
        except BackendUnavailable:
            await client.aclose()
            raise
        self._client = client
        self._batcher = Batcher(
            client,
            self.where,
            min_replicas=self.min_replicas,
            replica_timeout=self._timeout * 2 / 3,
        )
        sources = {"append": _APPEND, "read": _READ, "position": _POSITION, "advance": _ADVANCE}
        self._scripts = {name: client.register_script(src) for name, src in sources.items()}

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def healthy(self) -> bool:
        """Whether Redis answers PING within a second."""
        return self._client is not None and await ping(self._client, 1.0)

    # -- Store ---------------------------------------------------------------------------------

    async def append(self, stream: str, data: bytes, retention: Retention) -> StreamPosition:
        (result,) = await self.append_batch([Append(stream, data, retention)])
        if isinstance(result, Exception):
            raise result
        return result

    def publish_with(self, broker: Broker) -> bool:
        """Yes for a :class:`RedisBroker` on the same Redis: the append script publishes (on the
        broker's channel of the topic, :meth:`RedisBroker.channel`)."""
        from ..brokers.redis import RedisBroker

        if not isinstance(broker, RedisBroker) or broker.url != self.url:
            return False
        self._publish = (broker.channel_prefix, broker.tag)
        return True

    async def append_batch(
        self, appends: Sequence[Append], cursors: Mapping[str, int] | None = None
    ) -> list[StreamPosition | Exception]:
        """Every append (and cursor) pipelined in one round trip (each a script: atomic on its
        own, and with :meth:`publish_with` publishing in the same step)."""
        batcher = self._running()
        now = self._clock()
        now_ms = int(now * 1000)
        script = self._scripts["append"]
        prefix, tag = self._publish or (b"", b"")
        futures = []
        for a in appends:
            ttl = a.retention.ttl
            expires = b"" if ttl is None else b"%d" % int((now + ttl) * 1000)
            size = -1 if a.retention.size is None else a.retention.size
            ttl_ms = -1 if ttl is None else max(1, int(ttl * 1000))
            channel = b""
            if a.topic is not None and prefix:
                channel = prefix + a.topic.encode()
                if self.kind == "cluster":  # the same hash tag as the stream's keys
                    channel = prefix + b"{" + a.topic.encode() + b"}"
            args = [uuid.uuid4().hex[:12], self._unwritten_ttl_ms, expires + b"|" + a.data]
            args += [size, now_ms, ttl_ms, channel, tag, self._publish_command]
            futures.append(batcher.script_nowait(script, self.keys(a.stream), args))
        for stream, offset in (cursors or {}).items():
            meta, _ = self.keys(stream)
            futures.append(batcher.script_nowait(self._scripts["advance"], [meta], [offset]))
        replies = await asyncio.gather(*futures, return_exceptions=True)
        results: list[StreamPosition | Exception] = []
        for reply in replies[: len(appends)]:
            if isinstance(reply, Exception):
                results.append(reply)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                results.append(StreamPosition(int(reply[0]), reply[1].decode()))
        return results

    async def read(
        self, stream: str, since: int, limit: int | None = None
    ) -> tuple[Sequence[StoredMessage], StreamPosition]:
        now_ms = int(self._clock() * 1000)
        reply = await self._call("read", stream, since, -1 if limit is None else limit, now_ms)
        items = reply[2:]
        messages = [
            StoredMessage(int(items[i]), _body(items[i + 1])) for i in range(0, len(items), 2)
        ]
        return messages, StreamPosition(int(reply[0]), reply[1].decode())

    async def position(self, stream: str) -> StreamPosition:
        reply = await self._call("position", stream)
        return StreamPosition(int(reply[0]), reply[1].decode())

    async def cursor(self, stream: str) -> int:
        meta, _ = self.keys(stream)
        value = await self._running().run("HGET", meta, "cursor")
        return int(value) if value is not None else 0

    async def advance_cursor(self, stream: str, offset: int) -> None:
        meta, _ = self.keys(stream)
        await self._running().script(self._scripts["advance"], [meta], [offset])

    # -- internals -----------------------------------------------------------------------------

    def _running(self) -> Batcher:
        if self._batcher is None:
            raise BackendUnavailable(f"{self.where}: the store is not started")
        return self._batcher

    async def _call(self, script: str, stream: str, *args: bytes | int) -> Any:
        """Run one of the per-stream scripts (they all take a fresh epoch and the unwritten
        ttl first)."""
        epoch = uuid.uuid4().hex[:12]
        return await self._running().script(
            self._scripts[script], self.keys(stream), [epoch, self._unwritten_ttl_ms, *args]
        )


def _body(item: bytes) -> bytes:
    """A list item without its ``<expires>|`` header."""
    return item[item.index(b"|") + 1 :]
