"""An in-process :class:`~wshub.interfaces.Broker`.

Alone it connects nothing (a single node delivers locally). Several hubs given the same
:class:`MemoryBus` behave as nodes of one cluster inside one process, which the tests use.
"""

from __future__ import annotations

from ..interfaces import BrokerHandler

__all__ = ["MemoryBroker", "MemoryBus"]

BROADCAST_TOPIC = "*"


class MemoryBus:
    """What several :class:`MemoryBroker` share to reach each other."""

    def __init__(self) -> None:
        self.brokers: list[MemoryBroker] = []


class MemoryBroker:
    def __init__(self, bus: MemoryBus | None = None) -> None:
        self._bus = bus
        self._handler: BrokerHandler | None = None
        self._topics: set[str] = set()

    async def start(self, handler: BrokerHandler) -> None:
        self._handler = handler
        if self._bus is not None:
            self._bus.brokers.append(self)

    async def close(self) -> None:
        if self._bus is not None and self in self._bus.brokers:
            self._bus.brokers.remove(self)
        self._handler = None

    async def publish(self, topic: str, data: bytes) -> None:
        if self._bus is None:
            return
        for other in self._bus.brokers:
            if (
                other is not self
                and other._handler is not None
                and (topic == BROADCAST_TOPIC or topic in other._topics)
            ):
                other._handler(topic, data)

    async def subscribe(self, topic: str) -> None:
        self._topics.add(topic)

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)
