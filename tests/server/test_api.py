"""The HTTP API against a real server, with a real HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from wshub.testing import TestServer

from ..conftest import API_KEY


@pytest.fixture
def transport() -> str:
    """This module tests what does not depend on the WebSocket endpoint: one transport is enough."""
    return "native"


@pytest.fixture
async def api(server: TestServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers, timeout=5) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/publish"),
        ("POST", "/api/users/u/send"),
        ("POST", "/api/users/u/notify"),
        ("POST", "/api/broadcast"),
        ("GET", "/api/users/u"),
        ("GET", "/api/channels/presence-x/presence"),
        ("GET", "/api/channels/news/history"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic dGVzdA==", f"bearer{API_KEY}"])
async def test_every_api_route_needs_the_key(
    server: TestServer, method: str, path: str, auth: str | None
) -> None:
    headers = {"Authorization": auth} if auth else {}
    async with httpx.AsyncClient(base_url=server.http, timeout=5) as client:
        r = await client.request(method, path, headers=headers, json={})
    assert r.status_code == 401
    assert r.json()["detail"] == "Missing or invalid API key"


async def test_health_endpoints_need_no_key(server: TestServer) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=5) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "ready"
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200 and "wshub_connections 0.0" in metrics.text
        docs = await client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        spec = (await client.get("/openapi.json")).json()
        assert "/api/publish" in spec["paths"]


async def test_publish_reaches_subscribers_and_returns_the_offset(
    server: TestServer, api: httpx.AsyncClient
) -> None:
    async with server.connect() as ws:
        await ws.expect("welcome")
        await ws.request("subscribe", {"channel": "news"})
        r = await api.post("/api/publish", json={"channel": "news", "data": {"a": 1}})
        assert r.status_code == 200 and r.json() == {"channel": "news", "offset": 1}
        msg = await ws.expect("message")
        assert msg["payload"]["data"] == {"a": 1} and msg["payload"]["from"] is None
    r = await api.get("/api/channels/news/history", params={"since": 0})
    body = r.json()
    assert body["offset"] == 1 and [p["data"] for p in body["publications"]] == [{"a": 1}]


async def test_send_and_notify_store_for_offline_users_and_deliver_live(
    server: TestServer, api: httpx.AsyncClient
) -> None:
    r = await api.post("/api/users/zoe/send", json={"type": "order_update", "payload": {"n": 1}})
    assert r.json() == {"delivered": False, "queued": True, "offset": 1}
    async with server.connect(user="zoe") as ws:
        await ws.expect("welcome")
        await ws.expect("authenticated")
        assert (await ws.expect("order_update"))["payload"] == {"n": 1}
        r = await api.post(
            "/api/users/zoe/notify", json={"title": "T", "message": "M", "type": "warning"}
        )
        assert r.json() == {"delivered": True, "queued": False, "offset": 2}
        note = await ws.expect("notification")
        assert note["payload"] == {"title": "T", "message": "M", "type": "warning"}
        status = (await api.get("/api/users/zoe")).json()
        assert status == {"userId": "zoe", "online": True, "connections": 1}
        r = await api.post("/api/broadcast", json={"message": "hello all"})
        assert r.json() == {"connections": 1}
        assert (await ws.expect("system_message"))["payload"]["message"] == "hello all"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/publish", {"data": 1}, "channel"),
        ("/api/publish", {"channel": "bad name", "data": 1}, "channel"),
        ("/api/users/u/send", {"payload": {}}, "type"),
        ("/api/users/u/send", {"type": "welcome", "payload": {}}, "type"),
        ("/api/users/u/send", {"type": "error"}, "type"),
        ("/api/users/u/notify", {"title": "t", "message": "m", "type": "loud"}, "type"),
        ("/api/users/u/notify", {"message": "m"}, "title"),
        ("/api/broadcast", {"message": ""}, "message"),
    ],
)
async def test_invalid_bodies_get_422_naming_the_field(
    api: httpx.AsyncClient, path: str, body: dict[str, object], field: str
) -> None:
    r = await api.post(path, json=body)
    assert r.status_code == 422
    assert any(field in err["loc"] for err in r.json()["detail"])


async def test_non_json_body_is_422_not_500(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/api/publish", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422


async def test_the_ws_path_answers_plain_http_with_426(server: TestServer) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.get(server.http + "/ws")
    assert r.status_code == 426 and r.headers["upgrade"] == "websocket"


async def test_history_pages_with_since_and_limit(
    server: TestServer, api: httpx.AsyncClient
) -> None:
    for i in range(5):
        await server.hub.publish("paged", i)
    since, seen = 0, []
    while True:
        page = (
            await api.get("/api/channels/paged/history", params={"since": since, "limit": 2})
        ).json()
        if not page["publications"]:
            break
        seen += [p["data"] for p in page["publications"]]
        since = page["publications"][-1]["offset"]
    assert seen == [0, 1, 2, 3, 4]
    r = await api.get("/api/channels/paged/history", params={"limit": 0})
    assert r.status_code == 422


async def test_metrics_count_messages_by_type_and_handler_latency(server: TestServer) -> None:
    async with server.connect(user="mia") as ws:
        await ws.expect("welcome")
        await ws.expect("authenticated")
        await ws.request("subscribe", {"channel": "m"})
        await ws.request("ping")
        await ws.request("nope")
        await ws.request("publish", {"channel": "m", "data": 1})
        async with httpx.AsyncClient(base_url=server.http, timeout=5) as client:
            text = (await client.get("/metrics")).text
    assert 'wshub_messages_received_total{type="ping"} 1.0' in text
    assert 'wshub_messages_received_total{type="unknown"} 1.0' in text
    assert 'wshub_messages_sent_total{type="message"} 1.0' in text
    assert 'wshub_messages_sent_total{type="error"} 1.0' in text
    # subscribe and publish; the built-in ping is answered without running a handler
    assert "wshub_handler_seconds_count 2.0" in text
    assert "wshub_connections 1.0" in text
    assert "wshub_outbound_queued_bytes" in text


async def test_stats_describe_this_node_for_dashboards(
    server: TestServer, api: httpx.AsyncClient
) -> None:
    async with server.connect(user="sam") as ws, server.connect() as anon:
        await ws.expect("welcome")
        await anon.expect("welcome")
        await ws.request("subscribe", {"channel": "busy"})
        await anon.request("subscribe", {"channel": "busy"})
        await anon.request("subscribe", {"channel": "quiet"})
        stats = (await api.get("/api/stats")).json()
    assert stats["nodeId"] == server.hub.node_id and stats["nodes"] == [server.hub.node_id]
    assert stats["connections"] == 2 and stats["users"] == 1
    assert stats["channels"] == [
        {"channel": "busy", "subscribers": 2},
        {"channel": "quiet", "subscribers": 1},
    ]
    assert stats["messagesIn"]["subscribe"] == 3
    assert stats["counters"]["connections_opened"] == 2
