"""Two hubs in this process on one PostgreSQL (store, broker and presence): a publication on one
reaches a subscriber on the other in offset order, and a hub that restarts keeps the history it
acknowledged."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from wshub.factory import create_hub
from wshub.testing import TestClient, TestServer, run_server

from ..conftest import API_KEY, make_settings
from ..postgres_server import (
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
