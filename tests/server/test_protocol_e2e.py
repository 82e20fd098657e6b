"""Every row of the protocol the core implements, against a real server and a real client."""

from __future__ import annotations

import pytest

from wshub.testing import TestServer

from ..conftest import SECRET


async def test_welcome_is_the_first_message(server: TestServer) -> None:
    async with server.connect() as ws:
        msg = await ws.expect("welcome")
        p = msg["payload"]
        assert p["userId"] is None and p["protocol"] == 1
        assert p["heartbeatInterval"] == 30000
        assert isinstance(p["connectionId"], str) and isinstance(p["serverTime"], int)


async def test_ping_is_answered_by_pong_echoing_the_id(server: TestServer) -> None:
    async with server.connect() as ws:
        await ws.expect("welcome")
        reply = await ws.request("ping", id="p-1")
        assert reply["type"] == "pong" and isinstance(reply["payload"]["timestamp"], int)
        await ws.send("ping")
        assert "id" not in await ws.expect("pong")


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        ("not json", "invalid_json", "Message is not valid JSON"),
        ("[]", "invalid_message", "Message must be a JSON object"),
        ('{"type":"frobnicate","id":"x"}', "unknown_type", "Unknown message type: frobnicate"),
        ('{"type":"subscribe","payload":{},"id":"x"}', "invalid_message", "payload.channel"),
        ('{"type":"subscribe","payload":{"channel":"a b"}}', "invalid_message", "payload.channel"),
        ('{"type":"publish","payload":{"channel":"news"}}', "not_authenticated", "Authenticate"),
        ('{"type":"chat","payload":{"recipientId":"b","message":"x"}}', "not_authenticated", ""),
        ('{"type":"ping","payload":[1],"id":"x"}', "invalid_message", "payload: must be an object"),
    ],
)
async def test_bad_input_gets_an_error_and_the_connection_stays_usable(
    server: TestServer, raw: str, code: str, message: str
) -> None:
    async with server.connect() as bystander, server.connect() as ws:
        await bystander.expect("welcome")
        await ws.expect("welcome")
        await ws.send_raw(raw)
        err = await ws.expect("error")
        assert err["payload"]["code"] == code
        assert message in err["payload"]["message"]
        if '"id":"x"' in raw:
            assert err["id"] == "x"
        assert (await ws.request("ping"))["type"] == "pong"
        assert (await bystander.request("ping"))["type"] == "pong"


async def test_binary_frames_get_invalid_message_and_the_connection_stays(
    server: TestServer,
) -> None:
    async with server.connect() as ws:
        await ws.expect("welcome")
        await ws.send_raw(b"\x00\x01")
        assert (await ws.expect("error"))["payload"]["code"] == "invalid_message"
        assert (await ws.request("ping"))["type"] == "pong"


async def test_authenticate_message_binds_the_user(server: TestServer) -> None:
    async with server.connect() as ws:
        await ws.expect("welcome")
        reply = await ws.request("authenticate", {"token": server.token("alice")}, id="a")
        assert reply["type"] == "authenticated"
        assert reply["payload"]["userId"] == "alice"
        assert reply["payload"]["offset"] == 0 and reply["payload"]["epoch"]
        assert await server.hub.is_user_connected("alice")


@pytest.mark.parametrize(
    ("make_token", "fragment"),
    [
        (lambda s: s.token("alice", ttl=-120), "expired"),
        (lambda s: "not.a.token", "Invalid token"),
        (lambda s: s.token("alice") + "x", "Invalid token"),
        (
            lambda s: __import__("jwt").encode({"sub": "alice"}, key=None, algorithm="none"),
            "Invalid token",
        ),
        (
            lambda s: __import__("jwt").encode({"sub": "alice"}, "x" * 40, algorithm="HS256"),
            "Invalid token",
        ),
        (
            lambda s: __import__("jwt").encode({"sub": "alice"}, SECRET, algorithm="HS512"),
            "Invalid token",
        ),
        (
            lambda s: __import__("jwt").encode({"x": 1}, SECRET, algorithm="HS256"),
            "Invalid token",
        ),
    ],
    ids=[
        "expired",
        "garbage",
        "bad-signature",
        "alg-none",
        "other-secret",
        "unlisted-alg",
        "no-sub",
    ],
)
async def test_bad_tokens_are_refused_with_auth_failed(
    server: TestServer, make_token: object, fragment: str
) -> None:
    token = make_token(server)  # type: ignore[operator]
    async with server.connect() as ws:
        await ws.expect("welcome")
        reply = await ws.request("authenticate", {"token": token})
        assert reply["type"] == "error" and reply["payload"]["code"] == "auth_failed"
        assert fragment in reply["payload"]["message"]
        assert not await server.hub.is_user_connected("alice")


async def test_handshake_token_in_query_or_header_authenticates_at_once(
    server: TestServer,
) -> None:
    async with server.connect(user="alice") as ws:
        welcome = await ws.expect("welcome")
        assert welcome["payload"]["userId"] == "alice"
        assert (await ws.expect("authenticated"))["payload"]["userId"] == "alice"
    headers = {"Authorization": f"Bearer {server.token('bob')}"}
    async with server.connect(additional_headers=headers) as ws:
        await ws.expect("welcome")
        assert (await ws.expect("authenticated"))["payload"]["userId"] == "bob"


async def test_invalid_handshake_token_is_refused_with_http_401(server: TestServer) -> None:
    import websockets

    with pytest.raises(websockets.InvalidStatus) as info:
        async with server.connect(token="garbage"):
            pass
    assert info.value.response.status_code == 401


async def test_chat_reaches_every_connection_of_the_recipient(server: TestServer) -> None:
    async with (
        server.connect(user="alice") as alice,
        server.connect(user="bob") as bob1,
        server.connect(user="bob") as bob2,
    ):
        for ws in (alice, bob1, bob2):
            await ws.expect("welcome")
            await ws.expect("authenticated")
        reply = await alice.request("chat", {"recipientId": "bob", "message": "hello"}, id="c1")
        assert reply["type"] == "chat_received"
        p = reply["payload"]
        assert p["recipientId"] == "bob" and p["delivered"] is True and p["queued"] is False
        for ws in (bob1, bob2):
            chat = await ws.expect("chat")
            assert chat["payload"]["from"] == "alice"
            assert chat["payload"]["message"] == "hello"
            assert chat["payload"]["messageId"] == p["messageId"]
            assert chat["offset"] == 1


async def test_offline_messages_are_queued_and_delivered_oldest_first_once(
    server: TestServer,
) -> None:
    async with server.connect(user="alice") as alice:
        await alice.expect("welcome")
        await alice.expect("authenticated")
        for text in ("one", "two", "three"):
            reply = await alice.request("chat", {"recipientId": "carol", "message": text})
            assert reply["payload"]["delivered"] is False and reply["payload"]["queued"] is True
    async with server.connect(user="carol") as carol:
        await carol.expect("welcome")
        auth = await carol.expect("authenticated")
        assert auth["payload"]["offset"] == 3
        got = [await carol.expect("chat") for _ in range(3)]
        assert [m["payload"]["message"] for m in got] == ["one", "two", "three"]
        assert [m["offset"] for m in got] == [1, 2, 3]
    # Handed over once: a second connection gets nothing more.
    async with server.connect(user="carol") as carol:
        await carol.expect("welcome")
        await carol.expect("authenticated")
        assert (await carol.request("ping"))["type"] == "pong"


async def test_authenticate_with_since_replays_the_user_stream_after_it(
    server: TestServer,
) -> None:
    hub = server.hub
    for i in range(1, 6):
        await hub.send_to_user("dave", "note", {"n": i})
    async with server.connect() as ws:
        await ws.expect("welcome")
        auth = await ws.request("authenticate", {"token": server.token("dave"), "since": 2})
        assert auth["payload"]["recovered"] is True and auth["payload"]["offset"] == 5
        assert [(await ws.expect("note"))["payload"]["n"] for _ in range(3)] == [3, 4, 5]


async def test_subscribe_publish_message_with_offsets(server: TestServer) -> None:
    async with server.connect(user="alice") as alice, server.connect() as reader:
        await alice.expect("welcome")
        await alice.expect("authenticated")
        await reader.expect("welcome")
        sub = await reader.request("subscribe", {"channel": "news"}, id="s")
        assert sub["type"] == "subscribed"
        assert sub["payload"] == {"channel": "news", "offset": 0, "epoch": sub["payload"]["epoch"]}
        await alice.request("subscribe", {"channel": "news"})
        await alice.send("publish", {"channel": "news", "data": {"headline": "hi"}}, id="p")
        for ws in (reader, alice):
            msg = await ws.expect("message")
            p = msg["payload"]
            assert p["channel"] == "news" and p["data"] == {"headline": "hi"}
            assert p["offset"] == 1 and p["from"] == "alice" and isinstance(p["timestamp"], int)
        published = await alice.expect("published")
        assert published == {
            "type": "published",
            "payload": {"channel": "news", "offset": 1},
            "id": "p",
        }
        unsub = await reader.request("unsubscribe", {"channel": "news"}, id="u")
        assert unsub == {"type": "unsubscribed", "payload": {"channel": "news"}, "id": "u"}
        await alice.request("publish", {"channel": "news", "data": 2})
        # the reader gets nothing more: its next message is the pong
        assert (await reader.request("ping"))["type"] == "pong"


async def test_publish_needs_a_subscription_by_default(server: TestServer) -> None:
    async with server.connect(user="alice") as ws:
        await ws.expect("welcome")
        await ws.expect("authenticated")
        reply = await ws.request("publish", {"channel": "news", "data": 1})
        assert reply["payload"]["code"] == "forbidden"


async def test_subscribe_with_since_replays_history_then_live_in_order(
    server: TestServer,
) -> None:
    for i in range(1, 6):
        await server.hub.publish("feed", i)
    async with server.connect() as ws:
        await ws.expect("welcome")
        sub = await ws.request("subscribe", {"channel": "feed", "since": 3})
        assert sub["payload"]["recovered"] is True and sub["payload"]["offset"] == 5
        await server.hub.publish("feed", 6)
        got = [(await ws.expect("message"))["payload"] for _ in range(3)]
        assert [(m["offset"], m["data"]) for m in got] == [(4, 4), (5, 5), (6, 6)]


async def test_application_api_notify_broadcast_and_status(server: TestServer) -> None:
    hub = server.hub
    async with server.connect(user="erin") as erin, server.connect() as anon:
        await erin.expect("welcome")
        await erin.expect("authenticated")
        await anon.expect("welcome")
        assert await hub.is_user_connected("erin") and not await hub.is_user_connected("x")
        d = await hub.notify_user("erin", "Hi", "You have mail", type="success", link="/m")
        assert d.delivered and not d.queued and d.offset == 1
        note = await erin.expect("notification")
        assert note["payload"] == {
            "link": "/m",
            "title": "Hi",
            "message": "You have mail",
            "type": "success",
        }
        assert note["offset"] == 1
        assert await hub.broadcast("maintenance at noon") == 2
        for ws in (erin, anon):
            sm = await ws.expect("system_message")
            assert sm["payload"]["message"] == "maintenance at noon"
        session = hub.sessions_of("erin")[0]
        assert session.is_open
    assert await hub.wait_idle(5)
    assert not session.is_open
    assert not await hub.is_user_connected("erin")


async def test_a_handshake_authenticated_connection_can_resume_with_since(
    server: TestServer,
) -> None:
    for i in range(1, 4):
        await server.hub.send_to_user("hal", "note", {"n": i})
    async with server.connect(user="hal") as ws:
        await ws.expect("welcome")
        await ws.expect("authenticated")
        assert [(await ws.expect("note"))["payload"]["n"] for _ in range(3)] == [1, 2, 3]
        again = await ws.request("authenticate", {"token": server.token("hal"), "since": 1})
        assert again["payload"]["recovered"] is True and again["payload"]["offset"] == 3
        assert [(await ws.expect("note"))["offset"] for _ in range(2)] == [2, 3]
        refresh = await ws.request("authenticate", {"token": server.token("hal")})
        assert "recovered" not in refresh["payload"]
        assert (await ws.request("ping"))["type"] == "pong"  # nothing replayed on a refresh
