"""What the PostgreSQL store, broker and presence promise beyond the shared contracts: NOTIFY in
the append's transaction (offset order across nodes), payloads NOTIFY cannot carry as they are,
a listening connection that breaks, schemas apart, restarts, a node killed with SIGKILL, and
failing fast when PostgreSQL is not there.

Every test works in a schema of its own inside the session's throwaway database. Waiting for a
dead node's timeout is a bounded poll of a real operation: there is no event to await.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from wshub.brokers.postgres import PostgresBroker
from wshub.errors import BackendUnavailable
from wshub.interfaces import Append, Retention
from wshub.presence.postgres import PostgresPresence
from wshub.stores.postgres import PostgresStore, parse_postgres_url
from wshub.testing import free_port
from wshub.types import StreamPosition

from ..postgres_server import PostgresDatabase
from .conftest import eventually

KEEP = Retention(size=None, ttl=None)
TIMEOUT = 5


class Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.resyncs = 0
        self.resynced = asyncio.Event()

    def handle(self, topic: str, data: bytes) -> None:
        self.queue.put_nowait((topic, data))

    def resync(self) -> None:
        self.resyncs += 1
        self.resynced.set()

    async def receive(self) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.queue.get(), TIMEOUT)


async def test_appends_notify_in_offset_order_in_the_same_transaction(
    fresh_postgres: Callable[[], str],
) -> None:
    """Two nodes append to one stream at once; a third receives every offset once, in order,
    with the stored body (NOTIFY is sent at commit, in commit order)."""
    url = fresh_postgres()
    inbox = Inbox()
    listener = PostgresBroker(url)
    await listener.start(inbox.handle)
    await listener.subscribe("c:race")
    nodes = [(PostgresStore(url), PostgresBroker(url)) for _ in range(2)]
    try:
        for store, broker in nodes:
            await store.start()
            await broker.start(lambda topic, data: None)
            assert store.publish_with(broker) is True
        assert PostgresStore(url).publish_with(PostgresBroker(url + "x")) is False
        batches = [
            store.append_batch([Append("c:race", b"%d" % i, KEEP, "c:race") for i in range(50)])
            for _ in range(2)
            for store, _ in nodes
        ]
        results = [r for batch in await asyncio.gather(*batches) for r in batch]
        assert sorted(r.offset for r in results if not isinstance(r, Exception)) == list(
            range(1, 201)
        )
        received = [await inbox.receive() for _ in range(200)]
        assert [int(data.split(b":", 1)[0]) for _, data in received] == list(range(1, 201))
        assert {topic for topic, _ in received} == {"c:race"}
        stored, _ = await nodes[0][0].read("c:race", 0)
        assert [m.offset for m in stored] == list(range(1, 201))
        assert {d for _, d in received} == {b"%d:%s" % (m.offset, m.data) for m in stored}
    finally:
        await listener.close()
        for store, broker in nodes:
            await broker.close()
            await store.close()


async def test_payloads_notify_cannot_carry_arrive_whole_and_in_order(
    fresh_postgres: Callable[[], str],
) -> None:
    """Binary bytes (NUL, not UTF-8) and bodies over NOTIFY's 8000 bytes, from publish and from
    an append, arrive intact, in order with the small ones around them."""
    url = fresh_postgres()
    inbox = Inbox()
    receiver, sender = PostgresBroker(url), PostgresBroker(url)
    store = PostgresStore(url)
    await receiver.start(inbox.handle)
    await sender.start(lambda topic, data: None)
    await store.start()
    try:
        assert store.publish_with(sender)
        await receiver.subscribe("c:big")
        big = b'{"x":"' + b"y" * 20_000 + b'"}'
        binary = bytes(range(256)) * 40  # over the limit once in base64, too
        sent = [b"small", big, b"\x00\xff\xfe", binary, b"caf\xc3\xa9", b"last"]
        for data in sent:
            await sender.publish("c:big", data)
        assert [(await inbox.receive())[1] for _ in sent] == sent
        items = [Append("c:big", d, Retention(size=0, ttl=None), "c:big") for d in sent]
        await store.append_batch(items)  # size 0: nothing kept, the payloads still arrive
        assert [(await inbox.receive())[1] for _ in sent] == [
            b"%d:%s" % (i, d) for i, d in enumerate(sent, 1)
        ]
        # identical payloads in one transaction are still delivered each time
        await asyncio.gather(*(sender.publish("c:big", b"same") for _ in range(5)))
        assert [(await inbox.receive())[1] for _ in range(5)] == [b"same"] * 5
    finally:
        await store.close()
        await sender.close()
        await receiver.close()


async def test_a_broken_listening_connection_comes_back_and_resyncs(
    fresh_postgres: Callable[[], str], postgres_database: PostgresDatabase
) -> None:
    url = fresh_postgres()
    inbox = Inbox()
    receiver = PostgresBroker(url, ping_interval=0.2, reconnect_delay=(0.01, 0.1))
    sender = PostgresBroker(url)
    await receiver.start(inbox.handle, inbox.resync)
    await sender.start(lambda topic, data: None)
    try:
        await receiver.subscribe("c:a")
        await sender.publish("c:a", b"before")
        assert await inbox.receive() == ("c:a", b"before")
        killed = await postgres_database.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'wshub-broker'"
        )
        assert len(killed) == 2  # the receiver's and the sender's listening connections
        await asyncio.wait_for(inbox.resynced.wait(), TIMEOUT)
        assert receiver.connected and await receiver.healthy()
        await sender.publish("c:a", b"after")  # the sender's pool reconnects by itself
        assert await inbox.receive() == ("c:a", b"after")
        assert inbox.resyncs == 1
    finally:
        await sender.close()
        await receiver.close()


async def test_two_prefixes_on_one_database_stay_apart(postgres_database: PostgresDatabase) -> None:
    one, two = (
        PostgresStore(postgres_database.url("app_one")),
        PostgresStore(postgres_database.url("app_two")),
    )
    await one.start()
    await two.start()
    try:
        await one.append("c:news", b"one", KEEP)
        assert (await two.position("c:news")).offset == 0
        assert (await two.append("c:news", b"two", KEEP)).offset == 1
        assert [m.data for m in (await one.read("c:news", 0))[0]] == [b"one"]
        assert one.epoch != two.epoch
    finally:
        await one.close()
        await two.close()
    schemas = await postgres_database.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname IN ('app_one', 'app_two')"
    )
    assert len(schemas) == 2


async def test_a_restarted_store_keeps_history_epochs_and_cursors(
    fresh_postgres: Callable[[], str],
) -> None:
    """Migrations run again at every start, and nodes starting together, harmlessly."""
    url = fresh_postgres()
    stores = [PostgresStore(url) for _ in range(3)]
    await asyncio.gather(*(s.start() for s in stores))
    first = stores[0]
    try:
        for i in range(5):
            await first.append("u:alice", b"%d" % i, KEEP)
        await first.advance_cursor("u:alice", 3)
        await first.advance_cursor("u:alice", 9)  # past the top: not moved
        epoch = (await first.position("u:alice")).epoch
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    again = PostgresStore(url)
    await again.start()
    try:
        messages, pos = await again.read("u:alice", 0)
        assert [m.data for m in messages] == [b"%d" % i for i in range(5)]
        assert pos.offset == 5 and pos.epoch == epoch
        assert await again.cursor("u:alice") == 3
    finally:
        await again.close()


async def test_one_batch_applies_retention_as_appends_one_by_one_would(
    fresh_postgres: Callable[[], str],
) -> None:
    store = PostgresStore(fresh_postgres())
    await store.start()
    try:
        await store.append("s", b"before", KEEP)
        three = Retention(size=3, ttl=None)
        items = [Append("s", b"%d" % i, three) for i in range(10)]
        items += [Append("t", b"a", KEEP), Append("t", b"b", Retention(size=0, ttl=None))]
        items += [Append("s", b"last", Retention(size=5, ttl=None))]
        results = await store.append_batch(items)
        assert [r.offset for r in results if not isinstance(r, Exception)] == [
            *range(2, 12),
            1,
            2,
            12,
        ]
        kept, pos = await store.read("s", 0)
        assert [m.offset for m in kept] == [9, 10, 11, 12] and pos.offset == 12
        assert (await store.read("t", 0))[0] == []  # size 0 dropped what came before it too
    finally:
        await store.close()


async def test_an_item_postgres_cannot_store_fails_alone(
    fresh_postgres: Callable[[], str],
) -> None:
    store = PostgresStore(fresh_postgres())
    await store.start()
    try:
        items = [Append("u:a", b"1", KEEP), Append("u:nul\x00", b"x", KEEP)]
        items += [Append("u:\ud800", b"x", KEEP), Append("u:a", b"2", KEEP)]
        results = await store.append_batch(items, {"u:a": 2**70})
        assert [type(r) for r in results] == [
            StreamPosition,
            BackendUnavailable,
            BackendUnavailable,
            StreamPosition,
        ]
        assert [m.data for m in (await store.read("u:a", 0))[0]] == [b"1", b"2"]
    finally:
        await store.close()


async def test_a_store_whose_connections_were_cut_carries_on(
    fresh_postgres: Callable[[], str], postgres_database: PostgresDatabase
) -> None:
    store = PostgresStore(fresh_postgres())
    await store.start()
    try:
        await store.append("c:x", b"1", KEEP)
        killed = await postgres_database.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'wshub'"
        )
        assert killed

        async def appends() -> bool:
            await store.append("c:x", b"2", KEEP)
            return True

        await eventually(appends, 3, "the pool connects again")
        assert await store.healthy()
        messages, _ = await store.read("c:x", 0)
        assert [m.data for m in messages] == [b"1", b"2"]
    finally:
        await store.close()


async def test_retention_by_age_is_swept(fresh_postgres: Callable[[], str]) -> None:
    now = [1_800_000_000.0]
    store = PostgresStore(fresh_postgres(), clock=lambda: now[0])
    await store.start()
    try:
        await store.append("s", b"old", Retention(size=None, ttl=10))
        await store.append("s", b"kept", KEEP)
        now[0] += 11
        assert await store.sweep() == 1
        assert [m.data for m in (await store.read("s", 0))[0]] == [b"kept"]
    finally:
        await store.close()


async def test_nothing_listening_fails_fast_with_backend_unavailable() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    for backend in (PostgresStore(url), PostgresBroker(url), PostgresPresence(url)):
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1"):
            if isinstance(backend, PostgresBroker):
                await backend.start(lambda topic, data: None)
            elif isinstance(backend, PostgresPresence):
                await backend.start("n1")
            else:
                await backend.start()
        assert time.monotonic() - started < 3
    store = PostgresStore(url)
    assert await store.healthy() is False
    with pytest.raises(BackendUnavailable):
        await store.append("s", b"x", KEEP)


_DOOMED_NODE = """
import asyncio, sys
from wshub.presence.postgres import PostgresPresence

async def main():
    presence = PostgresPresence(sys.argv[1], node_ttl=float(sys.argv[2]))
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
    fresh_postgres: Callable[[], str], postgres_database: PostgresDatabase
) -> None:
    url = fresh_postgres()
    schema = parse_postgres_url(url).schema
    ttl = 1.0
    departed: list[tuple[str, str, str]] = []
    survivor = PostgresPresence(url, node_ttl=ttl)
    await survivor.start("survivor", lambda ch, uid: departed.append(("survivor", ch, uid)))
    await survivor.connect("zoe", "survivor-1")
    await survivor.join("presence-hall", "zoe", "survivor-1")
    other = PostgresPresence(url, node_ttl=ttl)
    await other.start("other", lambda ch, uid: departed.append(("other", ch, uid)))
    doomed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DOOMED_NODE, url, str(ttl), stdout=subprocess.PIPE
    )
    try:
        assert doomed.stdout is not None
        assert await asyncio.wait_for(doomed.stdout.readline(), 20) == b"ready\n"
        assert await survivor.connections("zoe") == 2
        assert sorted(await survivor.members("presence-hall")) == ["yan", "zoe"]
        doomed.kill()
        await doomed.wait()

        async def gone() -> bool:
            return await survivor.members("presence-room") == []

        took = await eventually(gone, ttl + 3, "the dead node's entries are ignored")
        assert took < ttl + 1
        assert await survivor.connections("zoe") == 1

        async def cleaned() -> bool:
            rows = await postgres_database.fetch(
                f"SELECT 1 FROM {schema}.presence_entries WHERE node = 'doomed'"
                f" UNION ALL SELECT 1 FROM {schema}.presence_nodes WHERE node = 'doomed'"
            )
            return rows == []

        await eventually(cleaned, ttl + 3, "a live node's heartbeat removes the dead node's rows")

        async def reported() -> bool:
            return len(departed) >= 2

        await eventually(reported, ttl + 3, "the departures are reported")
        await asyncio.sleep(ttl / 2)  # absence has no event: another heartbeat of each node
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


async def test_presence_given_up_by_the_cluster_writes_its_entries_again(
    fresh_postgres: Callable[[], str], postgres_database: PostgresDatabase
) -> None:
    url = fresh_postgres()
    schema = parse_postgres_url(url).schema
    node = PostgresPresence(url, node_ttl=0.6)
    await node.start("n1")
    try:
        await node.join("presence-room", "alice", "n1-1")
        await postgres_database.execute(f"DELETE FROM {schema}.presence_entries")
        await postgres_database.execute(f"DELETE FROM {schema}.presence_nodes")

        async def healed() -> bool:
            return await node.members("presence-room") == ["alice"]

        await eventually(healed, 3, "the node writes its entries again")
    finally:
        await node.close()


def test_wshub_options_are_taken_out_of_the_url() -> None:
    parsed = parse_postgres_url("postgres://u:p@h:1/db?prefix=app&node_ttl=2.5&sslmode=disable")
    assert parsed.dsn == "postgresql://u:p@h:1/db?sslmode=disable"
    assert (parsed.schema, parsed.node_ttl) == ("app", 2.5)
    for bad in ("postgresql://h?node_ttl=0", "postgresql://h?prefix=A-b", "redis://h"):
        with pytest.raises(ValueError):
            parse_postgres_url(bad)


def test_the_factory_builds_postgres_backends_and_imports_asyncpg_only_for_them() -> None:
    code = (
        "import sys; from wshub.config import Settings; from wshub import create_hub;"
        "create_hub(Settings(_env_file=None, store_url='memory://', broker_url='memory://'));"
        "assert 'asyncpg' not in sys.modules, 'asyncpg';"
        "from wshub.factory import create_store, create_broker, create_presence;"
        "u = 'postgresql://postgres@127.0.0.1/x?prefix=app&node_ttl=3';"
        "s, b, p = create_store(u), create_broker(u), create_presence(u);"
        "assert (s.schema, b.schema, p.schema, p.node_ttl) == ('app',) * 3 + (3.0,);"
        "assert s.publish_with(b);"
        "Settings(_env_file=None, store_url='postgres://h/db', broker_url=u)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
