"""A connection follows its credentials (protocol 1.1), through a real server: a callable token
is asked again on ``token_expiring`` and the connection refreshed in place; a connection closed
with 4001 (token expired) reconnects with a fresh token and resumes; 4002 (disconnected by the
server) does not reconnect unless the policy says so."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import orjson
import pytest

from wshub.auth.jwt import issue_token
from wshub.client import (
    AuthenticationError,
    ChannelMessage,
    ClientClosedError,
    ConnectionState,
    StateChange,
)
from wshub.client.backoff import ReconnectPolicy
from wshub.testing import TestServer, run_server

from ..conftest import SECRET, make_settings
from .conftest import TIMEOUT, ClientFactory, Recorder


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def short_token(user: str, seconds: int = 2) -> str:
    """A token that expires within ``seconds`` (JWT ``exp`` is in whole seconds)."""
    return issue_token(user, SECRET, ttl=seconds)


@pytest.fixture
async def server(transport: str) -> AsyncIterator[TestServer]:
    # No leeway: a token is expired at its exp, as the deadline that closes with 4001.
    async with run_server(make_settings(transport=transport, jwt_leeway=0)) as s:
        yield s


class Frames:
    """``on_frame``: every received frame, parsed; ``await frames.until(type)``."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def __call__(self, raw: str) -> None:
        self.items.append(orjson.loads(raw))
        self._changed.set()

    async def until(self, type_: str, **payload: Any) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            while True:
                for frame in self.items:
                    if frame["type"] == type_ and all(
                        frame.get("payload", {}).get(k) == v for k, v in payload.items()
                    ):
                        return frame
                self._changed.clear()
                await self._changed.wait()


async def test_token_expiring_asks_the_callable_again_and_refreshes_the_connection(
    server: TestServer, make_client: ClientFactory
) -> None:
    user, channel = uid("amy"), uid("news")
    tokens = [short_token(user), server.token(user)]  # the second one lasts an hour
    calls: list[float] = []

    async def token() -> str:  # an async callable
        calls.append(time.time())
        return tokens[min(len(calls), len(tokens)) - 1]

    frames = Frames()
    states: Recorder[StateChange] = Recorder()
    sent: list[dict[str, Any]] = []
    client = make_client(
        server.url,
        token=token,
        on_frame=frames,
        on_state=states,
        on_send=lambda raw: sent.append(orjson.loads(raw)),
    )
    await client.connect()
    received: Recorder[ChannelMessage] = Recorder()
    await client.subscribe(channel, received)

    await frames.until("token_expiring")  # less than the window left: sent at once
    refreshed = await frames.until("authenticated", refreshed=True)
    assert len(calls) == 2
    refresh = next(m for m in sent if m.get("id") == refreshed["id"])
    assert refresh["payload"] == {"token": tokens[1]}  # no since: nothing is replayed

    # Past the first token's exp the connection is still the same one, still subscribed.
    exp = jwt.decode(tokens[0], options={"verify_signature": False})["exp"]
    # An absence has no event to await: wait out the second in which the server would close.
    await asyncio.sleep(max(0.0, exp + 1.2 - time.time()))
    assert client.connected and client.state is ConnectionState.CONNECTED
    assert [s.state for s in states.items] == [
        ConnectionState.CONNECTING,
        ConnectionState.CONNECTED,
    ]
    await server.hub.publish(channel, "still here")
    assert (await received.next()).data == "still here"


async def test_a_close_with_4001_reconnects_with_a_fresh_token_and_resumes(
    server: TestServer, make_client: ClientFactory
) -> None:
    user, channel = uid("bob"), uid("news")
    held = asyncio.Event()
    release = asyncio.Event()
    calls = 0
    fresh: list[str] = []

    async def token() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            return short_token(user)
        if calls == 2:
            return "not-a-token"  # the refresh fails: the server will close with 4001
        held.set()
        await release.wait()  # reconnecting: let the test publish while the client is away
        fresh.append(server.token(user))
        return fresh[-1]

    states: Recorder[StateChange] = Recorder()
    sent: list[dict[str, Any]] = []
    client = make_client(
        server.url,
        token=token,
        on_state=states,
        on_send=lambda raw: sent.append(orjson.loads(raw)),
    )
    await client.connect()
    received: Recorder[ChannelMessage] = Recorder()
    await client.subscribe(channel, received)
    await server.hub.publish(channel, "before")
    assert (await received.next()).data == "before"

    reconnecting = await states.until(lambda s: s.state is ConnectionState.RECONNECTING, 6)
    assert reconnecting.code == 4001
    await asyncio.wait_for(held.wait(), TIMEOUT)
    await server.hub.publish(channel, "while away")
    await server.hub.notify_user(user, "missed", "while away")
    release.set()
    await states.until(lambda s: s.state is ConnectionState.CONNECTED)

    assert (await received.next()).data == "while away"
    auths = [m["payload"] for m in sent if m["type"] == "authenticate"]
    assert [a["token"] for a in auths[1:]] == ["not-a-token", fresh[0]]
    assert auths[-1]["since"] == 0  # the user stream resumes exactly (nothing seen yet)
    resub = [m["payload"] for m in sent if m["type"] == "subscribe"][-1]
    assert resub["since"] == 1
    await server.hub.publish(channel, "marker")
    assert (await received.next()).data == "marker"


async def test_a_close_with_4002_ends_the_client_unless_the_policy_reconnects(
    server: TestServer, make_client: ClientFactory
) -> None:
    user = uid("cyd")
    client = make_client(server.url, token=server.token(user))
    await client.connect()
    assert await server.hub.disconnect_user(user, "disconnected by the application") == 1
    await asyncio.wait_for(client.wait_closed(), TIMEOUT)
    assert isinstance(client.error, ClientClosedError)
    assert (client.close_code, client.close_reason) == (4002, "disconnected by the application")

    states: Recorder[StateChange] = Recorder()
    policy = ReconnectPolicy(min_delay=0.01, max_delay=0.05, reconnect_on_disconnect=True)
    again = make_client(server.url, token=server.token(user), reconnect=policy, on_state=states)
    await again.connect()
    first = again.connection_id
    await server.hub.disconnect_user(user, "disconnected by the application")
    change = await states.until(lambda s: s.state is ConnectionState.RECONNECTING)
    assert change.code == 4002
    await states.until(lambda s: s.state is ConnectionState.CONNECTED)
    assert again.connection_id != first

    # A revocation: the reconnection's token is refused, and the client closes with that error.
    await server.hub.disconnect_user(user, "revoked", revoke=True)
    await asyncio.wait_for(again.wait_closed(), TIMEOUT)
    assert isinstance(again.error, AuthenticationError)


def test_the_reconnect_policy_for_the_credential_close_codes() -> None:
    default = ReconnectPolicy()
    assert default.should_reconnect(4001)
    assert not default.should_reconnect(4002)
    assert ReconnectPolicy(reconnect_on_disconnect=True).should_reconnect(4002)
