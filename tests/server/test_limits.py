"""Limits that the core enforces: each sends the bad thing to a real server and checks that a
bystander connection does not notice."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from wshub.testing import TestServer

from ..conftest import ServerFactory
from ..rawws import OP_CLOSE, RawWS


async def test_over_the_rate_limit_messages_get_rate_limited_and_are_not_processed(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(rate_limit=1, rate_burst=5) as server:
        async with server.connect() as ws, server.connect() as bystander:
            await ws.expect("welcome")
            await bystander.expect("welcome")
            for i in range(7):
                await ws.send("ping", id=str(i))
            replies = [await ws.recv() for _ in range(7)]
            assert [r["type"] for r in replies] == ["pong"] * 5 + ["error"] * 2
            assert {r["payload"]["code"] for r in replies[5:]} == {"rate_limited"}
            assert [r["id"] for r in replies[5:]] == ["5", "6"]
            assert (await bystander.request("ping"))["type"] == "pong"


async def test_persistent_rate_limit_abuse_closes_with_1008(server_factory: ServerFactory) -> None:
    async with server_factory(rate_limit=1, rate_burst=3) as server:
        async with server.connect() as ws, server.connect() as bystander:
            await ws.expect("welcome")
            await bystander.expect("welcome")
            for _ in range(20):
                try:
                    await ws.send("ping")
                except websockets.ConnectionClosed:
                    break
            code, reason = await ws.closed()
            assert code == 1008 and "rate limit" in reason
            assert (await bystander.request("ping"))["type"] == "pong"


async def test_a_message_over_the_size_limit_closes_with_1009(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(max_message_size=1024) as server:
        async with server.connect() as ws, server.connect() as bystander:
            await ws.expect("welcome")
            await bystander.expect("welcome")
            await ws.send("ping", {"pad": "x" * 900})  # under the limit: fine
            assert (await ws.expect("pong"))["type"] == "pong"
            await ws.send("ping", {"pad": "x" * 2000})
            code, _ = await ws.closed()
            assert code == 1009
            assert (await bystander.request("ping"))["type"] == "pong"


async def test_a_client_that_stops_reading_is_closed_with_1013_and_others_keep_receiving(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(outbox_max_bytes=64 * 1024, outbox_max_messages=100_000) as server:
        stalled = await RawWS.connect(server.host, server.port, rcvbuf=4096)
        stalled.send_text('{"type":"subscribe","payload":{"channel":"firehose"}}')
        async with server.connect() as reader:
            await reader.expect("welcome")
            await reader.request("subscribe", {"channel": "firehose"})
            hub = server.hub
            blob = "x" * 8000
            # The stalled client never reads: the socket buffers fill, then its outbox. The
            # kernel may buffer a few MB on loopback, so allow up to 40 MB before giving up.
            closed_before = hub.stats.overflows
            for i in range(5000):
                await hub.publish("firehose", {"i": i, "blob": blob})
                msg = await reader.expect("message")
                assert msg["payload"]["data"]["i"] == i
                if hub.stats.overflows > closed_before:
                    break
            assert hub.stats.overflows == closed_before + 1
            assert (await reader.request("ping"))["type"] == "pong"
        # What the stalled client finally reads ends with a 1013 close frame.
        while True:
            op, payload = await asyncio.wait_for(stalled.recv_frame(), 5)
            if op == OP_CLOSE:
                assert int.from_bytes(payload[:2], "big") == 1013
                break
        stalled.close()


async def test_require_auth_closes_unauthenticated_connections_after_the_timeout(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(require_auth=True, auth_timeout=300) as server:
        async with server.connect() as anon, server.connect(user="ann") as ann:
            await anon.expect("welcome")
            await ann.expect("welcome")
            reply = await anon.request("subscribe", {"channel": "news"})
            assert reply["payload"]["code"] == "not_authenticated"
            assert (await anon.request("ping"))["type"] == "pong"  # ping is always allowed
            code, reason = await anon.closed(timeout=3)
            assert code == 1008 and "authentication" in reason
            await ann.expect("authenticated")
            assert (await ann.request("ping"))["type"] == "pong"


async def test_require_auth_lets_a_connection_authenticate_with_the_message(
    server_factory: ServerFactory,
) -> None:
    """Browsers cannot set headers: the ``authenticate`` message is how they sign in, and it
    used to be refused with "Authenticate before sending 'authenticate'"."""
    async with server_factory(require_auth=True) as server, server.connect() as client:
        await client.expect("welcome")
        reply = await client.request("authenticate", {"token": server.token("ann")})
        assert reply["type"] == "authenticated"
        assert (await client.request("subscribe", {"channel": "news"}))["type"] == "subscribed"


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("https://app.example", True), ("https://evil.example", False), (None, False)],
)
async def test_origins_outside_the_allow_list_are_refused_with_403(
    server_factory: ServerFactory, origin: str | None, allowed: bool
) -> None:
    async with server_factory(allowed_origins=["https://app.example"]) as server:
        kwargs = {"origin": origin} if origin else {}
        if allowed:
            async with server.connect(**kwargs) as ws:
                await ws.expect("welcome")
        else:
            with pytest.raises(websockets.InvalidStatus) as info:
                async with server.connect(**kwargs):
                    pass
            assert info.value.response.status_code == 403


async def test_subscription_cap_per_connection(server_factory: ServerFactory) -> None:
    async with server_factory(max_subscriptions=2) as server, server.connect() as ws:
        await ws.expect("welcome")
        assert (await ws.request("subscribe", {"channel": "a"}))["type"] == "subscribed"
        assert (await ws.request("subscribe", {"channel": "b"}))["type"] == "subscribed"
        assert (await ws.request("subscribe", {"channel": "a"}))["type"] == "subscribed"
        reply = await ws.request("subscribe", {"channel": "c"})
        assert reply["payload"]["code"] == "forbidden" and "limit" in reply["payload"]["message"]


async def test_a_failing_handler_answers_internal_error_without_details(
    server: TestServer,
) -> None:
    from wshub import Context

    @server.hub.on("explode")
    async def explode(ctx: Context) -> None:
        raise RuntimeError("secret internals")

    async with server.connect() as ws:
        await ws.expect("welcome")
        reply = await ws.request("explode")
        assert reply["payload"] == {"code": "internal_error", "message": "Internal server error"}
        assert (await ws.request("ping"))["type"] == "pong"
