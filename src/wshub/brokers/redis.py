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

Behind Sentinel (``redis+sentinel://``) every new connection, the subscriber's too, goes to the
master the Sentinels name now: a failover breaks the connections to the old master (killed, or
demoted: Sentinel closes its clients), and reconnection finds the new one, subscribes again and
calls ``on_resync``.

In a Redis Cluster (``redis+cluster://``) the broker uses sharded Pub/Sub: a topic's channel
carries the topic as hash tag (``wshub:{c:news}``, the slot of the stream ``c:news``),
``SPUBLISH`` sends it to the shard owning that slot only, and the node holds one subscriber
connection per master, each ``SSUBSCRIBE``-d to the wanted channels of its slots. When the
topology changes (a ``MOVED`` reply, a ``sunsubscribe`` Redis sends when a slot moves away, a
master that fails), every subscriber connection is replaced after reading the slots again, all
topics are subscribed again and ``on_resync`` is called.

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

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ..errors import BackendUnavailable
from ..interfaces import BrokerHandler
from ..redis_support import (
    REDIS_DOWN,
    AnyRedis,
    Backoff,
    Batcher,
    connect_redis,
    describe,
    ping,
    redis_errors,
    redis_kind,
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
        self.kind = redis_kind(url)
        self.where = f"Redis broker at {describe(url)}"
        # Sharded Pub/Sub in a cluster: SPUBLISH / SSUBSCRIBE, channels with a hash tag.
        self._sharded = self.kind == "cluster"
        self._publish_command = "SPUBLISH" if self._sharded else "PUBLISH"
        self._subscribe_command = b"SSUBSCRIBE" if self._sharded else b"SUBSCRIBE"
        self._unsubscribe_command = b"SUNSUBSCRIBE" if self._sharded else b"UNSUBSCRIBE"
        self._message_kind = b"smessage" if self._sharded else b"message"
        self._subscribed_kind = b"ssubscribe" if self._sharded else b"subscribe"
        self.node_id = uuid.uuid4().hex[:_NODE_ID_LEN]
        self._tag = self.node_id.encode()
        self._prefix = channel_prefix.encode()
        self._on_resync: Callable[[], None] | None = None
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._backoff = Backoff(*reconnect_delay)
        self._client: AnyRedis | None = None
        self._handler: BrokerHandler | None = None
        # The topics this node wants; the subscriber connection is brought in line with it.
        self._topics: set[str] = {BROADCAST_TOPIC}
        # Serialises (UN)SUBSCRIBE commands and reconnection, so the last one sent matches
        # the latest wanted state.
        self._lock = asyncio.Lock()
        # The subscriber connections by shard (one, named "", outside a cluster).
        self._conns: dict[str, AbstractConnection] = {}
        # Cluster: SUNSUBSCRIBEs sent and not yet confirmed, per channel (any other
        # sunsubscribe is Redis saying the channel's slot moved away).
        self._unsubscribing: dict[bytes, int] = {}
        self._reconnecting = False  # cluster: read the slots again before connecting
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
        return bool(self._conns)

    def channel(self, topic: str) -> bytes:
        """The Redis channel of ``topic``: ``<prefix><topic>``; in a cluster
        ``<prefix>{<topic>}``, in the slot of the stream ``topic`` (the store's keys have the
        same hash tag, so its append script can ``SPUBLISH`` there)."""
        if self._sharded:
            return self._prefix + b"{" + topic.encode() + b"}"
        return self._prefix + topic.encode()

    def _topic(self, channel: bytes) -> str:
        if self._sharded:
            return channel[len(self._prefix) + 1 : -1].decode(errors="replace")
        return channel[len(self._prefix) :].decode(errors="replace")

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
        self._reconnecting = False
        self._client = connect_redis(self.url, timeout=self._timeout, name="wshub-broker")
        try:
            conns = await self._connect()
        except BaseException:
            await self._client.aclose()
            self._client = None
            raise
        self._batcher = Batcher(self._client, self.where)
        self._reader = asyncio.create_task(self._run(conns), name="wshub-redis-broker")
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
        await self._batcher.run(self._publish_command, self.channel(topic), self._tag + data)

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
            channel = self.channel(topic)
            async with self._lock:
                conn, wanted = await self._subscriber_of(channel), topic in self._topics
                if conn is not None:
                    if wanted and done is not None:
                        self._confirmations.setdefault(channel, deque()).append(done)
                        loop.call_later(self._timeout, settle, done)  # never wait forever
                    if not wanted and self._sharded:
                        self._unsubscribing[channel] = self._unsubscribing.get(channel, 0) + 1
                    command = self._subscribe_command if wanted else self._unsubscribe_command
                    # on failure the reader notices too, and reconnection subscribes again
                    with contextlib.suppress(*REDIS_DOWN):
                        await conn.send_command(command, channel)
            if done is not None and (conn is None or not wanted):
                settle(done)

    # -- the subscriber connection(s) ---------------------------------------------------------

    async def _subscriber_of(self, channel: bytes) -> AbstractConnection | None:
        """The subscriber connection of the shard owning ``channel`` (None while there is none).
        In a cluster, a channel whose owner has no connection means the slots moved: every
        connection is dropped, and reconnection subscribes again where the slots are now."""
        if not self._sharded or not self._conns:
            return self._conns.get("")
        assert isinstance(self._client, RedisCluster)
        try:
            node = self._client.get_node_from_key(channel)  # type: ignore[arg-type]
        except Exception:  # the slot has no owner just now
            node = None
        conn = self._conns.get(node.name) if node is not None else None
        if conn is None:
            logger.warning("%s: the cluster's slots moved; subscribing again", self.where)
            for other in self._conns.values():  # their readers fail, and _run reconnects
                await other.disconnect(nowait=True)
        return conn

    async def _connect(self) -> dict[str, AbstractConnection]:
        """Open the subscriber connection(s) and subscribe to every wanted topic (confirmed)."""
        if self._sharded:
            return await self._connect_shards()
        assert self._client is not None and not isinstance(self._client, RedisCluster)
        pool = self._client.connection_pool  # Sentinel: a connection that asks for the master
        conn: AbstractConnection = pool.connection_class(**pool.connection_kwargs)
        try:
            with redis_errors(self.where):
                await conn.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
                async with self._lock:
                    channels = sorted(self.channel(t) for t in self._topics)
                    for i in range(0, len(channels), _SUBSCRIBE_BATCH):
                        batch = channels[i : i + _SUBSCRIBE_BATCH]
                        await conn.send_command("SUBSCRIBE", *batch)
                        await self._confirm(conn, len(batch))
                    self._conns = {"": conn}
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return {"": conn}

    async def _connect_shards(self) -> dict[str, AbstractConnection]:
        """Cluster: read the slots, open one subscriber connection per master, and
        ``SSUBSCRIBE`` each wanted channel on its shard (one channel per command: a command's
        channels must share a slot)."""
        client = self._client
        assert isinstance(client, RedisCluster)
        conns: dict[str, AbstractConnection] = {}
        try:
            with redis_errors(self.where):
                try:
                    await client.initialize()  # once: aclose() then closes every node
                    if self._reconnecting:
                        await client.nodes_manager.initialize()  # the slots as they are now
                    for node in client.get_primaries():
                        new: AbstractConnection = node.connection_class(**node.connection_kwargs)
                        conns[node.name] = new
                        await new.connect()  # type: ignore[no-untyped-call]
                    async with self._lock:
                        groups: dict[str, list[bytes]] = {}
                        for topic in sorted(self._topics):
                            channel = self.channel(topic)
                            owner = client.get_node_from_key(channel)  # type: ignore[arg-type]
                            if owner is None:
                                raise KeyError(channel)
                            groups.setdefault(owner.name, []).append(channel)
                        for name, channels in groups.items():
                            shard = conns[name]
                            for i in range(0, len(channels), _SUBSCRIBE_BATCH):
                                batch = channels[i : i + _SUBSCRIBE_BATCH]
                                commands = [(b"SSUBSCRIBE", c) for c in batch]
                                await shard.send_packed_command(shard.pack_commands(commands))
                                await self._confirm(shard, len(batch))
                        self._unsubscribing.clear()
                        self._conns = conns
                except (ResponseError, KeyError) as exc:  # MOVED, CLUSTERDOWN: slots moving
                    raise RedisConnectionError(f"the cluster's slots are moving: {exc}") from exc
        except BaseException:
            for conn in conns.values():
                await conn.disconnect(nowait=True)
            raise
        return conns

    async def _confirm(self, conn: AbstractConnection, count: int) -> None:
        """Read the confirmations of ``count`` channels just (S)SUBSCRIBEd: nothing else is sent
        on the connection before them."""
        for _ in range(count):
            reply = await conn.read_response(disconnect_on_error=False, push_request=True)
            if not (isinstance(reply, list) and reply[:1] == [self._subscribed_kind]):
                raise RedisConnectionError(f"unexpected reply {reply!r}")

    async def _run(self, conns: dict[str, AbstractConnection]) -> None:
        """Read the subscriber connection(s); when one breaks, reconnect until it works again."""
        while True:
            try:
                await self._read_all(conns)
            except REDIS_DOWN as exc:
                logger.warning("%s: subscriber connection lost (%s); reconnecting", self.where, exc)
            except ResponseError as exc:  # a cluster answering MOVED: its slots moved
                logger.warning("%s: %s; subscribing again", self.where, exc)
            except Exception:
                logger.exception("%s: subscriber connection failed; reconnecting", self.where)
            finally:
                self._conns = {}  # a (UN)SUBSCRIBE being sent on it fails, and is redone
                self._settle_confirmations()
                for conn in conns.values():
                    await conn.disconnect(nowait=True)
            conns = await self._reconnect()
            if self._on_resync is not None:  # what was published meanwhile never arrived
                try:
                    self._on_resync()
                except Exception:
                    logger.exception("%s: resync after reconnection failed", self.where)

    async def _read_all(self, conns: dict[str, AbstractConnection]) -> None:
        """Read every connection until one of them fails (with its error)."""
        if len(conns) == 1:
            (conn,) = conns.values()
            await self._read(conn)
            return
        readers = [asyncio.ensure_future(self._read(conn)) for conn in conns.values()]
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
            errors = [t.exception() for t in done if not t.cancelled()]
            for error in errors:
                if error is not None:
                    raise error
            raise RedisConnectionError("a subscriber connection ended")
        finally:
            for reader in readers:
                if not reader.done():
                    await stop_task(reader)

    async def _reconnect(self) -> dict[str, AbstractConnection]:
        self._backoff.reset()
        self._reconnecting = True
        attempts = 0
        while True:
            await asyncio.sleep(self._backoff.delay())
            attempts += 1
            try:
                conns = await self._connect()
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
            return conns

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
            if kind == self._message_kind:
                self._deliver(reply[1], reply[2])
            elif kind == self._subscribed_kind:
                waiting = self._confirmations.get(reply[1])
                if waiting:
                    future = waiting.popleft()
                    if not future.done():
                        future.set_result(None)
                    if not waiting:
                        del self._confirmations[reply[1]]
            elif kind == b"sunsubscribe":
                self._unsubscribed(reply[1])

    def _unsubscribed(self, channel: bytes) -> None:
        """Cluster: a ``sunsubscribe`` that no SUNSUBSCRIBE of ours asked for is Redis saying
        that the channel's slot moved to another shard: subscribe again where it is now."""
        pending = self._unsubscribing.get(channel, 0)
        if pending > 0:
            if pending == 1:
                del self._unsubscribing[channel]
            else:
                self._unsubscribing[channel] = pending - 1
            return
        if self._topic(channel) in self._topics:
            raise RedisConnectionError(f"the slot of {channel!r} moved to another shard")

    def _deliver(self, channel: bytes, payload: bytes) -> None:
        if payload[:_NODE_ID_LEN] == self._tag or self._handler is None:
            return  # our own publication: delivered locally already
        topic = self._topic(channel)
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
