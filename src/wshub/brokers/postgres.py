"""A :class:`~wshub.interfaces.Broker` over PostgreSQL ``LISTEN`` / ``NOTIFY``.

Each topic is one notification channel, ``<schema>.<hash of the topic>`` (channel names are
identifiers of at most 63 bytes, topics are not), and a node listens only to the topics its
connections need. A payload is the publishing node's 16-character tag, a kind, and the hub's
bytes: ``t`` text as is (UTF-8 without NUL), ``b`` base64 (anything else; NOTIFY carries text
only), ``r`` the id of a row of the ``spill`` table holding bytes too large for NOTIFY (payloads
must stay under 8000 bytes): the receiver reads that row, keeping the order of what follows it.
Spilled rows are deleted after ten minutes. A node drops its own notifications.

Two things per node: a pool that sends notifications (everything queued since the last call in
one call of ``notify_batch``, in call order), and one connection that listens, checked every
``ping_interval``. When it breaks, it is replaced with exponential backoff and jitter, every
topic is listened to again and ``on_resync`` is called (what was notified meanwhile is lost).

Limits that are PostgreSQL's: notifications reach listeners only after the sending transaction
commits, in commit order; identical payloads on one channel in one transaction are delivered
once (so a batch is split where a payload repeats); the server queues notifications for slow
listeners in an 8 GB queue, and when it is full every ``NOTIFY`` fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from ..errors import BackendUnavailable
from ..interfaces import BrokerHandler
from ..stores.postgres import (
    NOTIFY_LIMIT,
    PG_DOWN,
    SerialBatcher,
    connect_pool,
    describe,
    encode_payload,
    new_tag,
    parse_postgres_url,
    pg_errors,
    pool_healthy,
)

__all__ = ["BROADCAST_TOPIC", "PostgresBroker"]

logger = logging.getLogger("wshub.brokers.postgres")

BROADCAST_TOPIC = "*"
_TAG_LEN = 16


class PostgresBroker:
    """Fan-out between hub nodes through LISTEN/NOTIFY (see the module docstring).

    ``timeout`` bounds connecting and each check of the listening connection;
    ``ping_interval`` is how often that connection is checked; ``reconnect_delay`` is the
    (first, largest) pause between reconnection attempts.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        timeout: float = 1.5,
        ping_interval: float = 5.0,
        reconnect_delay: tuple[float, float] = (0.05, 1.0),
    ) -> None:
        parsed = parse_postgres_url(url)
        self.dsn = parsed.dsn
        self.schema = schema or parsed.schema
        self.where = f"PostgreSQL broker at {describe(self.dsn)}"
        self.node_id = new_tag()
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._delays = reconnect_delay
        self._pool: Any = None
        self._listener: Any = None
        self._handler: BrokerHandler | None = None
        self._on_resync: Callable[[], None] | None = None
        # channel -> topic, for every topic this node wants
        self._topics: dict[str, str] = {self.channel(BROADCAST_TOPIC): BROADCAST_TOPIC}
        self._lock = asyncio.Lock()  # one operation at a time on the listening connection
        self._broken = asyncio.Event()
        self._monitor: asyncio.Task[None] | None = None
        self._writer = SerialBatcher(self._flush, "wshub-postgres-notify")
        # notifications received behind one whose spilled payload is being read
        self._backlog: deque[tuple[str, str]] = deque()
        self._draining: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def tag(self) -> str:
        """What starts every payload this node notifies (its own are dropped on receipt)."""
        return self.node_id

    def channel(self, topic: str) -> str:
        """The notification channel of ``topic``."""
        digest = hashlib.blake2b(topic.encode(errors="surrogatepass"), digest_size=12).hexdigest()
        return f"{self.schema}.{digest}"

    @property
    def listener_pid(self) -> int | None:
        """The server process of the listening connection (``pg_stat_activity.pid``)."""
        return None if self._listener is None else int(self._listener.get_server_pid())

    @property
    def connected(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(
        self, handler: BrokerHandler, on_resync: Callable[[], None] | None = None
    ) -> None:
        """Connect and listen to the wanted topics; BackendUnavailable if PostgreSQL can't be
        reached now."""
        if self._pool is not None:
            return
        self._handler = handler
        self._on_resync = on_resync
        self._closed = False
        self._pool = await connect_pool(
            self.dsn, self.schema, self.where, timeout=self._timeout, max_size=4
        )
        try:
            await self._connect()
        except BaseException:
            self._pool.terminate()
            self._pool = None
            raise
        self._writer.start()
        self._monitor = asyncio.create_task(self._watch(), name="wshub-postgres-listen")

    async def close(self) -> None:
        self._closed = True
        for task in (self._monitor, self._draining):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._monitor = self._draining = None
        await self._writer.close()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with contextlib.suppress(*PG_DOWN):
                await asyncio.wait_for(listener.close(), self._timeout)
            listener.terminate()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except PG_DOWN:  # a TimeoutError too
                pool.terminate()
        self._handler = None

    async def healthy(self) -> bool:
        """PostgreSQL answers, and the listening connection is up."""
        return self.connected and await pool_healthy(self._pool)

    # -- Broker --------------------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> None:
        """One notification; returns once it is committed. Calls made meanwhile go together in
        the next transaction, in call order."""
        if self._closed or self._pool is None:
            raise BackendUnavailable(f"{self.where}: the broker is not running")
        await self._writer.submit([(self.channel(topic), data)])

    async def _flush(self, items: list[tuple[str, bytes]]) -> list[None]:
        pool = self._pool
        if pool is None:
            raise BackendUnavailable(f"{self.where}: the broker is not running")
        start = 0
        while start < len(items):
            channels: list[str] = []
            payloads: list[str | None] = []
            blobs: list[bytes | None] = []
            seen: set[tuple[str, str]] = set()
            end = start
            while end < len(items):
                channel, data = items[end]
                kind, text = encode_payload(data)
                payload: str | None = self.tag + kind + text
                blob: bytes | None = None
                if len(text.encode()) + _TAG_LEN + 1 >= NOTIFY_LIMIT:
                    payload, blob = None, data
                elif (channel, payload) in seen:  # NOTIFY would fold it into the first one
                    break
                else:
                    seen.add((channel, payload))  # type: ignore[arg-type]
                channels.append(channel)
                payloads.append(payload)
                blobs.append(blob)
                end += 1
            with pg_errors(self.where):
                await pool.execute(
                    f'SELECT "{self.schema}".notify_batch($1, $2, $3, $4)',
                    channels,
                    payloads,
                    blobs,
                    self.tag,
                )
            start = end
        return [None] * len(items)

    async def subscribe(self, topic: str) -> None:
        """Receive ``topic`` from now on: returns once PostgreSQL runs the ``LISTEN``. While the
        listening connection is down it returns at once; reconnection listens again."""
        channel = self.channel(topic)
        self._topics[channel] = topic
        async with self._lock:
            listener = self._listener
            if listener is None or listener.is_closed():
                return
            try:
                await listener.add_listener(channel, self._notified)
            except PG_DOWN as exc:
                logger.warning("%s: LISTEN failed (%s); reconnecting", self.where, exc)
                self._broken.set()

    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``: its notifications are dropped from now on."""
        if topic == BROADCAST_TOPIC:
            return
        channel = self.channel(topic)
        self._topics.pop(channel, None)
        async with self._lock:
            listener = self._listener
            if listener is None or listener.is_closed() or channel in self._topics:
                return
            try:
                await listener.remove_listener(channel, self._notified)
            except PG_DOWN:
                self._broken.set()

    # -- the listening connection --------------------------------------------------------------

    async def _connect(self) -> None:
        with pg_errors(self.where):
            listener = await asyncpg.connect(
                self.dsn,
                timeout=self._timeout,
                command_timeout=self._timeout,
                server_settings={"application_name": "wshub-broker"},
            )
        try:
            async with self._lock:
                with pg_errors(self.where):
                    for channel in list(self._topics):
                        await listener.add_listener(channel, self._notified)
                listener.add_termination_listener(self._terminated)
                self._broken.clear()
                self._listener = listener
        except BaseException:
            listener.terminate()
            raise

    def _terminated(self, conn: Any) -> None:
        if conn is self._listener:  # not a replaced one, whose news may come late
            self._broken.set()

    async def _watch(self) -> None:
        """Check the listening connection every ``ping_interval``; replace it when it broke."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._broken.wait(), self._ping_interval)
            if not self._broken.is_set() and await self._ping():
                continue
            logger.warning("%s: listening connection lost; reconnecting", self.where)
            old, self._listener = self._listener, None
            if old is not None:
                old.terminate()
            await self._reconnect()
            if self._on_resync is not None:  # what was notified meanwhile never arrived
                try:
                    self._on_resync()
                except Exception:
                    logger.exception("%s: resync after reconnection failed", self.where)

    async def _ping(self) -> bool:
        listener = self._listener
        if listener is None or listener.is_closed():
            return False
        try:
            async with self._lock:
                await asyncio.wait_for(listener.execute("SELECT 1"), self._timeout)
        except PG_DOWN:
            return False
        return True

    async def _reconnect(self) -> None:
        first, cap = self._delays
        delay = first
        attempts = 0
        while True:
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(cap, delay * 2)
            attempts += 1
            try:
                await self._connect()
            except BackendUnavailable as exc:
                log = logger.warning if attempts % 20 == 1 else logger.debug
                log("%s: reconnection attempt %d failed: %s", self.where, attempts, exc)
                continue
            logger.warning(
                "%s: reconnected after %d attempt(s); %d topic(s) listened to again",
                self.where,
                attempts,
                len(self._topics),
            )
            return

    # -- receiving -----------------------------------------------------------------------------

    def _notified(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        if payload[:_TAG_LEN] == self.tag:
            return  # our own: delivered locally already
        if self._backlog or payload[_TAG_LEN : _TAG_LEN + 1] == "r":
            self._backlog.append((channel, payload))
            if self._draining is None or self._draining.done():
                self._draining = asyncio.create_task(self._drain(), name="wshub-postgres-spill")
            return
        self._deliver(channel, self._decode(payload))

    def _decode(self, payload: str) -> bytes:
        kind, rest = payload[_TAG_LEN : _TAG_LEN + 1], payload[_TAG_LEN + 1 :]
        if kind == "t":
            return rest.encode()
        prefix, _, encoded = rest.partition("|")
        return prefix.encode() + base64.b64decode(encoded)

    async def _drain(self) -> None:
        """Deliver the backlog in order, reading spilled payloads from the table."""
        while self._backlog:
            channel, payload = self._backlog[0]
            data: bytes | None
            if payload[_TAG_LEN : _TAG_LEN + 1] == "r":
                data = await self._read_spilled(int(payload[_TAG_LEN + 1 :]))
            else:
                data = self._decode(payload)
            self._backlog.popleft()
            if data is not None:
                self._deliver(channel, data)

    async def _read_spilled(self, ref: int) -> bytes | None:
        for attempt in range(3):
            pool = self._pool
            if pool is None:
                return None
            try:
                value = await pool.fetchval(
                    f'SELECT data FROM "{self.schema}".spill WHERE id = $1', ref
                )
            except PG_DOWN as exc:
                logger.warning("%s: cannot read spilled payload %d: %s", self.where, ref, exc)
                await asyncio.sleep(0.1 * (attempt + 1))
                continue
            if value is None:
                logger.warning("%s: spilled payload %d is gone", self.where, ref)
                return None
            return bytes(value)
        if self._on_resync is not None:
            self._on_resync()
        return None

    def _deliver(self, channel: str, data: bytes) -> None:
        topic = self._topics.get(channel)
        if topic is None or self._handler is None:
            return  # unsubscribed while it was on its way
        try:
            self._handler(topic, data)
        except Exception:
            logger.exception("broker handler failed for topic %r", topic)
