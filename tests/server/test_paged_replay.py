"""A resume whose backlog is larger than the connection's outbound limit still succeeds: the
replay goes out as the client takes it, instead of closing it as a slow consumer (1013) on every
attempt, for ever. Real servers, both endpoints."""

from __future__ import annotations

import pytest

from ..conftest import ServerFactory

OUTBOX = 16 * 1024  # bytes a connection may have queued; the backlog below is ~10 times that
COUNT = 1000


@pytest.mark.timeout(60)
async def test_a_channel_backlog_larger_than_the_outbox_is_replayed_whole(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(outbox_max_bytes=OUTBOX, history_size=COUNT * 2) as server:
        for n in range(1, COUNT + 1):
            await server.hub.publish("feed", {"n": n, "pad": "x" * 100})
        async with server.connect() as client:
            await client.expect("welcome")
            reply = await client.request("subscribe", {"channel": "feed", "since": 0})
            assert reply["payload"]["recovered"] is True
            live = server.hub.publish("feed", {"n": COUNT + 1, "pad": ""})  # during the replay
            offsets = [(await client.expect("message"))["payload"]["offset"] for _ in range(COUNT)]
            await live
            offsets.append((await client.expect("message"))["payload"]["offset"])
            assert offsets == list(range(1, COUNT + 2))
            assert (await client.request("ping"))["type"] == "pong"  # still open


@pytest.mark.timeout(60)
async def test_a_user_backlog_larger_than_the_outbox_is_delivered_whole(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(outbox_max_bytes=OUTBOX, inbox_size=COUNT * 2) as server:
        for n in range(1, COUNT + 1):
            await server.hub.send_to_user("dora", "note", {"n": n, "pad": "x" * 100})
        async with server.connect(user="dora") as dora:
            await dora.expect("welcome")
            await dora.expect("authenticated")
            got = [(await dora.expect("note"))["offset"] for _ in range(COUNT)]
            assert got == list(range(1, COUNT + 1))
            assert (await dora.request("ping"))["type"] == "pong"
        # everything was handed over: the next connection gets nothing again
        async with server.connect(user="dora") as again:
            await again.expect("welcome")
            await again.expect("authenticated")
            assert (await again.request("ping"))["type"] == "pong"


async def test_a_message_no_connection_can_carry_is_refused_and_never_stored(
    server_factory: ServerFactory,
) -> None:
    """A 5 MB notification used to be stored and answered ``delivered: true``, then close its
    recipient with 1013 on every delivery, for the inbox's whole ttl: nothing after it arrived."""
    import httpx

    from wshub.errors import MessageTooLarge

    from ..conftest import API_KEY

    async with server_factory(outbox_max_bytes=OUTBOX) as server:
        big = "x" * (OUTBOX + 1)
        with pytest.raises(MessageTooLarge):
            await server.hub.send_to_user("eve", "note", {"text": big})
        with pytest.raises(ValueError):  # what an application catches
            await server.hub.publish("news", big)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
            r = await http.post("/api/users/eve/notify", json={"title": "t", "message": big})
            assert r.status_code == 413
            assert "WS_OUTBOX_MAX_BYTES" in r.json()["detail"]
            ok = await http.post("/api/users/eve/notify", json={"title": "t", "message": "hi"})
            assert ok.status_code == 200 and ok.json()["offset"] == 1  # nothing was stored
        async with server.connect(user="eve") as eve:
            await eve.expect("welcome")
            await eve.expect("authenticated")
            assert (await eve.expect("notification"))["payload"]["message"] == "hi"


@pytest.mark.timeout(60)
async def test_a_backlog_of_more_messages_than_the_outbox_holds_is_replayed_whole(
    server_factory: ServerFactory,
) -> None:
    """The outbox is bounded by count too (WS_OUTBOX_MAX_MESSAGES): small messages, many more
    than it holds, used to close the resume with 1013 before ``subscribed``, every time."""
    async with server_factory(outbox_max_messages=50, history_size=1000) as server:
        for n in range(1, 301):
            await server.hub.publish("tiny", n)
        async with server.connect() as client:
            await client.expect("welcome")
            reply = await client.request("subscribe", {"channel": "tiny", "since": 0})
            assert reply["type"] == "subscribed"
            got = [(await client.expect("message"))["payload"]["offset"] for _ in range(300)]
            assert got == list(range(1, 301))
