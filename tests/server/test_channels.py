"""Private and presence channels, publish policy, and application handlers."""

from __future__ import annotations

from pydantic import BaseModel

from wshub import Context, Principal
from wshub.testing import TestServer


async def test_private_channels_need_the_claim_or_the_hook(server: TestServer) -> None:
    hub = server.hub

    @hub.authorize_channel
    async def team_members(principal: Principal | None, channel: str) -> bool:
        return principal is not None and channel == f"private-user-{principal.user_id}"

    granted = server.token("amy", channels=["private-team"])
    async with server.connect(token=granted) as amy, server.connect() as anon:
        await amy.expect("welcome")
        await amy.expect("authenticated")
        await anon.expect("welcome")
        assert (await amy.request("subscribe", {"channel": "private-team"}))["type"] == "subscribed"
        assert (await amy.request("subscribe", {"channel": "private-user-amy"}))["type"] == (
            "subscribed"
        )
        denied = await amy.request("subscribe", {"channel": "private-other"})
        assert denied["payload"]["code"] == "forbidden"
        anon_reply = await anon.request("subscribe", {"channel": "private-team"})
        assert anon_reply["payload"]["code"] == "not_authenticated"
        # Private channels are read-only for clients unless a policy allows publishing.
        reply = await amy.request("publish", {"channel": "private-team", "data": 1})
        assert reply["payload"]["code"] == "forbidden"


async def test_publish_policy_can_be_replaced(server: TestServer) -> None:
    @server.hub.publish_policy
    def anyone_on_open_channels(principal: Principal | None, channel: str) -> bool:
        return channel.startswith("open-")

    async with server.connect() as ws:
        await ws.expect("welcome")
        assert (await ws.request("publish", {"channel": "open-x", "data": 1}))["type"] == (
            "published"
        )
        assert (await ws.request("publish", {"channel": "news", "data": 1}))["payload"][
            "code"
        ] == "forbidden"


async def test_presence_join_leave_and_query_count_each_user_once(server: TestServer) -> None:
    room = "presence-room"
    async with server.connect(user="ann") as ann1, server.connect(user="ann") as ann2:
        for ws in (ann1, ann2):
            await ws.expect("welcome")
            await ws.expect("authenticated")
        await ann1.request("subscribe", {"channel": room})
        join = await ann1.expect("presence_join")
        assert join["payload"] == {"channel": room, "userId": "ann"}
        await ann2.request("subscribe", {"channel": room})  # second connection: no new join
        async with server.connect(user="bob") as bob:
            await bob.expect("welcome")
            await bob.expect("authenticated")
            await bob.request("subscribe", {"channel": room})
            for ws in (ann1, ann2, bob):
                assert (await ws.expect("presence_join"))["payload"]["userId"] == "bob"
            reply = await bob.request("presence", {"channel": room})
            assert sorted(reply["payload"]["users"]) == ["ann", "bob"]
        # bob dropped: the others hear he left
        for ws in (ann1, ann2):
            assert (await ws.expect("presence_leave"))["payload"]["userId"] == "bob"
        await ann2.request("unsubscribe", {"channel": room})
        reply = await ann1.request("presence", {"channel": room})
        assert reply["payload"]["users"] == ["ann"]
    assert await server.hub.presence(room) == []


async def test_presence_channels_need_authentication(server: TestServer) -> None:
    async with server.connect() as ws:
        await ws.expect("welcome")
        reply = await ws.request("subscribe", {"channel": "presence-room"})
        assert reply["payload"]["code"] == "not_authenticated"


class Typing(BaseModel):
    channel: str
    active: bool = True


async def test_application_handlers_get_validated_payloads_and_reply(server: TestServer) -> None:
    @server.hub.on("typing", requires_auth=True)
    async def typing(ctx: Context, payload: Typing) -> None:
        await ctx.hub.publish(payload.channel, {"typing": ctx.user_id, "active": payload.active})
        ctx.reply("typing_ok", {"channel": payload.channel})

    async with server.connect(user="tom") as tom, server.connect() as anon:
        await tom.expect("welcome")
        await tom.expect("authenticated")
        await anon.expect("welcome")
        await tom.request("subscribe", {"channel": "room"})
        reply = await tom.request("typing", {"channel": "room"}, id="t1")
        # the publication reached the subscriber before the reply
        assert reply == {"type": "typing_ok", "payload": {"channel": "room"}, "id": "t1"}
        bad = await tom.request("typing", {"active": "nope"})
        assert bad["payload"]["code"] == "invalid_message"
        assert bad["payload"]["message"].startswith("payload.channel")
        assert (await anon.request("typing", {"channel": "room"}))["payload"]["code"] == (
            "not_authenticated"
        )


async def test_an_abrupt_drop_leaves_presence(server: TestServer) -> None:
    from ..rawws import OP_TEXT, RawWS

    room = "presence-drop"
    async with server.connect(user="ann") as ann:
        await ann.expect("welcome")
        await ann.expect("authenticated")
        await ann.request("subscribe", {"channel": room})
        await ann.expect("presence_join")
        raw = await RawWS.connect(
            server.host, server.port, headers={"Authorization": f"Bearer {server.token('bob')}"}
        )
        raw.send_text('{"type":"subscribe","payload":{"channel":"presence-drop"}}')
        assert (await ann.expect("presence_join"))["payload"]["userId"] == "bob"
        assert await raw.recv_until(OP_TEXT)  # welcome
        raw.writer.transport.abort()  # no close frame: the TCP connection just ends
        assert (await ann.expect("presence_leave"))["payload"]["userId"] == "bob"
        assert (await ann.request("presence", {"channel": room}))["payload"]["users"] == ["ann"]
