"""Reconnecting and resuming: dropped connections, server restarts (with and without the store),
close codes, giving up. Every application-visible message must come once, in order."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from wshub.auth.jwt import issue_token
from wshub.client import (
    ChannelMessage,
    ClientClosedError,
    ConnectionLostError,
    ConnectionState,
    Envelope,
    Gap,
    ReconnectPolicy,
    StateChange,
    Subscription,
)
from wshub.factory import create_hub
from wshub.testing import TestServer, run_server

from ..conftest import SECRET, make_settings
from .conftest import TIMEOUT, ClientFactory, Gate, Recorder, ServerProcess


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def drain(sub: Subscription, n: int) -> list[ChannelMessage]:
    return [await sub.get(TIMEOUT) for _ in range(n)]


async def assert_nothing_more(sub: Subscription, publish: object) -> None:
    """Publish a marker: it must be the very next message (no duplicate sneaked in before it)."""
    assert callable(publish)
    await publish("marker")
    assert (await sub.get(TIMEOUT)).data == "marker"


def drop(server: TestServer, user: str, code: int = 1012) -> None:
    sessions = server.hub.sessions_of(user)
    assert sessions, f"{user} has no connection"
    for session in sessions:
        session.close(code, "test drop")


async def test_a_dropped_connection_resumes_channels_and_user_stream_once_in_order(
    server: TestServer, make_client: ClientFactory
) -> None:
    user, channel = uid("amy"), uid("news")
    gate = Gate(server.token(user))
    states: Recorder[StateChange] = Recorder()
    client = make_client(server.url, token_provider=gate, on_state=states)
    inbox = client.user_messages()
    await client.connect()
    sub = await client.subscribe(channel)
    for n in (1, 2):
        await server.hub.publish(channel, n)
    await server.hub.send_to_user(user, "note", {"n": 1})
    assert [m.data for m in await drain(sub, 2)] == [1, 2]
    assert (await inbox.get(TIMEOUT)).offset == 1

    drop(server, user, 1012)
    await gate.wait_held()  # disconnected, and held before reconnecting
    assert not client.connected
    for n in (3, 4, 5):
        await server.hub.publish(channel, n)
    for n in (2, 3):
        await server.hub.send_to_user(user, "note", {"n": n})
    gate.release()

    got = await drain(sub, 3)
    assert [(m.offset, m.data) for m in got] == [(3, 3), (4, 4), (5, 5)]
    notes = [await inbox.get(TIMEOUT) for _ in range(2)]
    assert [(e.offset, e.payload["n"]) for e in notes] == [(2, 2), (3, 3)]
    assert sub.recovered is True and client.user_recovered is True
    reconnecting = await states.until(lambda c: c.state is ConnectionState.RECONNECTING)
    assert reconnecting.code == 1012 and reconnecting.attempt == 1
    await states.until(lambda c: c.state is ConnectionState.CONNECTED)

    async def publish(data: object) -> None:
        await client.publish(channel, data)

    await assert_nothing_more(sub, publish)
    await server.hub.send_to_user(user, "note", {"n": 4})
    assert (await inbox.get(TIMEOUT)).offset == 4


@pytest.mark.parametrize("code", [1001, 1011, 1012, 1013])
async def test_the_client_reconnects_after_closes_that_allow_it(
    server: TestServer, make_client: ClientFactory, code: int
) -> None:
    states: Recorder[StateChange] = Recorder()
    async with make_client(server.url, token=server.token("amy"), on_state=states) as client:
        first = client.connection_id
        drop(server, "amy", code)
        change = await states.until(lambda c: c.state is ConnectionState.RECONNECTING)
        assert change.code == code
        await states.until(lambda c: c.state is ConnectionState.CONNECTED)
        assert client.connection_id != first
        assert await client.ping() > 0


async def test_a_policy_close_ends_the_client_without_reconnecting(
    server: TestServer, make_client: ClientFactory
) -> None:
    async with make_client(server.url, token=server.token("amy")) as client:
        sub = await client.subscribe("news")
        drop(server, "amy", 1008)
        await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        assert client.close_code == 1008
        with pytest.raises(ClientClosedError) as info:
            await sub.get(TIMEOUT)
        assert info.value.code == 1008
        with pytest.raises(ClientClosedError):
            await client.ping()
        assert server.hub.connection_count("amy") == 0


async def test_closing_the_client_sends_1000_and_does_not_reconnect(
    server: TestServer, make_client: ClientFactory
) -> None:
    states: Recorder[StateChange] = Recorder()
    client = make_client(server.url, token=server.token("amy"), on_state=states)
    await client.connect()
    sub = await client.subscribe("news")
    await client.close()
    assert client.close_code == 1000
    assert await server.hub.wait_idle(TIMEOUT)
    with pytest.raises(StopAsyncIteration):
        await sub.get(TIMEOUT)
    kinds = [c.state for c in states.items]
    assert ConnectionState.RECONNECTING not in kinds and kinds[-1] is ConnectionState.CLOSED


async def test_requests_made_while_reconnecting_wait_for_the_connection(
    server: TestServer, make_client: ClientFactory
) -> None:
    channel = uid("wait")
    gate = Gate(server.token("amy"))
    async with make_client(server.url, token_provider=gate) as client:
        sub = await client.subscribe(channel)
        drop(server, "amy")
        await gate.wait_held()
        publishing = asyncio.create_task(client.publish(channel, "queued"))
        await asyncio.sleep(0)  # let it start: it must be waiting, not failing
        assert not publishing.done()
        gate.release()
        assert await asyncio.wait_for(publishing, TIMEOUT) == 1
        assert (await sub.get(TIMEOUT)).data == "queued"


async def test_a_request_in_flight_when_the_connection_drops_raises_connection_lost(
    server: TestServer, make_client: ClientFactory
) -> None:
    from pydantic import BaseModel

    from wshub import Context

    class Empty(BaseModel):
        pass

    arrived = asyncio.Event()

    async def never_answers(ctx: Context, payload: Empty) -> None:
        arrived.set()

    server.hub.router.add("hold", never_answers, model=Empty)
    async with make_client(server.url, token=server.token("amy")) as client:
        request = asyncio.create_task(client.request("hold"))
        await asyncio.wait_for(arrived.wait(), TIMEOUT)
        drop(server, "amy")
        with pytest.raises(ConnectionLostError):
            await asyncio.wait_for(request, TIMEOUT)


async def test_a_restart_that_keeps_the_store_is_resumed_without_a_gap(
    make_client: ClientFactory, transport: str
) -> None:
    """Stop the server and start another on the same port with the same hub (its store kept,
    as a durable store would be); publish while the client is away."""
    hub = create_hub(make_settings(transport=transport))
    user, channel = uid("amy"), uid("news")
    gaps: Recorder[Gap] = Recorder()
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(run_server(hub=hub))
        port = first.port
        gate = Gate(first.token(user))
        client = make_client(first.url, token_provider=gate, on_gap=gaps)
        inbox = client.user_messages()
        await client.connect()
        sub = await client.subscribe(channel)
        await hub.publish(channel, 1)
        await hub.send_to_user(user, "note", {"n": 1})
        assert (await sub.get(TIMEOUT)).data == 1
        assert (await inbox.get(TIMEOUT)).offset == 1
        await stack.aclose()  # the server drains: the client gets 1001

    await gate.wait_held()
    async with run_server(hub=hub, port=port) as second:
        await hub.publish(channel, 2)
        await hub.publish(channel, 3)
        await hub.send_to_user(user, "note", {"n": 2})
        gate.release()
        assert [(m.offset, m.data) for m in await drain(sub, 2)] == [(2, 2), (3, 3)]
        assert [(e.offset, e.payload["n"]) for e in [await inbox.get(TIMEOUT)]] == [(2, 2)]
        assert sub.recovered is True and client.user_recovered is True
        assert gaps.items == []

        async def publish(data: object) -> None:
            await second.hub.publish(channel, data)

        await assert_nothing_more(sub, publish)


async def test_a_restart_that_loses_the_store_reports_gaps_and_delivers_the_new_streams(
    make_client: ClientFactory, transport: str
) -> None:
    user, channel = uid("amy"), uid("news")
    gaps: Recorder[Gap] = Recorder()
    async with run_server(make_settings(transport=transport)) as first:
        port = first.port
        gate = Gate(first.token(user))
        client = make_client(first.url, token_provider=gate, on_gap=gaps)
        inbox = client.user_messages()
        await client.connect()
        sub = await client.subscribe(channel)
        for n in (1, 2, 3):
            await first.hub.publish(channel, n)
        await first.hub.send_to_user(user, "note", {"n": 1})
        assert len(await drain(sub, 3)) == 3
        await inbox.get(TIMEOUT)
        old_epoch = sub.position.epoch if sub.position else None

    await gate.wait_held()
    async with run_server(make_settings(transport=transport), port=port) as second:  # new store
        await second.hub.publish(channel, "new-1")  # offset 1 of the new epoch
        await second.hub.send_to_user(user, "note", {"n": "new"})
        gate.release()
        msg = await sub.get(TIMEOUT)
        assert (msg.offset, msg.data) == (1, "new-1")  # not taken for a duplicate of offset 1
        env = await inbox.get(TIMEOUT)
        assert (env.offset, env.payload["n"]) == (1, "new")
        assert sub.recovered is False and client.user_recovered is False
        found = {(await gaps.next()).stream, (await gaps.next()).stream}
        assert found == {"channel", "user"}
        gap = next(g for g in gaps.items if g.stream == "channel")
        assert gap.name == channel and gap.since == 3 and gap.epoch == old_epoch
        assert gap.epoch_changed and gap.offset == 1
        await second.hub.publish(channel, "new-2")
        assert (await sub.get(TIMEOUT)).offset == 2


async def test_the_client_gives_up_after_max_attempts(make_client: ClientFactory) -> None:
    states: Recorder[StateChange] = Recorder()
    async with run_server(make_settings()) as server:
        client = make_client(
            server.url,
            token=server.token("amy"),
            reconnect=ReconnectPolicy(min_delay=0.01, max_delay=0.02, max_attempts=2),
            on_state=states,
        )
        await client.connect()
        sub = await client.subscribe("news")
        inbox = client.user_messages()
    # Nothing listens on the port any more: two refused attempts, then the client ends.
    await asyncio.wait_for(client.wait_closed(), TIMEOUT)
    with pytest.raises(ClientClosedError) as info:
        await sub.get(TIMEOUT)
    assert "gave up" in str(info.value) and info.value.code == 1001
    with pytest.raises(ClientClosedError):
        await inbox.get(TIMEOUT)
    attempts = [c.attempt for c in states.items if c.state is ConnectionState.RECONNECTING]
    assert attempts == [1, 2]


async def test_reconnect_false_never_reconnects(
    server: TestServer, make_client: ClientFactory
) -> None:
    async with make_client(server.url, token=server.token("amy"), reconnect=False) as client:
        drop(server, "amy", 1012)
        await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        assert client.close_code == 1012


async def test_a_stored_user_position_resumes_in_a_new_client(
    server: TestServer, make_client: ClientFactory
) -> None:
    user = uid("amy")
    for n in (1, 2, 3):
        await server.hub.send_to_user(user, "note", {"n": n})
    first = make_client(server.url, token=server.token(user))
    inbox = first.user_messages()
    await first.connect()
    assert [(await inbox.get(TIMEOUT)).offset for _ in range(3)] == [1, 2, 3]
    await first.close()
    await server.hub.send_to_user(user, "note", {"n": 4})
    position = first.user_position
    assert position is not None and position.offset == 3

    seen: Recorder[Envelope] = Recorder()
    second = make_client(server.url, token=server.token(user), user_position=position)
    second.on("note", seen)
    await second.connect()
    assert (await seen.next()).offset == 4
    assert second.user_recovered is True


@pytest.mark.parametrize("how", ["kill", "terminate"])
async def test_the_client_outlives_a_server_process_that_dies_or_stops(
    make_client: ClientFactory, tmp_path: Path, how: str
) -> None:
    """A real ``wshub serve`` process: SIGKILL (the client sees 1006) or SIGTERM (1001); then a
    new process on the same port. Its memory store is new: a gap, then the new streams."""
    first = ServerProcess(tmp_path)
    try:
        await asyncio.to_thread(first.wait_ready)
        states: Recorder[StateChange] = Recorder()
        gaps: Recorder[Gap] = Recorder()
        token = issue_token("amy", SECRET)
        client = make_client(first.url, token=token, on_state=states, on_gap=gaps)
        await client.connect()
        sub = await client.subscribe("news")
        await client.publish("news", "before")
        assert (await sub.get(TIMEOUT)).data == "before"
        getattr(first.proc, how)()
        change = await states.until(lambda c: c.state is ConnectionState.RECONNECTING)
        assert change.code == (1006 if how == "kill" else 1001)
    finally:
        await asyncio.to_thread(first.stop)
    second = ServerProcess(tmp_path, port=first.port)
    try:
        await asyncio.to_thread(second.wait_ready)
        await states.until(lambda c: c.state is ConnectionState.CONNECTED)
        assert {(await gaps.next()).stream, (await gaps.next()).stream} == {"channel", "user"}
        assert await client.publish("news", "after") == 1
        msg = await sub.get(TIMEOUT)
        assert (msg.offset, msg.data) == (1, "after")
    finally:
        await asyncio.to_thread(second.stop)
