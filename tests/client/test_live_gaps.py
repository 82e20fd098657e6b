"""Gaps on a live connection: a stream whose offsets jump (a frame the client never got) is
resumed on the same connection from the last offset without a gap; what came after the gap is
held back until the replay filled it, so the application still sees every message once, in
order, and ``on_gap`` hears of the jump.

Two kinds of server: a real wshub behind a proxy that drops one frame (the way a lost frame
looks to the client), and a small scripted WebSocket server speaking the wshub protocol for the
few frames a case needs (a replay that says ``recovered: false``, a replay with a hole)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve

from wshub.client import ChannelMessage, Envelope, Gap, Subscription
from wshub.testing import TestServer

from .conftest import TIMEOUT, ClientFactory, Recorder
from .frameproxy import FrameDroppingProxy, drop_once

Handler = Callable[[ServerConnection], Awaitable[None]]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def offsets(sub: Subscription, n: int) -> list[int]:
    return [(await sub.get(TIMEOUT)).offset for _ in range(n)]


# -- a scripted server -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[tuple[str, list[BaseException]]]:
    """A WebSocket server on 127.0.0.1 running ``handler`` for each connection; yields its URL
    and the handler's failures (a test asserts there are none)."""
    failures: list[BaseException] = []

    async def run(ws: ServerConnection) -> None:
        try:
            await handler(ws)
        except Exception as exc:
            failures.append(exc)
            raise

    async with serve(run, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws", failures


class Peer:
    """The server's side of one scripted connection."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def send(
        self, type_: str, payload: dict[str, Any], *, id: Any = None, offset: int | None = None
    ) -> None:
        msg: dict[str, Any] = {"type": type_, "payload": payload}
        if id is not None:
            msg["id"] = id
        if offset is not None:
            msg["offset"] = offset
        await self.ws.send(orjson.dumps(msg).decode())

    async def recv(self, type_: str) -> dict[str, Any]:
        msg: dict[str, Any] = orjson.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
        assert msg["type"] == type_, msg
        return msg

    async def welcome(self) -> None:
        await self.send(
            "welcome",
            {
                "connectionId": "c1",
                "userId": None,
                "heartbeatInterval": 30000,
                "serverTime": 0,
                "protocol": 1,
            },
        )

    async def message(self, channel: str, offset: int) -> None:
        payload = {"channel": channel, "data": offset, "offset": offset, "timestamp": 0}
        await self.send("message", {**payload, "from": None})

    async def pong(self) -> None:
        ping = await self.recv("ping")
        await self.send("pong", {"timestamp": 0}, id=ping["id"])


async def channel_with_a_jump(peer: Peer, resumes: list[dict[str, Any]], replay: str) -> None:
    """Channel x: 1, 2, 5 live; the resume with since=2 answered per ``replay``; then 6 live."""
    await peer.welcome()
    sub = await peer.recv("subscribe")
    assert "since" not in sub["payload"]
    await peer.send("subscribed", {"channel": "x", "offset": 0, "epoch": "e1"}, id=sub["id"])
    for offset in (1, 2, 5):
        await peer.message("x", offset)
    resume = await peer.recv("subscribe")
    resumes.append(resume["payload"])
    recovered = replay != "trimmed"
    reply = {"channel": "x", "offset": 5, "epoch": "e1", "recovered": recovered}
    await peer.send("subscribed", reply, id=resume["id"])
    replayed = {"full": (3, 4, 5), "trimmed": (4, 5), "hole": (3, 5)}[replay]
    for offset in replayed:
        await peer.message("x", offset)
    await peer.pong()
    await peer.message("x", 6)
    await peer.ws.wait_closed()


async def test_a_jump_on_a_live_channel_is_filled_by_a_resume_and_delivered_in_order(
    make_client: ClientFactory,
) -> None:
    resumes: list[dict[str, Any]] = []
    gaps: Recorder[Gap] = Recorder()
    async with scripted(lambda ws: channel_with_a_jump(Peer(ws), resumes, "full")) as (url, bad):
        client = make_client(url, on_gap=gaps)
        await client.connect()
        sub = await client.subscribe("x")
        assert await offsets(sub, 6) == [1, 2, 3, 4, 5, 6]  # 5 held back, its replay dropped
        assert resumes == [{"channel": "x", "since": 2, "epoch": "e1"}]
        assert gaps.items == [Gap("channel", "x", 2, "e1", 5, "e1", (3, 4), lost=False)]
        assert sub.recovered is True
        assert sub.position is not None and sub.position.offset == 6
        await client.close()
    assert not bad


async def test_a_fill_the_server_cannot_recover_is_reported_lost_and_the_rest_delivered(
    make_client: ClientFactory,
) -> None:
    resumes: list[dict[str, Any]] = []
    gaps: Recorder[Gap] = Recorder()
    script = lambda ws: channel_with_a_jump(Peer(ws), resumes, "trimmed")  # noqa: E731
    async with scripted(script) as (url, bad):
        client = make_client(url, on_gap=gaps)
        await client.connect()
        sub = await client.subscribe("x")
        assert await offsets(sub, 5) == [1, 2, 4, 5, 6]  # 3 is gone; 4 came by the replay
        await gaps.next()
        lost = await gaps.next()
        assert [g.lost for g in gaps.items] == [False, True]
        assert (lost.stream, lost.name, lost.since, lost.missing) == ("channel", "x", 2, (3, 4))
        assert sub.recovered is False
        await client.close()
    assert not bad


async def test_a_replay_with_a_hole_of_its_own_is_reported_lost_without_a_second_resume(
    make_client: ClientFactory,
) -> None:
    resumes: list[dict[str, Any]] = []
    gaps: Recorder[Gap] = Recorder()
    async with scripted(lambda ws: channel_with_a_jump(Peer(ws), resumes, "hole")) as (url, bad):
        client = make_client(url, on_gap=gaps)
        await client.connect()
        sub = await client.subscribe("x")
        assert await offsets(sub, 5) == [1, 2, 3, 5, 6]
        assert len(resumes) == 1
        await gaps.next()
        lost = await gaps.next()
        assert (lost.lost, lost.since, lost.missing) == (True, 3, (4, 4))
        assert sub.recovered is False
        await client.close()
    assert not bad


async def test_a_jump_in_the_user_stream_authenticates_again_with_since(
    make_client: ClientFactory,
) -> None:
    auths: list[dict[str, Any]] = []

    async def script(ws: ServerConnection) -> None:
        peer = Peer(ws)
        await peer.welcome()
        auth = await peer.recv("authenticate")
        auths.append(auth["payload"])
        joined = {"userId": "u", "connectionId": "c1", "offset": 0, "epoch": "u1"}
        await peer.send("authenticated", joined, id=auth["id"])
        chat = {"messageId": "m", "from": "v", "message": "hi", "timestamp": 0}
        await peer.send("chat", chat, offset=1)
        await peer.send("chat", chat, offset=3)
        again = await peer.recv("authenticate")
        auths.append(again["payload"])
        reply = {**joined, "offset": 3, "recovered": True, "refreshed": True}
        await peer.send("authenticated", reply, id=again["id"])
        for offset in (2, 3):
            await peer.send("chat", chat, offset=offset)
        await peer.pong()
        await peer.send("notification", {"title": "t", "message": "m", "type": "info"}, offset=4)
        await ws.wait_closed()

    calls = 0

    def token() -> str:
        nonlocal calls
        calls += 1
        return f"token-{calls}"

    gaps: Recorder[Gap] = Recorder()
    async with scripted(script) as (url, bad):
        client = make_client(url, token=token, on_gap=gaps)
        inbox = client.user_messages()
        await client.connect()
        got = [await inbox.get(TIMEOUT) for _ in range(4)]
        assert [(e.type, e.offset) for e in got] == [
            ("chat", 1),
            ("chat", 2),
            ("chat", 3),
            ("notification", 4),
        ]
        assert auths == [{"token": "token-1"}, {"token": "token-2", "since": 1, "epoch": "u1"}]
        assert gaps.items == [Gap("user", "u", 1, "u1", 3, "u1", (2, 2), lost=False)]
        assert client.user_recovered is True
        await client.close()
    assert not bad


# -- a real server, one frame lost on the way --------------------------------------------------


def is_message(channel: str, offset: int) -> Callable[[dict[str, Any]], bool]:
    return lambda env: (
        env.get("type") == "message"
        and env["payload"].get("channel") == channel
        and env["payload"].get("offset") == offset
    )


async def test_a_frame_lost_on_a_real_connection_is_replayed_in_order(
    server: TestServer, make_client: ClientFactory
) -> None:
    channel = uid("news")
    gaps: Recorder[Gap] = Recorder()
    received: Recorder[ChannelMessage] = Recorder()
    async with FrameDroppingProxy(server.port, drop_once(is_message(channel, 3))) as proxy:
        client = make_client(proxy.url(), token=server.token(uid("amy")), on_gap=gaps)
        await client.connect()
        sub = await client.subscribe(channel, received)
        for n in range(1, 6):
            await server.hub.publish(channel, f"m{n}")
        for _ in range(5):
            await received.next()
        assert [(m.offset, m.data) for m in received.items] == [(n, f"m{n}") for n in range(1, 6)]
        assert len(proxy.dropped) == 1
        gap = await gaps.next()
        assert (gap.stream, gap.name, gap.since, gap.missing, gap.lost) == (
            "channel",
            channel,
            2,
            (3, 3),
            False,
        )
        assert sub.recovered is True
        await server.hub.publish(channel, "marker")  # the very next one: nothing duplicated
        assert (await received.next()).data == "marker"
        assert len(gaps.items) == 1


async def test_a_user_stream_frame_lost_on_a_real_connection_is_replayed_in_order(
    server: TestServer, make_client: ClientFactory
) -> None:
    user = uid("bob")
    gaps: Recorder[Gap] = Recorder()

    def lost_note(env: dict[str, Any]) -> bool:
        return env.get("type") == "notification" and env.get("offset") == 2

    async with FrameDroppingProxy(server.port, drop_once(lost_note)) as proxy:
        client = make_client(proxy.url(), token=lambda: server.token(user), on_gap=gaps)
        inbox = client.user_messages()
        await client.connect()
        for n in range(1, 4):
            await server.hub.notify_user(user, f"n{n}", "body")
        got: list[Envelope] = [await inbox.get(TIMEOUT) for _ in range(3)]
        assert [(e.offset, e.payload["title"]) for e in got] == [(1, "n1"), (2, "n2"), (3, "n3")]
        assert len(proxy.dropped) == 1
        gap = await gaps.next()
        assert (gap.stream, gap.name, gap.since, gap.missing, gap.lost) == (
            "user",
            user,
            1,
            (2, 2),
            False,
        )
        assert client.user_recovered is True
        await server.hub.notify_user(user, "marker", "body")
        assert (await inbox.get(TIMEOUT)).payload["title"] == "marker"
