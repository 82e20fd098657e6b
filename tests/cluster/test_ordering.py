"""What the hub must do for nodes to behave as one server, whatever the broker's timing: a
subscription is active before the client hears ``subscribed`` / ``authenticated``, and each node
delivers a stream in offset order. In-process hubs on real memory backends, one of them made slow
on purpose (a busy network), so the orderings that Redis produces only under load happen every time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from wshub.brokers.memory import MemoryBroker, MemoryBus
from wshub.core.hub import Hub
from wshub.factory import create_hub
from wshub.interfaces import BrokerHandler
from wshub.presence.memory import MemoryPresence, MemoryPresenceState
from wshub.stores.memory import MemoryStore
from wshub.testing import TestServer, run_server

from ..conftest import make_settings
from .conftest import payload

#: How long the slow broker takes to make a subscription effective: a busy network or Redis.
SUBSCRIBE_LATENCY = 0.3
#: How long one node's publications take to reach the others.
PUBLISH_LATENCY = 0.3


class SlowSubscriptions:
    """A real in-process broker whose subscriptions take effect only after a delay, as when the
    ``SUBSCRIBE`` to Redis is slower than the hub's other calls."""

    def __init__(self, inner: MemoryBroker) -> None:
        self.inner = inner

    async def start(
        self, handler: BrokerHandler, on_resync: Callable[[], None] | None = None
    ) -> None:
        await self.inner.start(handler, on_resync)

    async def close(self) -> None:
        await self.inner.close()

    async def publish(self, topic: str, data: bytes) -> None:
        await self.inner.publish(topic, data)

    async def subscribe(self, topic: str) -> None:
        if topic != "*":
            await asyncio.sleep(SUBSCRIBE_LATENCY)  # simulated latency, not synchronisation
        await self.inner.subscribe(topic)

    async def unsubscribe(self, topic: str) -> None:
        await self.inner.unsubscribe(topic)


class SlowPublications:
    """A real in-process broker whose publications take a while to reach the other nodes, as
    when one node's network or event loop is slow for a moment."""

    def __init__(self, inner: MemoryBroker) -> None:
        self.inner = inner
        self.publishing = asyncio.Event()  # a publication is on its way

    async def start(
        self, handler: BrokerHandler, on_resync: Callable[[], None] | None = None
    ) -> None:
        await self.inner.start(handler, on_resync)

    async def close(self) -> None:
        await self.inner.close()

    async def publish(self, topic: str, data: bytes) -> None:
        self.publishing.set()
        await asyncio.sleep(PUBLISH_LATENCY)  # simulated latency, not synchronisation
        await self.inner.publish(topic, data)

    async def subscribe(self, topic: str) -> None:
        await self.inner.subscribe(topic)

    async def unsubscribe(self, topic: str) -> None:
        await self.inner.unsubscribe(topic)


@contextlib.asynccontextmanager
async def _two_nodes() -> AsyncIterator[tuple[TestServer, TestServer]]:
    bus, store, state = MemoryBus(), MemoryStore(), MemoryPresenceState()
    fast = create_hub(
        make_settings(transport="asgi"),
        store=store,
        broker=MemoryBroker(bus),
        presence=MemoryPresence(state),
    )
    slow = create_hub(
        make_settings(transport="asgi"),
        store=store,
        broker=SlowSubscriptions(MemoryBroker(bus)),
        presence=MemoryPresence(state),
    )
    async with run_server(hub=fast) as a, run_server(hub=slow) as b:
        yield a, b


async def test_a_publication_after_subscribed_reaches_the_subscriber_on_another_node() -> None:
    """The hub waits for the broker subscription (``Hub.subscribe``) before reading the stream's
    position and replying ``subscribed``; otherwise a client told "subscribed" can miss
    publications made on other nodes until the node's Redis ``SUBSCRIBE`` is active."""
    async with _two_nodes() as (a, b), b.connect(user="reader") as reader:
        await reader.expect("welcome")
        await reader.expect("authenticated")
        reply = await reader.request("subscribe", {"channel": "news"})
        assert reply["type"] == "subscribed"
        await a.hub.publish("news", "right after subscribed")
        message = await reader.expect("message", timeout=SUBSCRIBE_LATENCY * 5)
        assert payload(message)["data"] == "right after subscribed"


async def test_a_chat_reported_delivered_reaches_a_user_just_authenticated_elsewhere() -> None:
    """The same for the user's topic in ``Hub.authenticate_session``: otherwise a chat is
    reported ``delivered`` to a user who was told "authenticated", and never arrives."""
    async with _two_nodes() as (a, b), b.connect(user="bob") as bob:
        await bob.expect("welcome")
        await bob.expect("authenticated")
        delivery = await a.hub.send_to_user("bob", "note", {"n": 1})
        assert delivery.delivered is True
        note = await bob.expect("note", timeout=SUBSCRIBE_LATENCY * 5)
        assert note["offset"] == 1


@contextlib.asynccontextmanager
async def _three_nodes() -> AsyncIterator[
    tuple[TestServer, TestServer, TestServer, SlowPublications]
]:
    """Nodes a (its publications are slow to travel), b and c, on one store."""
    bus, store, state = MemoryBus(), MemoryStore(), MemoryPresenceState()

    def hub(broker: object) -> Hub:
        return create_hub(
            make_settings(transport="asgi"),
            store=store,
            broker=broker,
            presence=MemoryPresence(state),
        )

    slow_broker = SlowPublications(MemoryBroker(bus))
    async with (
        run_server(hub=hub(slow_broker)) as a,
        run_server(hub=hub(MemoryBroker(bus))) as b,
        run_server(hub=hub(MemoryBroker(bus))) as c,
    ):
        yield a, b, c, slow_broker


async def test_a_channel_s_publications_reach_other_nodes_in_offset_order() -> None:
    """Offsets come from the shared store, but each node publishes to the broker after its own
    append, so two nodes' publications can cross on the way: a subscriber on a third node would
    get offset 2 before offset 1, and the SDK (wshub.client.streams) would drop 1 as a
    duplicate. Each node must deliver a channel in offset order (filling gaps from the store)."""
    async with _three_nodes() as (a, b, c, slow_broker), c.connect() as reader:
        await reader.expect("welcome")
        await reader.request("subscribe", {"channel": "news"})
        first = asyncio.create_task(a.hub.publish("news", "first"))  # offset 1, slow to travel
        await asyncio.wait_for(slow_broker.publishing.wait(), 2)  # appended, on its way
        assert await b.hub.publish("news", "second") == 2
        assert await first == 1
        assert await a.hub.publish("news", "third") == 3
        got = [payload(await reader.expect("message", timeout=2)) for _ in range(3)]
        assert [(m["offset"], m["data"]) for m in got] == [
            (1, "first"),
            (2, "second"),
            (3, "third"),
        ]


async def test_a_user_s_messages_reach_other_nodes_in_offset_order() -> None:
    """The same for a user's stream: two nodes sending to one user at once. (``Hub.send_to_user``
    and the ``u:`` branch of ``Hub._on_broker_message`` need what ``_deliver_in_order`` does for
    channels, with the user's cursor advanced to the last offset delivered in order.)"""
    async with _three_nodes() as (a, b, c, slow_broker), c.connect(user="bob") as bob:
        await bob.expect("welcome")
        await bob.expect("authenticated")
        first = asyncio.create_task(a.hub.send_to_user("bob", "note", {"n": 1}))
        await asyncio.wait_for(slow_broker.publishing.wait(), 2)  # appended, on its way
        assert (await b.hub.send_to_user("bob", "note", {"n": 2})).offset == 2
        assert (await first).offset == 1
        assert (await a.hub.send_to_user("bob", "note", {"n": 3})).offset == 3
        got = [await bob.expect("note", timeout=2) for _ in range(3)]
        assert [(m["offset"], payload(m)["n"]) for m in got] == [(1, 1), (2, 2), (3, 3)]
