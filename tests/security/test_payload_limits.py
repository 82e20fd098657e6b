"""Values that JSON allows and the server's own encoder or store does not: data nested deeper than
orjson writes (254 levels; it reads 1024), integers past 64 bits, lone surrogates. Each must be
refused as invalid input (``invalid_message`` / HTTP 422), never crash a handler or a backend.

Found by test_fuzz_dispatch.py (deep data) and by probing the HTTP API and the SQLite store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from wshub.testing import TestServer, run_server

from ..conftest import API_KEY, ServerFactory, make_settings

DEEP = "[" * 300 + "]" * 300  # orjson.loads takes it; orjson.dumps raises "Recursion limit"


async def _publish_raw(server: TestServer, data: str) -> dict[str, object]:
    async with server.connect(user="alice") as ws:
        await ws.expect("welcome")
        await ws.expect("authenticated")
        assert (await ws.request("subscribe", {"channel": "news"}, id="s"))["type"] == "subscribed"
        await ws.send_raw(
            f'{{"type":"publish","id":"p","payload":{{"channel":"news","data":{data}}}}}'
        )
        reply = await ws.recv()
        assert (await ws.request("ping", id="after"))["type"] == "pong"  # still usable
        return reply


async def test_publish_of_data_nested_deeper_than_the_encoder_allows_is_invalid_message(
    server: TestServer,
) -> None:
    reply = await _publish_raw(server, DEEP)
    assert reply["type"] == "error"
    assert reply["payload"]["code"] == "invalid_message"  # type: ignore[index]


async def test_publish_of_integers_past_64_bits_arrives_as_a_number(server: TestServer) -> None:
    """orjson reads integers past 64 bits as floats: publishable, if not exact."""
    reply = await _publish_raw(server, "123456789012345678901234567890")
    assert reply["type"] in ("message", "published")


# -- the SQLite store ------------------------------------------------------------------------


async def test_subscribe_since_past_63_bits_does_not_break_the_sqlite_store(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path}/wshub.db"
    async with server_factory(store_url=db, shutdown_timeout=100) as server:
        async with server.connect() as attacker, server.connect(user="bob") as bystander:
            await attacker.expect("welcome")
            await attacker.send("subscribe", {"channel": "news", "since": 2**63}, id="attack")
            await bystander.expect("welcome")
            await bystander.expect("authenticated")
            async with asyncio.timeout(1):  # waits for good once the store's thread is gone
                subscribed = await bystander.request("subscribe", {"channel": "news"})
                published = await bystander.request("publish", {"channel": "news", "data": 1})
            assert (subscribed["type"], published["type"]) == ("subscribed", "published")
            reply = await attacker.recv()
            assert reply["type"] == "error" and reply["payload"]["code"] == "invalid_message"


# -- the HTTP API ----------------------------------------------------------------------------

UNENCODABLE = {
    "nested 300 deep": DEEP,
    "integer past 64 bits": "18446744073709551616",
    "lone surrogate": '"\\ud800"',
}
ENDPOINTS = {
    "publish": ("/api/publish", '{{"channel":"news","data":{}}}'),
    "send": ("/api/users/bob/send", '{{"type":"custom","payload":{{"v":{}}}}}'),
    "notify": ("/api/users/bob/notify", '{{"title":"t","message":"m","extra":{}}}'),
}


@pytest.fixture
async def api() -> object:
    async with run_server(make_settings()) as server:
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=server.http, headers=headers, timeout=5) as client:
            yield client


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("value", UNENCODABLE)
async def test_the_http_api_refuses_values_it_cannot_encode_with_422(
    api: httpx.AsyncClient, endpoint: str, value: str
) -> None:
    path, template = ENDPOINTS[endpoint]
    response = await api.post(path, content=template.format(UNENCODABLE[value]))
    assert response.status_code == 422


async def test_a_broadcast_with_a_lone_surrogate_is_refused_with_422(
    api: httpx.AsyncClient,
) -> None:
    response = await api.post("/api/broadcast", content='{"message":"\\ud800"}')
    assert response.status_code == 422


async def test_the_http_api_answers_json_nested_past_the_parser_limit_with_4xx(
    api: httpx.AsyncClient,
) -> None:
    deeper = "[" * 5000 + "]" * 5000
    response = await api.post("/api/publish", content=f'{{"channel":"news","data":{deeper}}}')
    assert 400 <= response.status_code < 500
    assert (await api.get("/healthz")).status_code == 200
