"""An in-process :class:`~wshub.interfaces.Store`: fast, and gone when the process exits."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from ..brokers.memory import MemoryBroker, MemoryBus
from ..interfaces import Append, Broker, Retention
from ..types import StoredMessage, StreamPosition

__all__ = ["MemoryStore"]


class _Stream:
    __slots__ = ("items", "offset", "ttl")

    def __init__(self) -> None:
        self.offset = 0
        self.items: deque[tuple[int, float, bytes]] = deque()
        self.ttl: float | None = None


class MemoryStore:
    """Keeps every stream in a deque. Its epoch is new for every instance (a restart loses all)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._cursors: dict[str, int] = {}
        self.epoch = uuid.uuid4().hex[:12]
        # The bus of the in-process brokers it publishes on (one per shared store).
        self._bus: MemoryBus | None = None

    def publish_with(self, broker: Broker) -> bool:
        """Yes for a :class:`MemoryBroker` on a bus: appends are published to every broker on
        it (the appending node's too: its hub drops what it delivered already) before the next
        append runs, which is what makes them atomic here."""
        bus = broker.bus if isinstance(broker, MemoryBroker) else None
        if bus is None or (self._bus is not None and self._bus is not bus):
            return False
        self._bus = bus
        return True

    async def append_batch(
        self, appends: Sequence[Append], cursors: Mapping[str, int] | None = None
    ) -> list[StreamPosition | Exception]:
        return self.append_batch_nowait(appends, cursors)

    def append_batch_nowait(
        self, appends: Sequence[Append], cursors: Mapping[str, int] | None = None
    ) -> list[StreamPosition | Exception]:
        """:meth:`append_batch` without a task or a turn of its own (the group commit calls it
        directly when a store has it): the in-memory store never waits."""
        results: list[StreamPosition | Exception] = []
        bus = self._bus
        for item in appends:
            pos = self._append(item.stream, item.data, item.retention)
            results.append(pos)
            if item.topic is not None and bus is not None:
                bus.deliver(item.topic, b"%d:%s" % (pos.offset, item.data))
        for stream, offset in (cursors or {}).items():
            self._advance(stream, offset)
        return results

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _expire(self, stream: _Stream, now: float) -> None:
        if stream.ttl is not None:
            cutoff = now - stream.ttl
            items = stream.items
            while items and items[0][1] < cutoff:
                items.popleft()

    async def append(self, stream: str, data: bytes, retention: Retention) -> StreamPosition:
        return self._append(stream, data, retention)

    def _append(self, stream: str, data: bytes, retention: Retention) -> StreamPosition:
        s = self._streams.get(stream)
        if s is None:
            s = self._streams[stream] = _Stream()
        s.offset += 1
        s.ttl = retention.ttl
        now = self._clock()
        if retention.size != 0:
            s.items.append((s.offset, now, data))
            if retention.size is not None:
                while len(s.items) > retention.size:
                    s.items.popleft()
        self._expire(s, now)
        return StreamPosition(s.offset, self.epoch)

    async def read(
        self, stream: str, since: int, limit: int | None = None
    ) -> tuple[Sequence[StoredMessage], StreamPosition]:
        s = self._streams.get(stream)
        if s is None:
            return [], StreamPosition(0, self.epoch)
        self._expire(s, self._clock())
        items = s.items
        start = 0
        if items:
            # Offsets in the deque are consecutive, so the first wanted index is arithmetic.
            start = max(0, since + 1 - items[0][0])
        stop = len(items) if limit is None else min(len(items), start + limit)
        out = [StoredMessage(items[i][0], items[i][2]) for i in range(start, stop)]
        return out, StreamPosition(s.offset, self.epoch)

    async def position(self, stream: str) -> StreamPosition:
        s = self._streams.get(stream)
        return StreamPosition(s.offset if s else 0, self.epoch)

    async def cursor(self, stream: str) -> int:
        return self._cursors.get(stream, 0)

    async def advance_cursor(self, stream: str, offset: int) -> None:
        self._advance(stream, offset)

    def _advance(self, stream: str, offset: int) -> None:
        s = self._streams.get(stream)
        if s is not None and offset <= s.offset and offset > self._cursors.get(stream, 0):
            self._cursors[stream] = offset
