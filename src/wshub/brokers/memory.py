"""An in-process :class:`~wshub.interfaces.Broker`.

Alone it connects nothing (a single node delivers locally). Several hubs given the same
:class:`MemoryBus` behave as nodes of one cluster inside one process, which the tests use.
"""

from __future__ import annotations

from collections.abc import Callable

from ..interfaces import BrokerHandler

__all__ = ["MemoryBroker", "MemoryBus"]

BROADCAST_TOPIC = "*"


class MemoryBus:
    """What several :class:`MemoryBroker` share to reach each other."""

    def __init__(self) -> None:
        self.brokers: list[MemoryBroker] = []

    def deliver(self, topic: str, data: bytes, *, sender: MemoryBroker | None = None) -> None:
        """Hand ``data`` to every broker subscribed to ``topic`` but ``sender``, at once."""
        for broker in self.brokers:
            if (
                broker is not sender
                and broker._handler is not None
                and (topic == BROADCAST_TOPIC or topic in broker._topics)
            ):
                broker._handler(topic, data)


class MemoryBroker:
    def __init__(self, bus: MemoryBus | None = None) -> None:
        self._bus = bus
        self._handler: BrokerHandler | None = None
        self._topics: set[str] = set()

    @property
    def bus(self) -> MemoryBus | None:
        return self._bus

    @property
    def solo(self) -> bool:
        """Without a bus it connects this node to no other: the hub publishes nothing to it."""
        return self._bus is None

    async def start(
        self, handler: BrokerHandler, on_resync: Callable[[], None] | None = None
    ) -> None:
        self._handler = handler
        if self._bus is not None:
            self._bus.brokers.append(self)

    async def close(self) -> None:
        if self._bus is not None and self in self._bus.brokers:
            self._bus.brokers.remove(self)
        self._handler = None

    async def publish(self, topic: str, data: bytes) -> None:
        if self._bus is not None:
            self._bus.deliver(topic, data, sender=self)

    async def subscribe(self, topic: str) -> None:
        self._topics.add(topic)

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)
