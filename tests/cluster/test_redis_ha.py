"""Redis behind Sentinel and Redis Cluster, with real engines started by the tests.

- Sentinel: the master is killed (SIGKILL) while two ``wshub serve`` nodes serve; the Sentinel
  promotes a replica, and the nodes follow it without a restart: publishing works again within
  10 s (failing fast meanwhile, ``/readyz`` 503), a subscriber resumes with ``recovered: true``,
  and what was acknowledged before the kill (``WS_REDIS_MIN_REPLICAS=1``: on a replica) is in
  the history after it.
- Cluster: two nodes on a 3-master cluster behave as one hub; a channel's publications go to the
  one shard that owns the channel's slot (sharded Pub/Sub), in the slot of its stream; when that
  slot moves to another shard, the broker subscribes again there and resyncs.

Waiting for another process (a failover, a node's subscription) is a bounded poll of a real
operation: there is no event to await.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

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

from ..procs import ServerProcess
from ..redis_server import (
    RedisCluster,
    RedisSentinel,
    redis_cluster_server,  # noqa: F401  (fixture)
    redis_sentinel,
    redis_sentinel_server,  # noqa: F401  (fixture)
)
from .conftest import NODE_TTL, Node, eventually, payload

KEEP = Retention(size=None, ttl=None)


@contextlib.asynccontextmanager
async def hub_nodes(tmp_path: Path, n: int, url: str, **settings: str) -> AsyncIterator[list[Node]]:
    """``n`` ``wshub serve`` nodes with store, broker and presence at ``url``."""
    procs = [
        ServerProcess(
            tmp_path, None, store_url=url, broker_url=f"{url}?node_ttl={NODE_TTL}", **settings
        )
        for _ in range(n)
    ]
    nodes = [Node(p) for p in procs]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        yield nodes
    finally:
        for node in nodes:
            await node.api.aclose()
            await node.proc.stop()
        for i, node in enumerate(nodes):  # shown by pytest when the test failed
            print(f"---- node {i} log ----\n{node.log()}")


# -- Sentinel ----------------------------------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[RedisSentinel]:
    with redis_sentinel(tmp_path / "sentinel", replicas=2) as setup:
        yield setup


async def test_a_sentinel_failover_is_followed_without_a_restart(
    tmp_path: Path, sentinel: RedisSentinel
) -> None:
    async with hub_nodes(tmp_path, 2, sentinel.url, redis_min_replicas="1") as (a, b):
        async with a.connect("alice") as alice:
            sub = await alice.request("subscribe", {"channel": "news"})
            epoch = payload(sub)["epoch"]
            for i in (1, 2):  # acknowledged: on the master and on at least one replica
                r = await b.api.post("/api/publish", json={"channel": "news", "data": i})
                assert r.status_code == 200 and r.json()["offset"] == i
                assert payload(await alice.expect("message"))["data"] == i
            assert (await a.api.get("/readyz")).status_code == 200

            old = sentinel.master.port
            sentinel.master.kill9()
            killed = time.monotonic()

            async def not_ready() -> bool:
                return (await a.api.get("/readyz")).status_code == 503

            await eventually(not_ready, 5, "/readyz answers 503 during the switch")
            attempts: list[tuple[int, float]] = []

            async def publishes() -> bool:
                start = time.monotonic()
                r = await b.api.post("/api/publish", json={"channel": "news", "data": "after"})
                attempts.append((r.status_code, time.monotonic() - start))
                if r.status_code != 200:
                    assert r.status_code == 503 and "Redis" in r.json()["detail"]
                return r.status_code == 200

            await eventually(publishes, 10, "publishing works again", every=0.2)
            assert time.monotonic() - killed < 10
            assert all(took < 3 for _, took in attempts), attempts  # failing fast meanwhile
            new = await asyncio.to_thread(sentinel.wait_for_failover, old)
            assert new.port != old

            # Acknowledged before the kill: in the history of the new master, same epoch.
            history = (await a.api.get("/api/channels/news/history")).json()
            assert history["epoch"] == epoch
            assert [p["data"] for p in history["publications"]][:2] == [1, 2]
            assert history["publications"][-1]["data"] == "after"
            last = history["publications"][-1]["offset"]

            # Node a subscribed again by itself: a publication on b reaches alice on a.
            async def a_hears_b() -> bool:
                r = await b.api.post("/api/publish", json={"channel": "probe", "data": "?"})
                return r.status_code == 200

            await alice.request("subscribe", {"channel": "probe"})
            await eventually(a_hears_b, 5, "a probe is published")
            while True:  # alice gets the news published after the failover, then the probe
                msg = payload(await alice.expect("message", 10))
                if msg["channel"] == "probe":
                    break
            assert (await a.api.get("/readyz")).status_code == 200

        # A subscriber that was away resumes with `since`: nothing lost, recovered.
        async with a.connect("bob") as bob:
            sub = await bob.request("subscribe", {"channel": "news", "since": 2, "epoch": epoch})
            assert payload(sub)["recovered"] is True
            offsets = [payload(await bob.expect("message"))["offset"] for _ in range(last - 2)]
            assert offsets == list(range(3, last + 1))


# -- Cluster -----------------------------------------------------------------------------------


async def test_two_nodes_on_a_redis_cluster_behave_as_one_hub(
    tmp_path: Path,
    redis_cluster_server: RedisCluster,  # noqa: F811  (the fixture imported above)
) -> None:
    redis_cluster_server.flush()
    async with hub_nodes(tmp_path, 2, redis_cluster_server.url) as (a, b):
        async with a.connect("alice") as alice, b.connect("bob") as bob:
            await alice.request("subscribe", {"channel": "news"})
            for i in (1, 2, 3):
                r = await b.api.post("/api/publish", json={"channel": "news", "data": i})
                assert r.json()["offset"] == i
                assert payload(await alice.expect("message"))["offset"] == i
            assert (await a.api.get("/api/users/bob")).json()["online"] is True
            reply = await alice.request("chat", {"recipientId": "bob", "message": "hi"})
            assert payload(reply)["delivered"] is True
            assert payload(await bob.expect("chat"))["message"] == "hi"
            assert (await a.api.get("/readyz")).status_code == 200


def _node_of_slot(cluster: RedisCluster, slot: int) -> tuple[int, bytes]:
    """(port, node id) of the master that owns ``slot``."""
    with cluster.nodes[0].client() as c:
        for start, end, (_, port, node_id, *_), *_ in c.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(port), node_id
    raise AssertionError(f"slot {slot} is not covered")


def _move_slot(cluster: RedisCluster, slot: int, to_port: int) -> None:
    """Migrate ``slot`` with its keys to the master on ``to_port`` (as redis-cli reshard does)."""
    from_port, from_id = _node_of_slot(cluster, slot)
    source = next(n for n in cluster.nodes if n.port == from_port)
    target = next(n for n in cluster.nodes if n.port == to_port)
    with source.client() as src, target.client() as dst:
        to_id = dst.execute_command("CLUSTER", "MYID")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", from_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", to_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command(
                "MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys
            )  # fmt: skip
        for node in cluster.nodes:
            with node.client() as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", to_id)


async def test_a_channel_is_published_on_the_shard_of_its_stream_and_follows_its_slot(
    redis_cluster_server: RedisCluster,  # noqa: F811  (the fixture imported above)
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
        owner, _ = _node_of_slot(cluster, slot)

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
        other = next(n.port for n in cluster.nodes if n.port != owner)
        await asyncio.to_thread(_move_slot, cluster, slot, other)
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
    redis_sentinel_server: RedisSentinel,  # noqa: F811  (the fixture imported above)
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
