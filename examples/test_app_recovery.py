"""How an app tests its real-time behaviour and its recovery with the ``wshub`` pytest plugin
(docs/testing.md). Run: ``pytest examples/test_app_recovery.py`` (tests/test_plugin_example.py
does, in a subprocess).

- the app's hub in-process (``wshub_server``, ``wshub_client``), and the whole app on a port;
- a cluster node killed with kill -9 while a client is subscribed: the client (the Python SDK,
  behind the cluster's balancer) resumes on another node and misses nothing;
- Redis stalled (SIGSTOP) and resumed: clients stay connected, the app sees bounded errors, and
  what is published afterwards arrives with no gap in the offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from examples.fastapi_app import OrderIn, app, create_order, hub
from wshub.client import Client, Gap, ReconnectPolicy
from wshub.pytest_plugin import ClientFactory as Connect
from wshub.pytest_plugin import Cluster, ServerFactory
from wshub.testing import TestServer


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15) -> None:
    """Poll a real operation until it holds (for what has no event to await: Redis back)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"not within {timeout} s"
        await asyncio.sleep(0.05)


# -- the app's hub, in-process ---------------------------------------------------------------


async def test_an_order_notifies_the_user_and_the_orders_channel(
    wshub_server: TestServer, wshub_client: Connect
) -> None:
    assert wshub_server.hub is hub  # the app's hub (conftest.py overrides wshub_hub)
    alice = await wshub_client(wshub_server, user="alice")
    staff = await wshub_client(wshub_server, user="staff")
    await staff.request("subscribe", {"channel": "orders"})

    result = await create_order(OrderIn(user_id="alice", item="book"))  # the app's own code

    assert result["notified"] is True
    note = await alice.expect("notification")
    assert note["payload"]["message"] == "Your book is on its way"
    msg = await staff.expect("message")
    assert msg["payload"]["data"] == {"orderId": result["id"], "item": "book"}
    # the app's own message type, through the real protocol
    reply = await alice.request("typing", {"channel": "orders"})
    assert reply["type"] == "typing_sent"


async def test_the_whole_app_on_a_port(
    wshub_server_factory: ServerFactory, wshub_client: Connect
) -> None:
    server = await wshub_server_factory(app=app, hub=hub)  # FastAPI routes and /ws
    alice = await wshub_client(server, user="alice")
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/users/alice/online")).json() == {"online": True}
        r = await http.post("/orders", json={"user_id": "alice", "item": "lamp"})
    assert r.json()["notified"] is True
    assert (await alice.expect("notification"))["payload"]["orderId"] == r.json()["id"]


# -- recovery, on a real cluster -------------------------------------------------------------


async def test_a_client_resumes_on_another_node_without_a_gap(wshub_cluster: Cluster) -> None:
    a, b = wshub_cluster.nodes
    gaps: list[Gap] = []
    policy = ReconnectPolicy(min_delay=0.05, max_delay=0.2)
    token = wshub_cluster.token("dave")
    async with Client(wshub_cluster.url, token=token, reconnect=policy, on_gap=gaps.append) as dave:
        feed = aiter(await dave.subscribe("feed"))  # the balancer put dave on node a
        await b.api.post("/api/publish", json={"channel": "feed", "data": 1})
        first = await asyncio.wait_for(anext(feed), 5)
        assert (first.offset, first.data) == (1, 1)

        await wshub_cluster.kill(a)  # kill -9: dave's connection drops, nothing is flushed
        for i in (2, 3):  # published while dave reconnects
            r = await b.api.post("/api/publish", json={"channel": "feed", "data": i})
            assert r.status_code == 200

        got = [await asyncio.wait_for(anext(feed), 15) for _ in range(2)]
        assert [(m.offset, m.data) for m in got] == [(2, 2), (3, 3)]  # resumed on b, in order
        assert gaps == []

    await wshub_cluster.restart(a)  # same port: the node serves again
    async with wshub_cluster.connect(a, user="erin") as erin:
        assert (await erin.request("ping"))["type"] == "pong"


async def test_clients_ride_out_a_redis_stall(wshub_cluster: Cluster) -> None:
    a, b = wshub_cluster.nodes
    async with contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(wshub_cluster.connect(a, user="alice"))
        await alice.request("subscribe", {"channel": "orders"})
        r = await b.api.post("/api/publish", json={"channel": "orders", "data": "before"})
        assert r.json()["offset"] == 1
        assert (await alice.expect("message"))["payload"]["data"] == "before"

        await wshub_cluster.redis.pause()  # SIGSTOP: connections open, no answers
        r = await b.api.post("/api/publish", json={"channel": "orders", "data": "during"})
        assert r.status_code == 503  # bounded: the app gets an error, not a hang
        assert (await alice.request("ping"))["type"] == "pong"  # still connected
        await wshub_cluster.redis.resume()

        async def published() -> bool:
            r = await b.api.post("/api/publish", json={"channel": "orders", "data": "after"})
            return r.status_code == 200

        await eventually(published)
        # A 503 is not "not done": the paused Redis ran "during" once resumed. Offsets tell the
        # client exactly what it got: 2, 3, ... with no gap, ending with "after".
        received: list[dict[str, Any]] = []
        while not received or received[-1]["data"] != "after":
            received.append((await alice.expect("message"))["payload"])
        assert [m["offset"] for m in received] == list(range(2, 2 + len(received)))
