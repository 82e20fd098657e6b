"""Redis goes away and comes back: nodes keep their clients, say 503 for what needs Redis, and
recover by themselves; what was acknowledged before is still there (Redis with appendfsync
always, restarted on the same port and directory)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from wshub.testing import TestClient

from .conftest import NODE_TTL, Cluster, ClusterFactory, Node, eventually, payload


async def _redis_answers(node: Node) -> bool:
    """A real operation that needs the store, the broker and presence."""
    r = await node.api.post("/api/users/probe/notify", json={"title": "t", "message": "probe"})
    return r.status_code == 200


async def _next_message(
    client: TestClient, channel: str, timeout: float | None = None
) -> dict[str, Any]:
    """The next publication on ``channel``, skipping late probes of the recovery poll."""
    while True:
        msg = payload(await client.expect("message", timeout))
        if msg["channel"] == channel:
            return msg


async def _outage(cluster: Cluster) -> None:
    cluster.redis.kill9()  # acknowledged writes are on disk already (appendfsync always)


async def test_nodes_keep_their_clients_through_a_redis_outage_and_recover(
    cluster: ClusterFactory,
) -> None:
    c = await cluster(2)
    a, b = c.nodes
    async with contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(a.connect("alice"))
        bob = await stack.enter_async_context(a.connect("bob"))
        carol = await stack.enter_async_context(b.connect("carol"))
        await alice.request("subscribe", {"channel": "news"})
        await alice.request("subscribe", {"channel": "probe"})
        for i in (1, 2, 3):
            r = await b.api.post("/api/publish", json={"channel": "news", "data": i})
            assert r.json()["offset"] == i
            assert payload(await alice.expect("message"))["offset"] == i
        r = await a.api.post("/api/users/zed/notify", json={"title": "t", "message": "queued"})
        assert r.json() == {"delivered": False, "queued": True, "offset": 1}
        epoch = (await a.api.get("/api/channels/news/history")).json()["epoch"]

        await _outage(c)

        # What needs Redis answers 503, saying why, and quickly.
        r = await a.api.post("/api/publish", json={"channel": "news", "data": "x"})
        assert r.status_code == 503 and "Redis" in r.json()["detail"]
        r = await b.api.get("/api/users/alice")
        assert r.status_code == 503 and "Redis" in r.json()["detail"]
        # Clients stay connected, and what is local is still delivered.
        for client in (alice, bob, carol):
            assert (await client.request("ping"))["type"] == "pong"
        r = await a.api.post("/api/broadcast", json={"message": "local only"})
        assert r.status_code == 503  # the other nodes could not be told
        for client in (alice, bob):
            assert payload(await client.expect("system_message"))["message"] == "local only"
        reply = await alice.request("chat", {"recipientId": "bob", "message": "needs the store"})
        assert reply["type"] == "error"
        # An outage longer than node_ttl: every node's heartbeat is stale when Redis returns.
        outage_ends = time.monotonic() + NODE_TTL + 0.5
        while time.monotonic() < outage_ends:  # the clients stay connected all along
            for client in (alice, bob, carol):
                assert (await client.request("ping"))["type"] == "pong"
            await asyncio.sleep(0.2)

        c.redis.start()  # same port, same directory

        async def a_hears_b() -> bool:
            """Node a is subscribed again: a publication on b reaches alice on a."""
            r = await b.api.post("/api/publish", json={"channel": "probe", "data": "?"})
            if r.status_code != 200:
                return False
            try:
                await _next_message(alice, "probe", timeout=0.3)
            except TimeoutError:
                return False
            return True

        took = await eventually(a_hears_b, 10, "node a hears node b again")
        assert took < 5
        assert await _redis_answers(a) and await _redis_answers(b)

        # Acknowledged before the outage: still there, same epoch, offsets go on.
        history = (await a.api.get("/api/channels/news/history")).json()
        assert history["epoch"] == epoch
        assert [p["data"] for p in history["publications"]] == [1, 2, 3]
        r = await b.api.post("/api/publish", json={"channel": "news", "data": 4})
        assert r.json()["offset"] == 4
        # ... and reaches alice on node a: a subscribed to the channel again by itself.
        message = await _next_message(alice, "news")
        assert (message["offset"], message["data"]) == (4, 4)
        async with b.connect("zed") as zed:
            note = await zed.expect("notification")
            assert (note["offset"], payload(note)["message"]) == (1, "queued")

        # Presence is whole again (rewritten by each node).
        async def everyone_online() -> bool:
            users = [(await b.api.get(f"/api/users/{u}")).json() for u in ("alice", "carol")]
            return all(u["online"] for u in users)

        await eventually(everyone_online, 5, "presence rewritten after the outage")
        reply = await carol.request("chat", {"recipientId": "bob", "message": "back"})
        assert payload(reply)["delivered"] is True
        assert payload(await bob.expect("chat"))["message"] == "back"


async def test_readyz_reports_a_redis_outage_and_the_recovery(cluster: ClusterFactory) -> None:
    c = await cluster(1)
    (a,) = c.nodes
    assert (await a.api.get("/readyz")).status_code == 200
    await _outage(c)
    r = await a.api.get("/readyz")
    assert r.status_code == 503
    assert r.json()["backends"] == {"store": False, "broker": False, "presence": False}
    c.redis.start()

    async def ready() -> bool:
        return (await a.api.get("/readyz")).status_code == 200

    await eventually(ready, 10, "/readyz says ready again")
