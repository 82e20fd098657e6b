"""A :class:`~wshub.interfaces.Broker` over Redis Pub/Sub, for hubs on several nodes.

Each topic is one Redis channel, ``<channel_prefix><topic>`` (``wshub:c:news``, ``wshub:u:alice``,
``wshub:*``), and a node subscribes only to the topics its connections need: a node without a
subscriber for a channel never receives the channel's traffic. A Redis message is the publishing
node's 16-character id followed by the hub's bytes; a node drops its own messages.

Two connections per node: a pool for ``PUBLISH`` (one command per :meth:`RedisBroker.publish`,
pipelined with the calls made meanwhile, in call order), and one subscriber connection read by a
background task. When the subscriber connection breaks, the task reconnects with exponential
backoff and jitter, forever, and subscribes again to every topic; meanwhile ``publish`` fails at
once with :class:`~wshub.errors.BackendUnavailable` and local delivery goes on. A subscriber
connection that goes silent (no answer to ``PING`` within ``ping_interval``) counts as broken.

The connection helpers it shares with the Redis store and presence are in
:mod:`wshub.redis_support`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from ..errors import BackendUnavailable
from ..interfaces import BrokerHandler
from ..redis_support import (
    REDIS_DOWN,
    Backoff,
    Batcher,
    connect_redis,
    describe,
    ping,
    redis_errors,
    settle,
    stop_task,
)

__all__ = ["BROADCAST_TOPIC", "RedisBroker"]

logger = logging.getLogger("wshub.brokers.redis")

BROADCAST_TOPIC = "*"
_NODE_ID_LEN = 16
#: Channels per SUBSCRIBE when (re)subscribing every topic: a node may have one per user.
_SUBSCRIBE_BATCH = 1000


# -- the broker --------------------------------------------------------------------------------


class RedisBroker:
    """Fan-out between hub nodes through Redis Pub/Sub (see the module docstring).

    ``timeout`` bounds every Redis call (connect, send, read); ``ping_interval`` is how long the
    subscriber connection may stay silent before it is checked with ``PING``;
    ``reconnect_delay`` is the (first, largest) pause between reconnection attempts.
    """

    def __init__(
        self,
        url: str,
        *,
        channel_prefix: str = "wshub:",
        timeout: float = 1.5,
        ping_interval: float = 5.0,
        reconnect_delay: tuple[float, float] = (0.05, 1.0),
    ) -> None:
        self.url = url
        self.where = f"Redis broker at {describe(url)}"
        self.node_id = uuid.uuid4().hex[:_NODE_ID_LEN]
        self._tag = self.node_id.encode()
        self._prefix = channel_prefix.encode()
        self._on_resync: Callable[[], None] | None = None
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._backoff = Backoff(*reconnect_delay)
        self._client: Redis | None = None
        self._handler: BrokerHandler | None = None
        # The topics this node wants; the subscriber connection is brought in line with it.
        self._topics: set[str] = {BROADCAST_TOPIC}
        # Serialises (UN)SUBSCRIBE commands and reconnection, so the last one sent matches
        # the latest wanted state.
        self._lock = asyncio.Lock()
        self._conn: AbstractConnection | None = None
        # One future per SUBSCRIBE sent for a channel, resolved by its confirmation (in order).
        self._confirmations: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        # (topic, future or None): subscribe/unsubscribe requests for the writer task, in order.
        self._requests: asyncio.Queue[tuple[str, asyncio.Future[None] | None]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._batcher: Batcher | None = None
        self._closed = False

    @property
    def tag(self) -> bytes:
        """What starts every message this node publishes (its own are dropped on receipt)."""
        return self._tag

    @property
    def channel_prefix(self) -> bytes:
        """What starts the Redis channel of every topic."""
        return self._prefix

    @property
    def connected(self) -> bool:
        """Whether the subscriber connection is up (messages from other nodes arrive)."""
        return self._conn is not None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(
        self, handler: BrokerHandler, on_resync: Callable[[], None] | None = None
    ) -> None:
        """Connect and subscribe to the wanted topics; BackendUnavailable if Redis can't be
        reached now (a node refuses to start rather than run cut off from the others)."""
        if self._reader is not None:
            return
        self._handler = handler
        self._on_resync = on_resync
        self._closed = False
        self._client = connect_redis(self.url, timeout=self._timeout, name="wshub-broker")
        try:
            conn = await self._connect()
        except BaseException:
            await self._client.aclose()
            self._client = None
            raise
        self._batcher = Batcher(self._client, self.where)
        self._reader = asyncio.create_task(self._run(conn), name="wshub-redis-broker")
        self._writer = asyncio.create_task(self._write_forever(), name="wshub-redis-subscriber")

    async def close(self) -> None:
        self._closed = True
        for task in (self._writer, self._reader):
            if task is not None:
                await stop_task(task)
        self._writer = self._reader = None
        while not self._requests.empty():  # nobody will send these any more
            _, done = self._requests.get_nowait()
            if done is not None:
                settle(done)
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._handler = None

    async def healthy(self) -> bool:
        """Redis answers PING, and the subscriber connection is up."""
        return self._client is not None and self.connected and await ping(self._client, 1.0)

    # -- Broker --------------------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> None:
        """One ``PUBLISH``; returns when Redis took it. Calls made while a batch is in flight go
        together in the next one, in call order (see :class:`Batcher`), so order holds."""
        if self._closed or self._batcher is None:
            raise BackendUnavailable(f"{self.where}: the broker is not running")
        await self._batcher.run("PUBLISH", self._prefix + topic.encode(), self._tag + data)

    async def subscribe(self, topic: str) -> None:
        """Receive ``topic`` from now on: returns once Redis confirmed the subscription (or after
        ``timeout``). While Redis is unreachable it returns at once; the topic is subscribed on
        reconnection."""
        self._topics.add(topic)
        if self._writer is None:
            return  # not started: start() subscribes to every wanted topic
        done = asyncio.get_running_loop().create_future()
        self._requests.put_nowait((topic, done))
        await done

    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``: messages for it are dropped from now on."""
        if topic == BROADCAST_TOPIC:
            return  # every node receives broadcasts
        self._topics.discard(topic)
        if self._writer is not None:
            self._requests.put_nowait((topic, None))

    async def _write_forever(self) -> None:
        """Bring the subscriber connection in line with the wanted topics, one request at a time,
        in request order. Callers never touch redis-py themselves: its calls need a task of their
        own (``asyncio.timeout``), which a handler started eagerly may not have yet."""
        loop = asyncio.get_running_loop()
        while True:
            topic, done = await self._requests.get()
            channel = self._prefix + topic.encode()
            async with self._lock:
                conn, wanted = self._conn, topic in self._topics
                if conn is not None:
                    if wanted and done is not None:
                        self._confirmations.setdefault(channel, deque()).append(done)
                        loop.call_later(self._timeout, settle, done)  # never wait forever
                    # on failure the reader notices too, and reconnection subscribes again
                    with contextlib.suppress(*REDIS_DOWN):
                        await conn.send_command("SUBSCRIBE" if wanted else "UNSUBSCRIBE", channel)
            if done is not None and (conn is None or not wanted):
                settle(done)

    # -- the subscriber connection -------------------------------------------------------------

    async def _connect(self) -> AbstractConnection:
        """Open a subscriber connection and subscribe to every wanted topic (confirmed)."""
        assert self._client is not None
        pool = self._client.connection_pool
        conn = pool.connection_class(**pool.connection_kwargs)
        try:
            with redis_errors(self.where):
                await conn.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
                async with self._lock:
                    channels = sorted(self._prefix + t.encode() for t in self._topics)
                    for i in range(0, len(channels), _SUBSCRIBE_BATCH):
                        batch = channels[i : i + _SUBSCRIBE_BATCH]
                        await conn.send_command("SUBSCRIBE", *batch)
                        for _ in batch:  # nothing else is sent on it before these replies
                            reply = await conn.read_response(
                                disconnect_on_error=False, push_request=True
                            )
                            if not (isinstance(reply, list) and reply[:1] == [b"subscribe"]):
                                raise RedisConnectionError(f"unexpected reply {reply!r}")
                    self._conn = conn
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return conn

    async def _run(self, conn: AbstractConnection) -> None:
        """Read the subscriber connection; when it breaks, reconnect until it works again."""
        while True:
            try:
                await self._read(conn)
            except REDIS_DOWN as exc:
                logger.warning("%s: subscriber connection lost (%s); reconnecting", self.where, exc)
            except Exception:
                logger.exception("%s: subscriber connection failed; reconnecting", self.where)
            finally:
                self._conn = None  # a (UN)SUBSCRIBE being sent on it fails, and is redone
                self._settle_confirmations()
                await conn.disconnect(nowait=True)
            conn = await self._reconnect()
            if self._on_resync is not None:  # what was published meanwhile never arrived
                try:
                    self._on_resync()
                except Exception:
                    logger.exception("%s: resync after reconnection failed", self.where)

    async def _reconnect(self) -> AbstractConnection:
        self._backoff.reset()
        attempts = 0
        while True:
            await asyncio.sleep(self._backoff.delay())
            attempts += 1
            try:
                conn = await self._connect()
            except BackendUnavailable as exc:
                log = logger.warning if attempts % 20 == 1 else logger.debug
                log("%s: reconnection attempt %d failed: %s", self.where, attempts, exc)
                continue
            logger.warning(
                "%s: reconnected after %d attempt(s); %d topic(s) subscribed again",
                self.where,
                attempts,
                len(self._topics),
            )
            return conn

    async def _read(self, conn: AbstractConnection) -> None:
        pinged = False
        while True:
            # push_request: with RESP3 (redis-py's default) messages are pushes; RESP2 ignores it
            reply: Any = await conn.read_response(
                timeout=self._ping_interval, disconnect_on_error=False, push_request=True
            )
            if reply is None:  # silent for ping_interval: is the connection still there?
                if pinged:
                    raise RedisConnectionError("no answer to PING")
                async with self._lock:
                    await conn.send_command("PING")
                pinged = True
                continue
            pinged = False
            kind = reply[0]
            if kind == b"message":
                self._deliver(reply[1], reply[2])
            elif kind == b"subscribe":
                waiting = self._confirmations.get(reply[1])
                if waiting:
                    future = waiting.popleft()
                    if not future.done():
                        future.set_result(None)
                    if not waiting:
                        del self._confirmations[reply[1]]

    def _deliver(self, channel: bytes, payload: bytes) -> None:
        if payload[:_NODE_ID_LEN] == self._tag or self._handler is None:
            return  # our own publication: delivered locally already
        topic = channel[len(self._prefix) :].decode(errors="replace")
        if topic not in self._topics:
            return  # unsubscribed while the message was on its way
        try:
            self._handler(topic, payload[_NODE_ID_LEN:])
        except Exception:
            logger.exception("broker handler failed for topic %r", topic)

    def _settle_confirmations(self) -> None:
        """The connection is gone: nobody waits for its confirmations any more (the topics
        are subscribed again on reconnection)."""
        for waiting in self._confirmations.values():
            for future in waiting:
                settle(future)
        self._confirmations.clear()
