"""What the Redis store, broker and presence promise beyond the shared contracts: key layout,
epochs after data loss, Redis going away and coming back, durability (nodes that die: in
test_presence_contract.py).

Each test that stops Redis runs its own throwaway redis-server. Waiting for another process
(a dead node's timeout, Redis coming back) is a bounded poll of a real operation: there is no
event to await.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from wshub.brokers.redis import RedisBroker
from wshub.errors import BackendUnavailable
from wshub.interfaces import Append, Retention
from wshub.presence.redis import RedisPresence
from wshub.redis_support import parse_redis_url
from wshub.stores.redis import RedisStore

from ..redis_server import RedisServer, persistent_redis
from .conftest import eventually

KEEP = Retention(size=None, ttl=None)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, persisting every write (appendfsync always)."""
    with persistent_redis(tmp_path / "redis") as server:
        yield server


# -- store -------------------------------------------------------------------------------------


async def test_a_streams_keys_share_one_cluster_slot_and_the_prefix(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix="app1")
    await store.start()
    try:
        for stream in ("c:news", "u:alice", "u:we{ird}name", "c:a:b"):
            await store.append(stream, b"x", Retention(size=10, ttl=60))
            meta, msgs = store.keys(stream)
            assert meta.startswith("app1:") and msgs.startswith("app1:")
            assert key_slot(meta.encode()) == key_slot(msgs.encode())
    finally:
        await store.close()


async def test_two_nodes_appending_at_once_never_share_an_offset(redis_url: str) -> None:
    a, b = RedisStore(redis_url), RedisStore(redis_url)
    await a.start()
    await b.start()
    try:
        positions = await asyncio.gather(
            *(s.append("c:busy", b"%d" % i, KEEP) for i in range(150) for s in (a, b))
        )
        assert sorted(p.offset for p in positions) == list(range(1, 301))
        assert {p.epoch for p in positions} == {(await b.position("c:busy")).epoch}
    finally:
        await a.close()
        await b.close()


async def test_appends_publish_in_offset_order_in_the_same_step(redis_url: str) -> None:
    """With a broker on the same Redis, the append script publishes ``<offset>:<data>``: two
    nodes appending to one stream at once, a third node receives every offset once, in order
    (Redis runs each script whole, so publish order is offset order)."""
    received: list[tuple[str, bytes]] = []
    got_all = asyncio.Event()

    def handler(topic: str, data: bytes) -> None:
        received.append((topic, data))
        if len(received) == 200:
            got_all.set()

    nodes = [(RedisStore(redis_url), RedisBroker(redis_url)) for _ in range(2)]
    listener = RedisBroker(redis_url)
    await listener.start(handler)
    await listener.subscribe("c:race")
    try:
        for store, broker in nodes:
            await store.start()
            await broker.start(lambda topic, data: None)
            assert store.publish_with(broker) is True
        assert RedisStore(redis_url).publish_with(RedisBroker(redis_url + "1")) is False
        batches = [
            store.append_batch([Append("c:race", b"%d" % i, KEEP, "c:race") for i in range(50)])
            for _ in range(2)
            for store, _ in nodes
        ]
        results = [r for batch in await asyncio.gather(*batches) for r in batch]
        assert sorted(r.offset for r in results if not isinstance(r, Exception)) == list(
            range(1, 201)
        )
        await asyncio.wait_for(got_all.wait(), 5)
        offsets = [int(data.split(b":", 1)[0]) for _, data in received]
        assert offsets == list(range(1, 201))
        assert {topic for topic, _ in received} == {"c:race"}
    finally:
        await listener.close()
        for store, broker in nodes:
            await broker.close()
            await store.close()


async def test_a_stream_that_redis_lost_gets_a_new_epoch(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(redis_url)
    await store.start()
    try:
        before = await store.append("c:x", b"1", KEEP)
        redis_server.flush()
        after = await store.position("c:x")
        assert after.offset == 0 and after.epoch != before.epoch
        assert (await store.append("c:x", b"2", KEEP)).epoch == after.epoch
    finally:
        await store.close()


async def test_streams_only_looked_at_expire_and_written_ones_stay(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(redis_url, unwritten_ttl=600)
    await store.start()
    try:
        await store.position("c:random-name")
        await store.append("c:used", b"x", Retention(size=None, ttl=30))
        with redis_server.client() as r:
            assert 0 < r.ttl(store.keys("c:random-name")[0]) <= 600
            assert r.ttl(store.keys("c:used")[0]) == -1  # the offsets and epoch stay
            assert 0 < r.ttl(store.keys("c:used")[1]) <= 30  # messages go with retention
    finally:
        await store.close()


async def test_a_cursor_never_passes_the_top_of_its_stream(redis_url: str) -> None:
    store = RedisStore(redis_url)
    await store.start()
    try:
        await store.append("u:a", b"x", KEEP)
        await store.advance_cursor("u:a", 5)
        assert await store.cursor("u:a") == 0
        await store.advance_cursor("u:a", 1)
        assert await store.cursor("u:a") == 1
    finally:
        await store.close()


async def test_store_outage_fails_fast_then_recovers_with_acknowledged_data(
    own_redis: RedisServer,
) -> None:
    store = RedisStore(own_redis.url, timeout=1.0)
    await store.start()
    try:
        acked = [await store.append("c:keep", b"%d" % i, KEEP) for i in range(5)]
        own_redis.kill9()  # only what Redis fsynced survives: appendfsync always = all acked
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=rf"Redis store at 127.0.0.1:{own_redis.port}"):
            await store.append("c:keep", b"lost", KEEP)
        assert time.monotonic() - started < 2
        assert await store.healthy() is False
        own_redis.start()  # same port, same directory: the AOF is read back
        await eventually(store.healthy, 10, "the store reconnects by itself")
        messages, pos = await store.read("c:keep", 0)
        assert [m.data for m in messages] == [b"0", b"1", b"2", b"3", b"4"]
        assert pos.epoch == acked[0].epoch
        assert (await store.append("c:keep", b"5", KEEP)).offset == 6
    finally:
        await store.close()


# -- broker ------------------------------------------------------------------------------------


async def test_publish_while_redis_is_down_fails_fast_and_subscriptions_come_back(
    own_redis: RedisServer,
) -> None:
    inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    a = RedisBroker(own_redis.url, timeout=1.0, reconnect_delay=(0.05, 0.5))
    b = RedisBroker(own_redis.url, timeout=1.0, reconnect_delay=(0.05, 0.5))
    await a.start(lambda topic, data: None)
    await b.start(lambda topic, data: inbox.put_nowait((topic, data)))
    try:
        await b.subscribe("c:before")
        await asyncio.gather(*(b.subscribe(f"c:many-{i}") for i in range(2500)))
        own_redis.stop()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="Redis broker at"):
            await a.publish("c:before", b"lost")
        assert time.monotonic() - started < 2
        await asyncio.wait_for(b.subscribe("c:during"), 2)  # recorded, applied on reconnection
        assert await b.healthy() is False
        own_redis.start()

        async def b_receives_again() -> bool:
            await a.publish("c:before", b"probe")
            try:
                await asyncio.wait_for(inbox.get(), 0.2)
            except TimeoutError:
                return False
            return True

        await eventually(b_receives_again, 10, "b is subscribed again")
        await a.publish("c:during", b"1")
        await a.publish("c:before", b"2")
        await a.publish("c:many-2499", b"3")
        got = [await asyncio.wait_for(inbox.get(), 5) for _ in range(3)]
        while got[0][1] == b"probe":  # probes published while b was resubscribing
            got = [*got[1:], await asyncio.wait_for(inbox.get(), 5)]
        assert got == [("c:during", b"1"), ("c:before", b"2"), ("c:many-2499", b"3")]
        assert await b.healthy() is True
    finally:
        await a.close()
        await b.close()


async def test_a_subscriber_connection_that_goes_silent_is_replaced(
    redis_server: RedisServer, redis_url: str
) -> None:
    inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    a = RedisBroker(redis_url)
    b = RedisBroker(redis_url, timeout=0.5, ping_interval=0.2, reconnect_delay=(0.05, 0.2))
    await a.start(lambda topic, data: None)
    await b.start(lambda topic, data: inbox.put_nowait((topic, data)))
    try:
        await b.subscribe("c:x")
        with redis_server.client() as r:
            before = {c["id"] for c in r.client_list(_type="pubsub")}  # a's and b's
            r.client_pause(1000, all=True)  # Redis stops answering: like a half-open TCP link

        def replaced() -> bool:
            with redis_server.client() as r:
                now = {c["id"] for c in r.client_list(_type="pubsub")}
            return len(now) == 2 and len(now - before) == 1  # b's is new, a's is the same

        async def reconnected() -> bool:
            return await asyncio.to_thread(replaced)

        await eventually(reconnected, 5, "b opened a new subscriber connection")
        await a.publish("c:x", b"after")
        assert await asyncio.wait_for(inbox.get(), 5) == ("c:x", b"after")
    finally:
        await a.close()
        await b.close()


async def test_a_node_that_cannot_reach_redis_refuses_to_start(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # never started: nothing listens on its port
    where = f"127.0.0.1:{server.port}"
    with pytest.raises(BackendUnavailable, match=f"Redis store at {where}"):
        await RedisStore(server.url).start()
    with pytest.raises(BackendUnavailable, match=f"Redis presence at {where}"):
        await RedisPresence(server.url).start("n1")
    with pytest.raises(BackendUnavailable, match=f"Redis broker at {where}"):
        await RedisBroker(server.url).start(lambda topic, data: None)


# -- presence ----------------------------------------------------------------------------------


async def test_presence_written_during_an_outage_is_put_right_afterwards(
    own_redis: RedisServer,
) -> None:
    node = RedisPresence(own_redis.url, node_ttl=1.0, timeout=1.0)
    other = RedisPresence(own_redis.url, node_ttl=1.0, timeout=1.0)
    await node.start("n1")
    await other.start("n2")
    try:
        await node.connect("alice", "n1-1")
        own_redis.stop()
        with pytest.raises(BackendUnavailable, match="Redis presence at"):
            await node.disconnect("alice", "n1-1")
        with pytest.raises(BackendUnavailable):
            await node.connect("bob", "n1-2")
        own_redis.start()

        async def put_right() -> bool:
            return (await other.connections("alice"), await other.connections("bob")) == (0, 1)

        await eventually(put_right, 5, "the node rewrote its entries")
    finally:
        await node.close()
        await other.close()


# -- configuration -----------------------------------------------------------------------------


def test_wshub_options_are_taken_out_of_the_url() -> None:
    parsed = parse_redis_url("redis://h:1/2?prefix=app&node_ttl=2.5&health_check_interval=3")
    assert parsed.url == "redis://h:1/2?health_check_interval=3"
    assert (parsed.prefix, parsed.node_ttl) == ("app", 2.5)
    for bad in ("redis://h?node_ttl=0", "redis://h?node_ttl=x", "redis://h?prefix={a}", "x://h"):
        with pytest.raises(ValueError):
            parse_redis_url(bad)


def test_nothing_of_redis_is_imported_without_a_redis_url() -> None:
    code = (
        "import sys; from wshub.config import Settings; from wshub import create_hub;"
        "create_hub(Settings(_env_file=None, store_url='memory://', broker_url='memory://'));"
        "assert not [m for m in sys.modules if m == 'redis' or m.startswith('redis.')], 'redis'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
