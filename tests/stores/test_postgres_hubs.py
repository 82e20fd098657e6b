"""Two hubs in this process on one PostgreSQL (store, broker and presence): a publication on one
reaches a subscriber on the other in offset order, and a hub that restarts keeps the history it
acknowledged."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from wshub.brokers.postgres import PostgresBroker
from wshub.factory import create_hub
from wshub.testing import TestClient, TestServer, run_server

from ..conftest import API_KEY, make_settings
from ..contracts.conftest import eventually
from ..postgres_server import (
    PostgresDatabase,
    fresh_postgres,  # noqa: F401  (fixture)
    postgres_database,  # noqa: F401  (fixture)
)


def payload(msg: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = msg["payload"]
    return result


@contextlib.asynccontextmanager
async def client(server: TestServer, user: str) -> AsyncIterator[TestClient]:
    """A connection authenticated in the handshake, ``welcome`` and ``authenticated`` read."""
    async with server.connect(user=user) as ws:
        await ws.expect("welcome")
        await ws.expect("authenticated")
        yield ws


def node(url: str) -> contextlib.AbstractAsyncContextManager[TestServer]:
    settings = make_settings(store_url=url, broker_url=url, history_size=100, node_ttl=2)
    return run_server(settings, hub=create_hub(settings))


async def test_two_hubs_on_one_postgres_deliver_in_order_and_keep_history(
    fresh_postgres: Callable[[], str],  # noqa: F811  (the fixture imported above)
) -> None:
    url = fresh_postgres()
    async with node(url) as a:
        async with node(url) as b, client(b, "reader") as reader:
            first = payload(await reader.request("subscribe", {"channel": "news"}))
            assert first["offset"] == 0
            async with client(a, "writer") as writer:
                await writer.request("subscribe", {"channel": "news"})
                for i in range(1, 21):
                    message = {"channel": "news", "data": {"n": i}}
                    reply = await writer.request("publish", message)
                    assert payload(reply) == {"channel": "news", "offset": i}
            api = httpx.AsyncClient(base_url=b.http, headers={"Authorization": f"Bearer {API_KEY}"})
            async with api:
                r = await api.post("/api/publish", json={"channel": "news", "data": {"n": 21}})
                assert r.json()["offset"] == 21
            got = [payload(await reader.expect("message")) for _ in range(21)]
            assert [(m["offset"], m["data"]) for m in got] == [(i, {"n": i}) for i in range(1, 22)]
    # both hubs are gone; a new one on the same database has every acknowledged publication
    async with node(url) as again, client(again, "late") as late:
        request = {"channel": "news", "since": 0, "epoch": first["epoch"]}
        sub = payload(await late.request("subscribe", request))
        assert sub["recovered"] is True and sub["offset"] == 21
        replay = [payload(await late.expect("message")) for _ in range(21)]
        assert [(m["offset"], m["data"]) for m in replay] == [(i, {"n": i}) for i in range(1, 22)]


async def test_publications_missed_while_the_listening_connection_was_down_are_read_back(
    fresh_postgres: Callable[[], str],  # noqa: F811  (the fixture imported above)
    postgres_database: PostgresDatabase,  # noqa: F811  (the fixture imported above)
) -> None:
    """NOTIFY is lost for a node whose LISTEN connection is gone; when it is back, the hub's
    resync reads the channel from the store, and its subscriber gets everything in order."""
    url = fresh_postgres()
    settings = make_settings(store_url=url, broker_url=url, history_size=100, node_ttl=2)
    slow = PostgresBroker(url, reconnect_delay=(0.3, 0.3))  # back after 0.15-0.3 s
    async with node(url) as a, run_server(settings, hub=create_hub(settings, broker=slow)) as b:
        async with client(b, "reader") as reader, client(a, "writer") as writer:
            await reader.request("subscribe", {"channel": "feed"})
            await writer.request("subscribe", {"channel": "feed"})
            await writer.request("publish", {"channel": "feed", "data": 1})
            assert payload(await reader.expect("message"))["offset"] == 1
            pid = slow.listener_pid
            await postgres_database.execute(f"SELECT pg_terminate_backend({pid})")

            async def down() -> bool:
                return not slow.connected

            await eventually(down, 3, "the node notices its listening connection is gone")
            for i in (2, 3, 4):  # committed while b listens to nothing
                await writer.request("publish", {"channel": "feed", "data": i})
            got = [payload(await reader.expect("message")) for _ in range(3)]
            assert [(m["offset"], m["data"]) for m in got] == [(2, 2), (3, 3), (4, 4)]
            assert slow.connected and slow.listener_pid != pid
