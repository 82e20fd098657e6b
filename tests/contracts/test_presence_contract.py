"""The Presence contract (wshub.interfaces.Presence): two or more nodes of one cluster, against
every implementation (memory presences sharing a MemoryPresenceState; Redis presences on a
throwaway redis-server). Then, Redis only: a node that dies in another process vanishes after
``node_ttl`` (a bounded poll) and its channel members are reported gone once, and presence heals
after data loss."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest

from wshub.interfaces import Presence
from wshub.presence.memory import MemoryPresence, MemoryPresenceState
from wshub.presence.redis import RedisPresence

from ..redis_server import RedisServer
from .conftest import REDIS_HA, eventually

AddNode = Callable[[], Awaitable[Presence]]


@pytest.fixture(params=["memory", "redis", "postgres", *REDIS_HA])
async def cluster(
    request: pytest.FixtureRequest,
    fresh_redis: Callable[[], str],
    fresh_postgres: Callable[[], str],
    fresh_redis_ha: Callable[[str], str],
) -> AsyncIterator[AddNode]:
    """``await cluster()`` starts the presence of one more node of the same cluster."""
    state = MemoryPresenceState()
    url = fresh_redis() if request.param == "redis" else ""
    url = fresh_redis_ha(request.param) if request.param in REDIS_HA else url
    url = fresh_postgres() if request.param == "postgres" else url
    async with AsyncExitStack() as stack:

        async def add_node() -> Presence:
            presence: Presence
            if request.param == "memory":
                presence = MemoryPresence(state)
            elif request.param == "postgres":
                from wshub.presence.postgres import PostgresPresence

                presence = PostgresPresence(url)
            else:
                from wshub.presence.redis import RedisPresence

                presence = RedisPresence(url)
            await presence.start(uuid.uuid4().hex[:12])
            stack.push_async_callback(presence.close)
            return presence

        yield add_node


async def test_connections_count_every_node(cluster: AddNode) -> None:
    a, b = await cluster(), await cluster()
    await a.connect("alice", "a-1")
    await b.connect("alice", "b-1")
    await b.connect("alice", "b-2")
    assert await a.connections("alice") == 3 and await b.connections("alice") == 3
    await b.disconnect("alice", "b-1")
    assert await a.connections("alice") == 2
    assert await a.connections("nobody") == 0


async def test_disconnecting_an_unknown_connection_changes_nothing(cluster: AddNode) -> None:
    a, b = await cluster(), await cluster()
    await a.connect("alice", "a-1")
    await b.disconnect("alice", "b-9")
    await b.disconnect("bob", "b-1")
    assert await b.connections("alice") == 1


async def test_join_is_first_and_leave_is_last_across_nodes(cluster: AddNode) -> None:
    a, b = await cluster(), await cluster()
    assert await a.join("presence-room", "alice", "a-1") is True
    assert await b.join("presence-room", "alice", "b-1") is False
    assert await a.join("presence-room", "alice", "a-2") is False
    assert await a.join("presence-room", "bob", "a-3") is True
    assert await a.leave("presence-room", "alice", "a-1") is False
    assert await b.leave("presence-room", "alice", "b-1") is False
    assert await a.leave("presence-room", "alice", "a-2") is True
    assert await a.join("presence-room", "alice", "b-7") is True  # first again


async def test_leaving_without_having_joined_is_not_a_last_leave(cluster: AddNode) -> None:
    a, b = await cluster(), await cluster()
    await a.join("presence-room", "alice", "a-1")
    assert await b.leave("presence-room", "alice", "b-1") is False
    assert await b.leave("presence-other", "alice", "a-1") is False
    assert await b.members("presence-room") == ["alice"]


async def test_members_lists_each_user_once_per_channel(cluster: AddNode) -> None:
    a, b = await cluster(), await cluster()
    await a.join("presence-room", "alice", "a-1")
    await b.join("presence-room", "alice", "b-1")
    await b.join("presence-room", "bob", "b-2")
    await b.join("presence-hall", "carol", "b-3")
    assert sorted(await a.members("presence-room")) == ["alice", "bob"]
    assert await a.members("presence-hall") == ["carol"]
    assert await a.members("presence-empty") == []
    await b.leave("presence-room", "bob", "b-2")
    assert await a.members("presence-room") == ["alice"]


async def test_channel_and_user_names_that_look_alike_stay_apart(cluster: AddNode) -> None:
    a = await cluster()
    assert await a.join("presence-a:b", "c", "1") is True
    assert await a.join("presence-a", "b:c", "2") is True
    assert await a.members("presence-a:b") == ["c"]
    assert await a.members("presence-a") == ["b:c"]


async def test_close_removes_every_entry_of_that_node_only(cluster: AddNode) -> None:
    a, b = await cluster(), await cluster()
    await a.connect("alice", "a-1")
    await a.join("presence-room", "alice", "a-1")
    await a.connect("bob", "a-2")
    await a.join("presence-room", "bob", "a-2")
    await b.connect("bob", "b-1")
    await b.join("presence-room", "bob", "b-1")
    await a.close()
    assert await b.connections("alice") == 0
    assert await b.connections("bob") == 1
    assert await b.members("presence-room") == ["bob"]
    assert await b.leave("presence-room", "bob", "b-1") is True


# -- Redis only: nodes that die, Redis that forgets ---------------------------------------

_DOOMED_NODE = """
import asyncio, sys
from wshub.presence.redis import RedisPresence

async def main():
    presence = RedisPresence(sys.argv[1], node_ttl=float(sys.argv[2]))
    await presence.start("doomed")
    await presence.connect("zoe", "doomed-1")
    await presence.join("presence-room", "zoe", "doomed-1")
    await presence.join("presence-hall", "zoe", "doomed-1")
    await presence.connect("yan", "doomed-2")
    await presence.join("presence-hall", "yan", "doomed-2")
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_node_killed_with_sigkill_vanishes_after_node_ttl(
    redis_server: RedisServer, redis_url: str
) -> None:
    ttl = 1.0
    departed: list[tuple[str, str, str]] = []  # (reporting node, channel, user)
    survivor = RedisPresence(redis_url, node_ttl=ttl)
    await survivor.start("survivor", lambda ch, uid: departed.append(("survivor", ch, uid)))
    await survivor.connect("zoe", "survivor-1")
    await survivor.join("presence-hall", "zoe", "survivor-1")  # zoe stays in the hall
    other = RedisPresence(redis_url, node_ttl=ttl)
    await other.start("other", lambda ch, uid: departed.append(("other", ch, uid)))
    doomed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DOOMED_NODE, redis_url, str(ttl), stdout=subprocess.PIPE
    )
    try:
        assert doomed.stdout is not None
        assert await asyncio.wait_for(doomed.stdout.readline(), 20) == b"ready\n"
        assert await survivor.connections("zoe") == 2
        assert await survivor.members("presence-room") == ["zoe"]
        assert sorted(await survivor.members("presence-hall")) == ["yan", "zoe"]
        doomed.kill()
        await doomed.wait()

        async def gone() -> bool:
            return await survivor.members("presence-room") == []

        took = await eventually(gone, ttl + 3, "the dead node's entries are ignored")
        assert took < ttl + 1
        assert await survivor.connections("zoe") == 1

        def leftovers() -> list[bytes]:
            with redis_server.client() as r:
                return [k for k in r.keys("*") if b"doomed" in k or b"presence-room" in k]

        async def cleaned() -> bool:
            return await asyncio.to_thread(leftovers) == []

        await eventually(cleaned, ttl + 3, "a live node's heartbeat removes the dead node's keys")

        # Who left with the dead node is reported once, cluster-wide, by the node that swept it:
        # zoe left the room (her last connection there) but not the hall; yan left the hall.
        async def reported() -> bool:
            return len(departed) >= 2

        await eventually(reported, ttl + 3, "the departures are reported")
        # absence has no event: long enough for another heartbeat of each node (every ttl / 3)
        await asyncio.sleep(ttl / 2)
        assert len({node for node, _, _ in departed}) == 1
        assert sorted((ch, uid) for _, ch, uid in departed) == [
            ("presence-hall", "yan"),
            ("presence-room", "zoe"),
        ]
        assert await survivor.members("presence-hall") == ["zoe"]
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
        await survivor.close()
        await other.close()


async def test_presence_heals_after_redis_lost_its_data(
    redis_server: RedisServer, redis_url: str
) -> None:
    node = RedisPresence(redis_url, node_ttl=1.0)
    await node.start("n1")
    try:
        await node.connect("alice", "n1-1")
        await node.join("presence-room", "alice", "n1-1")
        redis_server.flush()

        async def healed() -> bool:
            return await node.members("presence-room") == ["alice"]

        await eventually(healed, 3, "the node writes its entries again")
        assert await node.connections("alice") == 1
    finally:
        await node.close()


async def test_nodes_lists_every_live_node_and_forgets_a_closed_one(cluster: AddNode) -> None:
    a, b = await cluster(), await cluster()
    nodes = await a.nodes()
    assert len(nodes) == 2 and set(nodes) == set(await b.nodes())
    await b.close()
    assert len(await a.nodes()) == 1
