"""What the Redis store, broker and presence do on a Redis Cluster and behind Sentinel beyond the
shared contracts (which run on both: the ``cluster`` and ``sentinel`` parameters): sharded Pub/Sub
in the slot of the stream, a slot that moves to another shard, ``WS_REDIS_MIN_REPLICAS``, and the
URLs. Failovers under serving nodes: tests/cluster/test_redis_ha.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.crc import key_slot

from wshub.brokers.redis import RedisBroker
from wshub.config import Settings
from wshub.errors import BackendUnavailable, ConfigError
from wshub.factory import create_store
from wshub.interfaces import Append, Retention
from wshub.presence.redis import RedisPresence
from wshub.redis_support import describe, parse_redis_url, redis_kind
from wshub.stores.redis import RedisStore

from ..redis_server import RedisCluster, RedisSentinel
from .conftest import eventually

KEEP = Retention(size=None, ttl=None)


async def test_a_channel_is_published_on_the_shard_of_its_stream_and_follows_its_slot(
    redis_cluster_server: RedisCluster,
) -> None:
    cluster = redis_cluster_server
    cluster.flush()
    url = cluster.url
    store = RedisStore(url)
    publisher, subscriber = RedisBroker(url), RedisBroker(url)
    presence = RedisPresence(url)
    received: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    resynced = asyncio.Event()
    await store.start()
    await publisher.start(lambda topic, data: None)
    await subscriber.start(lambda topic, data: received.put_nowait((topic, data)), resynced.set)
    await presence.start("n1")
    try:
        assert store.publish_with(publisher)
        await subscriber.subscribe("c:news")
        channel = subscriber.channel("c:news")
        assert channel == b"wshub:{c:news}"
        slot = key_slot(channel)
        assert {key_slot(k.encode()) for k in store.keys("c:news")} == {slot}
        owner = cluster.owner_of(slot)[0].port

        def subscribers_per_shard() -> dict[int, int]:
            counts = {}
            for node in cluster.nodes:
                with node.client() as c:
                    reply = c.execute_command("PUBSUB", "SHARDNUMSUB", channel)
                    counts[node.port] = int(reply[1])
            return counts

        counts = await asyncio.to_thread(subscribers_per_shard)
        assert counts[owner] == 1 and sum(counts.values()) == 1
        # the append script SPUBLISHes in the stream's slot, with the offset
        (pos,) = await store.append_batch([Append("c:news", b"one", KEEP, "c:news")])
        assert await asyncio.wait_for(received.get(), 5) == ("c:news", b"1:one")
        await publisher.publish("c:news", b"direct")
        assert await asyncio.wait_for(received.get(), 5) == ("c:news", b"direct")
        # presence: every key in one slot, whatever the user or channel
        await presence.connect("alice", "c1")
        await presence.join("presence-room", "alice", "c1")
        assert await presence.members("presence-room") == ["alice"]

        # The slot moves to another master: Redis unsubscribes the channel there, the broker
        # subscribes again on the new owner and resyncs; the store follows the keys (MOVED).
        target = next(n for n in cluster.nodes if n.port != owner)
        other = target.port
        await asyncio.to_thread(cluster.move_slot, slot, target)
        await asyncio.wait_for(resynced.wait(), 10)

        async def moved() -> bool:
            counts = await asyncio.to_thread(subscribers_per_shard)
            return counts[other] == 1 and sum(counts.values()) == 1

        await eventually(moved, 5, "the channel is subscribed on its new shard")
        (again,) = await store.append_batch([Append("c:news", b"two", KEEP, "c:news")])
        assert not isinstance(again, Exception) and not isinstance(pos, Exception)
        assert (again.offset, again.epoch) == (2, pos.epoch)
        assert await asyncio.wait_for(received.get(), 5) == ("c:news", b"2:two")
        messages, _ = await store.read("c:news", 0)
        assert [m.data for m in messages] == [b"one", b"two"]
    finally:
        await presence.close()
        await subscriber.close()
        await publisher.close()
        await store.close()


# -- URLs and WS_REDIS_MIN_REPLICAS --------------------------------------------------------------


def test_sentinel_and_cluster_urls_are_parsed_and_checked() -> None:
    url = parse_redis_url("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2/mymaster/2?prefix=app")
    assert url.prefix == "app" and redis_kind(url.url) == "sentinel"
    assert describe(url.url) == "sentinel 10.0.0.1:26379,10.0.0.2:26379/mymaster/2"
    assert "pw" not in describe(url.url)
    url = parse_redis_url("rediss+cluster://a:7000,[::1]:7001/0?node_ttl=5")
    assert (url.node_ttl, redis_kind(url.url)) == (5.0, "cluster")
    assert describe(url.url) == "cluster a:7000,::1:7001"
    for bad, says in [
        ("redis+sentinel://h:26379", "service name"),
        ("redis+sentinel://h:26379/", "service name"),
        ("redis+cluster://h:7000/1", "database 0 only"),
        ("redis+cluster://h:port/0", "not a port"),
        ("redis+cluster://,h:7000/0", "host is missing"),
    ]:
        with pytest.raises(ValueError, match=says):
            parse_redis_url(bad)
    with pytest.raises(ConfigError, match=r"WS_STORE_URL: .*not supported with redis\+cluster"):
        create_store("redis+cluster://127.0.0.1:7000/0", redis_min_replicas=1)
    settings = Settings(_env_file=None, store_url="redis+sentinel://h/s/0")  # type: ignore[call-arg]
    assert settings.redis_min_replicas == 0


async def test_min_replicas_acknowledges_only_what_enough_replicas_have(
    redis_sentinel_server: RedisSentinel,
) -> None:
    """The session's Sentinel setup has one replica: WAIT 1 confirms, WAIT 2 cannot."""
    redis_sentinel_server.flush()
    one, two = (RedisStore(redis_sentinel_server.url, min_replicas=n) for n in (1, 2))
    await one.start()
    await two.start()
    try:
        assert (await one.append("c:x", b"a", KEEP)).offset == 1
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match="only 1 of the 2 replica"):
            await two.append("c:x", b"b", KEEP)
        assert time.monotonic() - start < 1.5  # WAIT's timeout is under the socket timeout
        # applied on the master (and published, had it a broker) but not acknowledged
        messages, _ = await one.read("c:x", 0)
        assert [m.data for m in messages] == [b"a", b"b"]
    finally:
        await one.close()
        await two.close()
