"""The Broker contract (wshub.interfaces.Broker): several nodes, each with its own broker, against
every implementation (memory brokers on one MemoryBus; Redis brokers on a throwaway redis-server).

Absence is proven by order, never by waiting: a message that must not arrive is followed by one
that must, from the same publisher, and the broker keeps a publisher's order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest

from wshub.brokers.memory import MemoryBroker, MemoryBus
from wshub.interfaces import Broker

from .conftest import REDIS_HA

TIMEOUT = 5


class Node:
    """One broker and what its handler received."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def handle(self, topic: str, data: bytes) -> None:
        self.inbox.put_nowait((topic, data))

    async def receive(self) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.inbox.get(), TIMEOUT)

    def pending(self) -> list[tuple[str, bytes]]:
        out = []
        while not self.inbox.empty():
            out.append(self.inbox.get_nowait())
        return out


AddNode = Callable[[], Awaitable[Node]]


@pytest.fixture(params=["memory", "redis", "postgres", *REDIS_HA])
async def cluster(
    request: pytest.FixtureRequest,
    fresh_redis: Callable[[], str],
    fresh_postgres: Callable[[], str],
    fresh_redis_ha: Callable[[str], str],
) -> AsyncIterator[AddNode]:
    """``await cluster()`` starts one more node of the same cluster."""
    bus = MemoryBus()
    url = fresh_redis() if request.param == "redis" else ""
    url = fresh_redis_ha(request.param) if request.param in REDIS_HA else url
    url = fresh_postgres() if request.param == "postgres" else url
    async with AsyncExitStack() as stack:

        async def add_node() -> Node:
            broker: Broker
            if request.param == "memory":
                broker = MemoryBroker(bus)
            elif request.param == "postgres":
                from wshub.brokers.postgres import PostgresBroker

                broker = PostgresBroker(url)
            else:
                from wshub.brokers.redis import RedisBroker

                broker = RedisBroker(url)
            node = Node(broker)
            await broker.start(node.handle)
            stack.push_async_callback(broker.close)
            return node

        yield add_node


async def test_another_node_subscribed_to_the_topic_receives_the_message(cluster: AddNode) -> None:
    a, b = await cluster(), await cluster()
    await b.broker.subscribe("c:news")
    await a.broker.publish("c:news", b"\x00hello")
    assert await b.receive() == ("c:news", b"\x00hello")


async def test_a_node_does_not_receive_its_own_publications(cluster: AddNode) -> None:
    a, b = await cluster(), await cluster()
    await a.broker.subscribe("c:news")
    await b.broker.subscribe("c:news")
    await a.broker.publish("c:news", b"from a")
    assert await b.receive() == ("c:news", b"from a")
    await b.broker.publish("c:news", b"from b")  # published after a's, so it arrives after it
    assert await a.receive() == ("c:news", b"from b")
    assert a.pending() == [] and b.pending() == []


async def test_a_node_receives_only_the_topics_it_subscribed_to(cluster: AddNode) -> None:
    a, b = await cluster(), await cluster()
    await b.broker.subscribe("c:wanted")
    await a.broker.publish("c:other", b"1")
    await a.broker.publish("u:someone", b"2")
    await a.broker.publish("c:wanted", b"3")
    assert await b.receive() == ("c:wanted", b"3")
    assert b.pending() == []


async def test_after_unsubscribe_a_topic_is_not_received(cluster: AddNode) -> None:
    a, b = await cluster(), await cluster()
    await b.broker.subscribe("c:x")
    await b.broker.subscribe("c:y")
    await b.broker.unsubscribe("c:x")
    await a.broker.publish("c:x", b"gone")
    await a.broker.publish("c:y", b"kept")
    assert await b.receive() == ("c:y", b"kept")
    assert b.pending() == []


async def test_subscribing_twice_still_delivers_once(cluster: AddNode) -> None:
    a, b = await cluster(), await cluster()
    await b.broker.subscribe("c:x")
    await b.broker.subscribe("c:x")
    await a.broker.publish("c:x", b"1")
    await a.broker.publish("c:x", b"2")
    assert [await b.receive(), await b.receive()] == [("c:x", b"1"), ("c:x", b"2")]
    assert b.pending() == []


async def test_the_broadcast_topic_reaches_every_other_node(cluster: AddNode) -> None:
    a, b, c = await cluster(), await cluster(), await cluster()
    await a.broker.publish("*", b"all")
    assert await b.receive() == ("*", b"all")
    assert await c.receive() == ("*", b"all")
    await b.broker.publish("*", b"marker")
    assert await a.receive() == ("*", b"marker")  # and not its own "all" before it
    assert a.pending() == []


async def test_messages_of_one_publisher_arrive_in_publish_order(cluster: AddNode) -> None:
    a, b = await cluster(), await cluster()
    await b.broker.subscribe("c:seq")
    await b.broker.subscribe("u:seq")
    for i in range(50):  # one after the other, alternating topics
        await a.broker.publish("c:seq" if i % 2 else "u:seq", b"%d" % i)
    # concurrent calls: their order is the order they were made in
    await asyncio.gather(*(a.broker.publish("c:seq", b"%d" % i) for i in range(50, 200)))
    received = [(await b.receive())[1] for _ in range(200)]
    assert received == [b"%d" % i for i in range(200)]
