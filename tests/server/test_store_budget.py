"""What a connection can make the hub store is bounded (WS_STORE_RATE / WS_STORE_BURST): an
authenticated client chatting large messages to invented recipients under the message rate
limit used to write 1.1 MiB/s of SQLite each, kept for the inbox's 7 days."""

from __future__ import annotations

from ..conftest import ServerFactory


async def test_messages_past_the_store_budget_are_refused_and_not_stored(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(store_rate=1000, store_burst=4096) as server:
        async with server.connect(user="mallory") as mallory, server.connect() as bystander:
            await mallory.expect("welcome")
            await mallory.expect("authenticated")
            await bystander.expect("welcome")
            big = "x" * 1500
            answers = [
                await mallory.request("chat", {"recipientId": f"nobody-{n}", "message": big})
                for n in range(4)
            ]
            kinds = [a["type"] for a in answers]
            assert kinds[:2] == ["chat_received", "chat_received"]
            assert kinds[2:] == ["error", "error"]
            assert answers[2]["payload"]["code"] == "rate_limited"
            assert "1000 bytes per second" in answers[2]["payload"]["message"]
            await mallory.request("subscribe", {"channel": "news"})
            refused = await mallory.request("publish", {"channel": "news", "data": big})
            assert refused["payload"]["code"] == "rate_limited"
            assert (await mallory.request("ping"))["type"] == "pong"  # still connected
            assert (await bystander.request("ping"))["type"] == "pong"  # nobody else noticed
        history, pos = await server.hub.history("news")
        assert history == [] and pos.offset == 0
        for n in (2, 3):  # the refused chats were never stored
            assert (await server.hub.store.position(f"u:nobody-{n}")).offset == 0
        assert (await server.hub.store.position("u:nobody-1")).offset == 1
