"""The SDK against a real server: requests and replies, subscriptions, chat, the user stream,
and errors raised as typed exceptions."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pydantic import BaseModel

from wshub import Context
from wshub.client import (
    AuthenticationError,
    ChannelMessage,
    ClientClosedError,
    ConnectionState,
    Envelope,
    ForbiddenError,
    InvalidMessageError,
    NotAuthenticatedError,
    RequestTimeoutError,
    StateChange,
    UnknownTypeError,
)
from wshub.testing import TestServer

from .conftest import TIMEOUT, ClientFactory, Recorder


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_connect_is_welcomed_and_authenticated_with_the_token(
    server: TestServer, make_client: ClientFactory
) -> None:
    states: Recorder[StateChange] = Recorder()
    client = make_client(server.url, token=server.token("amy"), on_state=states)
    await client.connect()
    assert client.connected and client.user_id == "amy"
    assert client.welcome is not None and client.welcome["protocol"] == 1
    assert client.connection_id == client.welcome["connectionId"]
    assert client.user_position is not None and client.user_position.offset == 0
    assert (await states.next()).state is ConnectionState.CONNECTING
    assert (await states.next()).state is ConnectionState.CONNECTED
    await client.close()
    assert (await states.next()).state is ConnectionState.CLOSED
    assert client.closed and not client.connected


async def test_requests_get_the_reply_carrying_their_id(
    server: TestServer, make_client: ClientFactory
) -> None:
    frames: list[str] = []
    async with make_client(server.url, on_frame=frames.append) as client:
        rtt = await client.ping()
        assert 0 < rtt < TIMEOUT
        reply = await client.request("ping")
        assert reply.type == "pong" and reply.id is not None
        assert isinstance(reply.payload["timestamp"], int)
        assert any(f'"id":"{reply.id}"' in f for f in frames)


async def test_subscribe_publish_and_iterate_in_offset_order(
    server: TestServer, make_client: ClientFactory
) -> None:
    channel = uid("news")
    async with (
        make_client(server.url, token=server.token("amy")) as amy,
        make_client(server.url, token=server.token("bob")) as bob,
    ):
        sub_amy = await amy.subscribe(channel)
        sub_bob = await bob.subscribe(channel)
        offsets = [await amy.publish(channel, {"n": n}) for n in range(3)]
        assert offsets == [1, 2, 3]
        for sub in (sub_amy, sub_bob):
            got = [await sub.get(TIMEOUT) for _ in range(3)]
            assert [m.data for m in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert [m.offset for m in got] == offsets
            assert all(m.sender == "amy" and m.channel == channel for m in got)
        assert sub_bob.position is not None and sub_bob.position.offset == 3
        await sub_bob.unsubscribe()
        await amy.publish(channel, "after")
        assert (await sub_amy.get(TIMEOUT)).data == "after"
        with pytest.raises(StopAsyncIteration):
            await sub_bob.get(TIMEOUT)
        assert channel not in bob.subscriptions


async def test_a_subscription_callback_may_await_the_client(
    server: TestServer, make_client: ClientFactory
) -> None:
    channel = uid("echo")
    seen: Recorder[ChannelMessage] = Recorder()
    async with make_client(server.url, token=server.token("amy")) as client:

        async def echo_once(msg: ChannelMessage) -> None:
            seen(msg)
            if msg.data == "ping":
                await client.publish(channel, "pong")  # would deadlock if run by the reader

        await client.subscribe(channel, echo_once)
        await client.publish(channel, "ping")
        assert (await seen.next()).data == "ping"
        assert (await seen.next()).data == "pong"


async def test_subscribing_with_since_replays_the_history_first(
    server: TestServer, make_client: ClientFactory
) -> None:
    channel = uid("hist")
    for n in range(1, 5):
        await server.hub.publish(channel, n)
    async with make_client(server.url) as client:
        sub = await client.subscribe(channel, since=2)
        assert sub.recovered is True
        assert [(await sub.get(TIMEOUT)).data for _ in range(2)] == [3, 4]


async def test_chat_returns_the_receipt_and_reaches_every_connection_of_the_recipient(
    server: TestServer, make_client: ClientFactory
) -> None:
    bob_id = uid("bob")
    amy = make_client(server.url, token=server.token("amy"))
    bob1 = make_client(server.url, token=server.token(bob_id))
    bob2 = make_client(server.url, token=server.token(bob_id))
    on_chat: Recorder[Envelope] = Recorder()
    bob1.on("chat", on_chat)
    stream = bob2.user_messages()
    for c in (amy, bob1, bob2):
        await c.connect()
    receipt = await amy.chat(bob_id, "hi there")
    assert receipt["recipientId"] == bob_id
    assert receipt["delivered"] is True and receipt["queued"] is False
    got1 = await on_chat.next()
    got2 = await stream.get(TIMEOUT)
    for env in (got1, got2):
        assert env.type == "chat" and env.offset == 1
        assert env.payload["from"] == "amy" and env.payload["message"] == "hi there"
        assert env.payload["messageId"] == receipt["messageId"]
    assert bob2.user_position is not None and bob2.user_position.offset == 1


async def test_messages_waiting_for_an_offline_user_arrive_at_connect(
    server: TestServer, make_client: ClientFactory
) -> None:
    carol = uid("carol")
    async with make_client(server.url, token=server.token("amy")) as amy:
        receipt = await amy.chat(carol, "while you were out")
        assert receipt["delivered"] is False and receipt["queued"] is True
    await server.hub.notify_user(carol, "Build", "green", "success")
    client = make_client(server.url, token=server.token(carol))
    stream = client.user_messages()
    await client.connect()
    first, second = await stream.get(TIMEOUT), await stream.get(TIMEOUT)
    assert (first.type, first.offset, first.payload["message"]) == ("chat", 1, "while you were out")
    assert (second.type, second.offset, second.payload["title"]) == ("notification", 2, "Build")


async def test_unsolicited_messages_reach_on_callbacks(
    server: TestServer, make_client: ClientFactory
) -> None:
    everything: Recorder[Envelope] = Recorder()
    system: Recorder[Envelope] = Recorder()
    async with make_client(server.url) as client:
        client.on("*", everything)
        client.on("system_message", system)
        await server.hub.broadcast("maintenance at noon")
        assert (await system.next()).payload["message"] == "maintenance at noon"
        assert (await everything.next()).type == "system_message"
        client.off("system_message", system)


@pytest.mark.parametrize(
    ("call", "exc", "code"),
    [
        ("publish_unsubscribed", ForbiddenError, "forbidden"),
        ("chat_anonymous", NotAuthenticatedError, "not_authenticated"),
        ("private_channel", ForbiddenError, "forbidden"),
        ("bad_channel", InvalidMessageError, "invalid_message"),
        ("unknown_type", UnknownTypeError, "unknown_type"),
    ],
)
async def test_error_replies_raise_typed_exceptions_with_code_and_message(
    server: TestServer, make_client: ClientFactory, call: str, exc: type[Exception], code: str
) -> None:
    token = None if call == "chat_anonymous" else server.token("amy")
    async with make_client(server.url, token=token) as client:
        with pytest.raises(exc) as info:
            if call == "publish_unsubscribed":
                await client.publish("news", 1)
            elif call == "chat_anonymous":
                await client.chat("bob", "hi")
            elif call == "private_channel":
                await client.subscribe("private-secret")
            elif call == "bad_channel":
                await client.subscribe("has spaces")
            else:
                await client.request("frobnicate")
        err = info.value
        assert err.code == code  # type: ignore[attr-defined]
        if call == "unknown_type":
            assert err.message == "Unknown message type: frobnicate"  # type: ignore[attr-defined]
        assert await client.ping() > 0  # the connection is still usable
        assert "private-secret" not in client.subscriptions


@pytest.mark.parametrize("token_in_url", [False, True])
async def test_a_refused_token_fails_connect_with_authentication_error(
    server: TestServer, make_client: ClientFactory, token_in_url: bool
) -> None:
    client = make_client(server.url, token="not-a-jwt", token_in_url=token_in_url)
    with pytest.raises(AuthenticationError) as info:
        await client.connect()
    assert info.value.code == "auth_failed"
    assert client.closed
    with pytest.raises(ClientClosedError):
        await client.ping()


async def test_the_token_can_go_in_the_handshake(
    server: TestServer, make_client: ClientFactory
) -> None:
    user = uid("dora")
    await server.hub.send_to_user(user, "invoice", {"n": 1})
    client = make_client(server.url, token=server.token(user), token_in_url=True)
    stream = client.user_messages()
    await client.connect()
    assert client.user_id == user
    env = await stream.get(TIMEOUT)
    assert (env.type, env.offset, env.payload) == ("invoice", 1, {"n": 1})


class _Silent(BaseModel):
    pass


async def test_a_request_without_reply_times_out(
    server: TestServer, make_client: ClientFactory
) -> None:
    @server.hub.on("silent")
    async def silent(ctx: Context, payload: _Silent) -> None:
        return None

    async with make_client(server.url) as client:
        with pytest.raises(RequestTimeoutError):
            await client.request("silent", timeout=0.2)
        assert await client.ping() > 0


async def test_a_token_provider_is_called_per_connection(
    server: TestServer, make_client: ClientFactory
) -> None:
    calls: list[int] = []

    async def provider() -> str:
        calls.append(1)
        await asyncio.sleep(0)
        return server.token("erin")

    async with make_client(server.url, token_provider=provider) as client:
        assert client.user_id == "erin" and calls == [1]


async def test_requests_before_connect_and_after_close_raise_client_closed(
    server: TestServer, make_client: ClientFactory
) -> None:
    client = make_client(server.url)
    with pytest.raises(ClientClosedError):
        await client.ping()
    await client.connect()
    await client.subscribe("dup")
    with pytest.raises(ValueError):
        await client.subscribe("dup")
    await client.close()
    with pytest.raises(ClientClosedError):
        await client.publish("x", 1)
