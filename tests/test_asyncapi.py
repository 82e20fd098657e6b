"""The AsyncAPI document is derived from the code and matches what the server really sends."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel

from wshub import Context
from wshub.asyncapi import asyncapi_document
from wshub.protocol import SERVER_MESSAGES
from wshub.testing import TestServer


class Shout(BaseModel):
    """Say something loudly."""

    text: str


class OrderUpdate(BaseModel):
    """An order changed state."""

    orderId: int


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


async def test_document_lists_builtin_and_application_types_and_every_ref_resolves(
    server: TestServer,
) -> None:
    hub = server.hub

    @hub.on("shout", requires_auth=True)
    async def shout(ctx: Context, payload: Shout) -> None:
        """Say something loudly to everyone."""

    hub.describe("order_update", OrderUpdate)
    doc = asyncapi_document(hub)
    assert doc["asyncapi"] == "3.0.0"
    ops = doc["operations"]
    for route in hub.router:
        assert ops[f"receive_{route.type}"]["action"] == "receive"
    for type_ in [*SERVER_MESSAGES, "order_update"]:
        assert ops[f"send_{type_}"]["action"] == "send"
    shout_msg = doc["components"]["messages"]["client.shout"]
    assert "Requires authentication" in shout_msg["summary"]
    assert doc["components"]["schemas"]["Shout"]["required"] == ["text"]
    for ref in _refs(doc):
        assert _resolve(doc, ref) is not None, ref


async def test_served_as_json_and_as_a_readable_page(server: TestServer) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=5) as http:
        doc = (await http.get("/asyncapi.json")).json()
        assert doc["servers"]["hub"]["pathname"] == "/ws"
        page = await http.get("/asyncapi")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "<code>presence_join</code>" in page.text and "client → server" in page.text


async def test_every_frame_the_server_sends_matches_its_documented_model(
    server: TestServer,
) -> None:
    seen: list[dict[str, Any]] = []
    hub = server.hub
    async with server.connect(user="amy") as amy, server.connect() as anon:
        for ws in (amy, anon):
            seen.append(await ws.expect("welcome"))
        seen.append(await amy.expect("authenticated"))
        seen.append(await amy.request("ping"))
        seen.append(await amy.request("subscribe", {"channel": "presence-room"}))
        seen.append(await amy.expect("presence_join"))
        seen.append(await amy.request("presence", {"channel": "presence-room"}))
        await amy.send("publish", {"channel": "presence-room", "data": {"k": [1, None]}}, id="p")
        seen.append(await amy.expect("message"))
        seen.append(await amy.expect("published"))
        await amy.send("chat", {"recipientId": "amy", "message": "to myself"}, id="c")
        seen.append(await amy.expect("chat"))  # delivered before the reply
        seen.append(await amy.expect("chat_received"))
        await hub.notify_user("amy", "T", "M", type="warning")
        seen.append(await amy.expect("notification"))
        await hub.broadcast("hello")
        seen.append(await amy.expect("system_message"))
        seen.append(await amy.request("unsubscribe", {"channel": "presence-room"}))
        seen.append(await anon.request("nope"))
        seen.append(await amy.request("authenticate", {"token": server.token("amy")}))
    # less than WS_TOKEN_REFRESH_WINDOW left: token_expiring at once
    async with server.connect(token=server.token("bo", ttl=20)) as bo:
        await bo.expect("welcome")
        await bo.expect("authenticated")
        seen.append(await bo.expect("token_expiring"))
    assert {m["type"] for m in seen} >= set(SERVER_MESSAGES) - {"presence_leave"}
    for msg in seen:
        model, _ = SERVER_MESSAGES[msg["type"]]
        model.model_validate(msg["payload"])  # extra fields or wrong types fail here
