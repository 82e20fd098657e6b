"""Order and deduplication in the hub core, with recording connections (no sockets): what a
subscriber sees when publications race its catch-up, on one node and across nodes."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import orjson

from wshub.brokers.memory import MemoryBroker, MemoryBus
from wshub.core.hub import Hub
from wshub.presence.memory import MemoryPresence, MemoryPresenceState
from wshub.protocol import Frame, FrameBatch
from wshub.stores.memory import MemoryStore

from ..conftest import make_settings


class Recorder:
    """A Connection that keeps what it is sent, decoded."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def send(self, frame: Frame) -> bool:
        self.messages.append(orjson.loads(frame.data))
        return True

    def send_batch(self, batch: FrameBatch) -> bool:
        return all(self.send(f) for f in batch.frames)

    def close(self, code: int = 1000, reason: str = "", *, drain: bool = True) -> None:
        pass

    def offsets(self, type_: str = "message") -> list[int]:
        return [m["payload"]["offset"] for m in self.messages if m["type"] == type_]


def make_hub(store: MemoryStore, bus: MemoryBus, state: MemoryPresenceState) -> Hub:
    return Hub(
        make_settings(),
        store=store,
        broker=MemoryBroker(bus),
        presence=MemoryPresence(state),
    )


async def test_a_late_frame_from_another_node_is_not_delivered_twice() -> None:
    store, bus, state = MemoryStore(), MemoryBus(), MemoryPresenceState()
    a, b = make_hub(store, bus, state), make_hub(store, bus, state)
    async with a, b:
        for i in range(3):
            await a.publish("news", i)
        rec = Recorder()
        session = b.open_session(rec)
        await b.subscribe(session, "news", since=0)
        await asyncio.sleep(0)  # the end-of-turn batch flush
        assert rec.offsets() == [1, 2, 3]
        # Offset 3 as another node's broker message arriving only now (a slow network):
        stale = store._streams["c:news"].items[-1]
        body = b'{"type":"message","payload":%s,"offset":3}}' % stale[2][:-1]
        b._on_broker_message("c:news", struct.pack("!Q", 3) + body)
        await a.publish("news", 3)  # a genuinely new one reaches b through the bus
        await asyncio.sleep(0)
        assert rec.offsets() == [1, 2, 3, 4]
        b.close_session(session)


async def test_a_publication_and_a_reply_in_one_turn_keep_their_order() -> None:
    store, bus, state = MemoryStore(), MemoryBus(), MemoryPresenceState()
    hub = make_hub(store, bus, state)
    async with hub:
        rec = Recorder()
        session = hub.open_session(rec)
        await hub.subscribe(session, "news")
        await hub.publish("news", "first")
        session.send("reply", {"after": "first"})
        await hub.publish("news", "second")
        await asyncio.sleep(0)
        assert [m["type"] for m in rec.messages] == ["subscribed", "message", "reply", "message"]
        assert rec.offsets() == [1, 2]
        hub.close_session(session)


async def test_a_subscriber_joining_mid_turn_gets_only_what_follows() -> None:
    store, bus, state = MemoryStore(), MemoryBus(), MemoryPresenceState()
    hub = make_hub(store, bus, state)
    async with hub:
        early, late = Recorder(), Recorder()
        s1 = hub.open_session(early)
        await hub.subscribe(s1, "news")
        await hub.publish("news", 1)  # queued for the end of the turn
        s2 = hub.open_session(late)
        await hub.subscribe(s2, "news")  # joins before the batch went out
        await hub.publish("news", 2)
        await asyncio.sleep(0)
        assert early.offsets() == [1, 2]
        assert late.messages[0]["payload"]["offset"] == 1  # subscribed at offset 1
        assert late.offsets() == [2]
        hub.close_session(s1)
        hub.close_session(s2)
