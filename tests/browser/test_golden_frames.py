"""The golden frames in tests/golden/ are what a real server sends and accepts.

No browser needed: these run everywhere. The same files drive the JavaScript client's tests
(test_js_client.py), so the server and the browser client are held to one set of examples.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from wshub.testing import TestClient, TestServer

from .golden import Golden, assert_matches, load, mismatches, names


async def send(ws: TestClient, name: str, *, id: str | None = None, **payload: Any) -> None:
    """Send golden client frame ``name``, with ``id`` and payload fields replaced."""
    await ws.send_raw(json.dumps(load(name).instance(id=id, **payload)))


async def authenticate(ws: TestClient, server: TestServer, user: str) -> dict[str, Any]:
    await ws.expect("welcome")
    await send(ws, "client/authenticate", token=server.token(user))
    return await ws.expect("authenticated")


@pytest.mark.parametrize("name", names())
def test_golden_file_is_well_formed(name: str) -> None:
    golden = load(name)
    assert golden.description
    assert isinstance(golden.frame.get("type"), str)
    assert set(golden.frame) <= {"type", "payload", "id", "offset"}
    for path in golden.variable:
        # Every variable path names a value of the frame (a typo would silently loosen it).
        value: Any = golden.frame
        for key in path.split("."):
            assert isinstance(value, dict) and key in value, f"{path} is not in the frame"
            value = value[key]
    assert mismatches(golden, golden.frame) == []


def test_the_rule_compares_keys_types_and_fixed_values() -> None:
    golden = Golden(
        "t", "t", {"type": "x", "payload": {"n": 1, "at": 5, "l": ["a"]}}, ("payload.at",)
    )
    assert mismatches(golden, {"type": "x", "payload": {"n": 1, "at": 9, "l": ["a"]}}) == []
    assert mismatches(golden, {"type": "x", "payload": {"n": 2, "at": 5, "l": ["a"]}}) == [
        "payload.n: expected 1, got 2"
    ]
    assert mismatches(golden, {"type": "x", "payload": {"n": 1, "at": "5", "l": ["a"]}}) == [
        "payload.at: expected number, got '5'"
    ]
    assert mismatches(golden, {"type": "x", "payload": {"n": 1, "at": 5, "l": []}}) == [
        "payload.l: expected 1 items, got []"
    ]
    assert mismatches(golden, {"type": "x", "payload": {"n": 1, "at": 5, "l": ["a"]}, "id": "i"})
    assert mismatches(golden, {"type": "x", "payload": {"n": True, "at": 5, "l": ["a"]}})


async def test_errors_and_ping_before_authentication(server: TestServer) -> None:
    async with server.connect() as ws:
        assert_matches("server/welcome", await ws.recv())
        await send(ws, "client/ping")
        assert_matches("server/pong", await ws.recv())
        await ws.send_raw("not json")
        assert_matches("server/error-invalid_json", await ws.recv())
        await ws.send_raw('{"type": "frobnicate", "id": "x1"}')
        assert_matches("server/error-unknown_type", await ws.recv())
        await send(ws, "client/chat", id="c0")
        assert_matches("server/error-not_authenticated", await ws.recv())
        await ws.send_raw('{"type": "subscribe", "payload": {}, "id": "s0"}')
        assert_matches("server/error-invalid_message", await ws.recv())


async def test_channel_frames_and_resuming_a_channel(server: TestServer) -> None:
    async with server.connect() as ws:
        await ws.expect("welcome")
        await send(ws, "client/authenticate", token=server.token("alice"))
        assert_matches("server/authenticated", await ws.recv())
        await send(ws, "client/publish", id="u0", data=1)
        assert_matches("server/error-forbidden", await ws.recv())
        await send(ws, "client/subscribe")
        epoch = assert_matches("server/subscribed", await ws.recv())["payload"]["epoch"]
        await send(ws, "client/publish")
        assert_matches("server/message", await ws.recv())
        assert_matches("server/published", await ws.recv())
        await send(ws, "client/unsubscribe")
        assert_matches("server/unsubscribed", await ws.recv())

        await send(ws, "client/subscribe-resume", since=0, epoch=epoch)
        assert_matches("server/subscribed-resumed", await ws.recv())
        assert_matches("server/message", await ws.recv())  # replayed


async def test_user_stream_frames_and_resuming_the_user_stream(server: TestServer) -> None:
    async with server.connect() as alice:
        await authenticate(alice, server, "alice")
        await send(alice, "client/chat")
        assert_matches("server/chat_received", await alice.recv())  # bob is offline: queued

    async with server.connect() as bob:
        joined = await authenticate(bob, server, "bob")
        assert joined["payload"]["offset"] == 1
        assert_matches("server/chat", await bob.recv())  # stored, delivered now
        await server.hub.notify_user("bob", "Hi", "there")
        assert_matches("server/notification", await bob.recv())
        await server.hub.broadcast("maintenance at noon")
        assert_matches("server/system_message", await bob.recv())

    async with server.connect() as bob:
        await bob.expect("welcome")
        epoch = joined["payload"]["epoch"]
        await send(bob, "client/authenticate-resume", token=server.token("bob"), epoch=epoch)
        assert_matches("server/authenticated-resumed", await bob.recv())
        assert_matches("server/notification", await bob.recv())  # replayed after since=1


async def test_presence_frames(server: TestServer) -> None:
    async with server.connect() as alice, server.connect() as bob:
        await authenticate(alice, server, "alice")
        await alice.send("subscribe", {"channel": "presence-lobby"})
        await alice.expect("subscribed")
        await alice.expect("presence_join")
        await send(alice, "client/presence")
        assert_matches("server/presence", await alice.recv())

        await authenticate(bob, server, "bob")
        await bob.request("subscribe", {"channel": "presence-lobby"})
        assert_matches("server/presence_join", await alice.recv())
        await bob.request("unsubscribe", {"channel": "presence-lobby"})
        assert_matches("server/presence_leave", await alice.recv())
