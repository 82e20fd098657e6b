"""Redis behind Sentinel and Redis Cluster, with real engines started by the tests.

- Sentinel: the master is killed (SIGKILL) while two ``wshub serve`` nodes serve; the Sentinel
  promotes a replica, and the nodes follow it without a restart: publishing works again within
  10 s (failing fast meanwhile, ``/readyz`` 503), a subscriber resumes with ``recovered: true``,
  and what was acknowledged before the kill (``WS_REDIS_MIN_REPLICAS=1``: on a replica) is in
  the history after it.
- Cluster: two nodes on a 3-master cluster behave as one hub; a master killed under a store and
  brokers fails over to its replica, and appends and the subscription come back by themselves.
  (Sharded Pub/Sub and slot migration: tests/contracts/test_redis_ha_backends.py.)

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
from wshub.interfaces import Append, Retention
from wshub.stores.redis import RedisStore

from ..procs import ServerProcess
from ..redis_server import (
    RedisSentinel,
    redis_cluster,
    redis_sentinel,
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


async def test_two_nodes_on_a_redis_cluster_behave_as_one_hub(tmp_path: Path) -> None:
    with redis_cluster(tmp_path / "cluster") as cluster:
        async with hub_nodes(tmp_path, 2, cluster.url) as (a, b):
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


async def test_a_cluster_master_that_fails_over_is_followed(tmp_path: Path) -> None:
    """The master of a channel's slot is killed; its replica takes over (cluster-node-timeout
    2 s): appends work again and the broker subscribes on the new master by itself."""
    with redis_cluster(tmp_path / "cluster", replicas=1) as cluster:
        url = cluster.url
        store = RedisStore(url)
        publisher, subscriber = RedisBroker(url), RedisBroker(url)
        received: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        resynced = asyncio.Event()
        await store.start()
        await publisher.start(lambda topic, data: None)
        await subscriber.start(lambda t, d: received.put_nowait((t, d)), resynced.set)
        try:
            assert store.publish_with(publisher)
            await subscriber.subscribe("c:news")
            slot = key_slot(subscriber.channel("c:news"))
            (first,) = await store.append_batch([Append("c:news", b"one", KEEP, "c:news")])
            assert await asyncio.wait_for(received.get(), 5) == ("c:news", b"1:one")
            owner, _ = cluster.owner_of(slot)
            with owner.client() as c:  # the replica has it before the kill
                assert c.execute_command("WAIT", 1, 5000) == 1
            owner.kill9()
            killed = time.monotonic()
            promoted = await asyncio.to_thread(cluster.wait_until_served, slot)
            assert promoted != owner.port

            async def appends() -> bool:
                (r,) = await store.append_batch([Append("c:news", b"two", KEEP, "c:news")])
                if isinstance(r, Exception):
                    raise r
                return True

            await eventually(appends, 10, "appends work again after the failover")
            await asyncio.wait_for(resynced.wait(), 10)
            assert time.monotonic() - killed < 20

            async def delivered() -> bool:
                await publisher.publish("c:news", b"probe")
                try:
                    while (await asyncio.wait_for(received.get(), 0.5))[1] != b"probe":
                        pass
                except TimeoutError:
                    return False
                return True

            await eventually(delivered, 10, "the subscriber hears the channel again")
            messages, position = await store.read("c:news", 0)
            assert not isinstance(first, Exception) and position.epoch == first.epoch
            assert messages[0].data == b"one"
        finally:
            await subscriber.close()
            await publisher.close()
            await store.close()
