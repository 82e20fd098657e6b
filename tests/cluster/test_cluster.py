"""Several ``wshub serve`` nodes on one Redis behave, for clients, as one server."""

from __future__ import annotations

import contextlib

from wshub.auth.jwt import issue_token

from ..conftest import SECRET
from .conftest import NODE_TTL, ClusterFactory, eventually, payload


async def test_a_chat_reaches_every_connection_of_the_recipient_on_every_node(
    cluster: ClusterFactory,
) -> None:
    a, b, c = (await cluster(3)).nodes
    async with contextlib.AsyncExitStack() as stack:
        bobs = [await stack.enter_async_context(n.connect("bob")) for n in (a, b, b, c)]
        alice = await stack.enter_async_context(a.connect("alice"))
        for text in ("hi", "again"):
            reply = await alice.request("chat", {"recipientId": "bob", "message": text})
            assert reply["type"] == "chat_received"
            assert payload(reply)["delivered"] is True and payload(reply)["queued"] is False
            got = [await bob.expect("chat") for bob in bobs]
            assert {m["offset"] for m in got} == {1 if text == "hi" else 2}
            assert {payload(m)["message"] for m in got} == {text}
            assert {payload(m)["from"] for m in got} == {"alice"}


async def test_a_publication_reaches_subscribers_on_every_node_with_one_offset(
    cluster: ClusterFactory,
) -> None:
    a, b, c = (await cluster(3)).nodes
    async with contextlib.AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(n.connect("reader")) for n in (a, b, c)]
        for sub in subs:
            assert payload(await sub.request("subscribe", {"channel": "news"}))["offset"] == 0
        publisher = await stack.enter_async_context(a.connect("writer"))
        await publisher.request("subscribe", {"channel": "news"})
        reply = await publisher.request("publish", {"channel": "news", "data": {"n": 1}})
        assert payload(reply) == {"channel": "news", "offset": 1}
        r = await c.api.post("/api/publish", json={"channel": "news", "data": {"n": 2}})
        assert r.json()["offset"] == 2
        for sub in subs:
            first, second = await sub.expect("message"), await sub.expect("message")
            assert [payload(first)["offset"], payload(second)["offset"]] == [1, 2]
            assert [payload(first)["data"], payload(second)["data"]] == [{"n": 1}, {"n": 2}]


async def test_broadcast_reaches_every_connection_of_every_node(cluster: ClusterFactory) -> None:
    a, b, c = (await cluster(3)).nodes
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(n.connect()) for n in (a, b, b, c)]
        r = await b.api.post("/api/broadcast", json={"message": "maintenance at noon"})
        assert r.status_code == 200 and r.json() == {"connections": 2}  # b's own
        for client in clients:
            msg = await client.expect("system_message")
            assert payload(msg)["message"] == "maintenance at noon"


async def test_online_status_and_presence_are_cluster_wide(cluster: ClusterFactory) -> None:
    a, b, c = (await cluster(3)).nodes
    async with contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(a.connect("alice"))
        for node in (a, b, c):
            status = (await node.api.get("/api/users/alice")).json()
            assert (status["online"], status["connections"]) == (True, 1)
        async with c.connect("alice"):
            assert (await b.api.get("/api/users/alice")).json()["connections"] == 2
        assert (await a.api.get("/api/users/nobody")).json()["online"] is False

        await alice.request("subscribe", {"channel": "presence-room"})
        assert payload(await alice.expect("presence_join")) == {
            "channel": "presence-room",
            "userId": "alice",
        }
        bob = await stack.enter_async_context(b.connect("bob"))
        await bob.request("subscribe", {"channel": "presence-room"})
        joined = {"channel": "presence-room", "userId": "bob"}
        assert payload(await bob.expect("presence_join")) == joined
        assert payload(await alice.expect("presence_join")) == joined  # from the other node
        members = (await c.api.get("/api/channels/presence-room/presence")).json()["users"]
        assert sorted(members) == ["alice", "bob"]
        reply = await bob.request("presence", {"channel": "presence-room"})
        assert sorted(payload(reply)["users"]) == ["alice", "bob"]


async def test_messages_queued_through_one_node_are_delivered_on_another(
    cluster: ClusterFactory,
) -> None:
    a, b, c = (await cluster(3)).nodes
    async with a.connect("alice") as alice:
        reply = await alice.request("chat", {"recipientId": "carol", "message": "while away"})
        assert payload(reply)["delivered"] is False and payload(reply)["queued"] is True
    r = await c.api.post("/api/users/carol/notify", json={"title": "t", "message": "also"})
    assert r.json() == {"delivered": False, "queued": True, "offset": 2}
    async with b.connect("carol") as carol:
        chat, note = await carol.expect("chat"), await carol.expect("notification")
        assert (chat["offset"], payload(chat)["message"]) == (1, "while away")
        assert note["offset"] == 2
    # handed over once: the next connection, on yet another node, gets only what is new
    await a.api.post("/api/users/carol/notify", json={"title": "t", "message": "new"})
    async with c.connect("carol") as carol:
        note = await carol.expect("notification")
        assert (note["offset"], payload(note)["message"]) == (3, "new")


async def test_resume_with_since_after_moving_to_another_node(cluster: ClusterFactory) -> None:
    a, b, c = (await cluster(3)).nodes
    async with a.connect() as dave:
        auth = await dave.request("authenticate", {"token": issue_token("dave", SECRET)})
        user_epoch = payload(auth)["epoch"]
        await dave.request("subscribe", {"channel": "feed"})
        for i in (1, 2):
            await c.api.post("/api/publish", json={"channel": "feed", "data": i})
            await c.api.post("/api/users/dave/send", json={"type": "note", "payload": {"i": i}})
        seen = [await dave.recv() for _ in range(4)]
        assert sorted((m["type"], m.get("offset") or payload(m)["offset"]) for m in seen) == [
            ("message", 1),
            ("message", 2),
            ("note", 1),
            ("note", 2),
        ]
        feed_epoch = (await c.api.get("/api/channels/feed/history")).json()["epoch"]
    for i in (3, 4):  # missed while moving
        await c.api.post("/api/publish", json={"channel": "feed", "data": i})
        await c.api.post("/api/users/dave/send", json={"type": "note", "payload": {"i": i}})
    async with b.connect() as dave:
        auth = await dave.request(
            "authenticate",
            {"token": issue_token("dave", SECRET), "since": 2, "epoch": user_epoch},
        )
        assert payload(auth)["recovered"] is True and payload(auth)["offset"] == 4
        notes = [await dave.expect("note"), await dave.expect("note")]
        assert [(n["offset"], payload(n)["i"]) for n in notes] == [(3, 3), (4, 4)]
        sub = await dave.request("subscribe", {"channel": "feed", "since": 2, "epoch": feed_epoch})
        assert payload(sub)["recovered"] is True
        msgs = [await dave.expect("message"), await dave.expect("message")]
        assert [(payload(m)["offset"], payload(m)["data"]) for m in msgs] == [(3, 3), (4, 4)]


async def test_a_killed_node_disappears_and_the_others_keep_serving(
    cluster: ClusterFactory,
) -> None:
    a, b = (await cluster(2)).nodes
    async with contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(a.connect("alice"))
        await alice.request("subscribe", {"channel": "presence-room"})
        await alice.expect("presence_join")
        erin = await stack.enter_async_context(b.connect("erin"))
        await erin.request("subscribe", {"channel": "presence-room"})
        await alice.expect("presence_join")
        assert (await a.api.get("/api/users/erin")).json()["online"] is True
        await b.kill9()
        # the node that notices b is dead tells the channel, once
        left = await alice.expect("presence_leave", timeout=NODE_TTL + 5)
        assert payload(left) == {"channel": "presence-room", "userId": "erin"}

        async def erin_is_gone() -> bool:
            status = (await a.api.get("/api/users/erin")).json()
            users = (await a.api.get("/api/channels/presence-room/presence")).json()["users"]
            return status["online"] is False and users == ["alice"]

        took = await eventually(erin_is_gone, NODE_TTL + 5, "erin vanishes")
        assert took < NODE_TTL + 2
        reply = await alice.request("chat", {"recipientId": "erin", "message": "still there?"})
        assert payload(reply)["queued"] is True  # erin counts as offline now
        async with a.connect("frank") as frank:
            reply = await frank.request("chat", {"recipientId": "alice", "message": "hi"})
            assert payload(reply)["delivered"] is True
            assert payload(await alice.expect("chat"))["message"] == "hi"


async def test_both_websocket_transports_work_in_a_cluster(cluster: ClusterFactory) -> None:
    """The suite runs on the default (native) transport; the plain ASGI one too. Every redis-py
    call of the Redis backends runs in a task of their own, so handlers that the native transport
    starts eagerly (outside a task) can use them."""
    await cluster(1, transport="asgi")
    a, b = (await cluster(1)).nodes
    async with a.connect("alice") as alice, b.connect("bob") as bob:
        for sender, recipient, name in ((alice, bob, "bob"), (bob, alice, "alice")):
            reply = await sender.request("chat", {"recipientId": name, "message": "hi"})
            assert payload(reply)["delivered"] is True
            assert payload(await recipient.expect("chat"))["message"] == "hi"
        await bob.request("subscribe", {"channel": "news"})
        reply = await alice.request("subscribe", {"channel": "news"})
        await alice.request("publish", {"channel": "news", "data": 1})
        assert payload(await bob.expect("message"))["data"] == 1
