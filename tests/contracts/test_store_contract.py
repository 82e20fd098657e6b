"""The Store contract (wshub.interfaces.Store), run against every implementation."""

from __future__ import annotations

import asyncio

from wshub.brokers.memory import MemoryBroker
from wshub.interfaces import Append, Retention, Store
from wshub.types import StreamPosition

from .conftest import Clock

KEEP = Retention(size=None, ttl=None)


async def test_offsets_start_at_one_and_grow_by_one_per_stream(store: Store) -> None:
    a = [await store.append("a", b"x", KEEP) for _ in range(3)]
    b = await store.append("b", b"y", KEEP)
    assert [p.offset for p in a] == [1, 2, 3] and b.offset == 1
    assert len({p.epoch for p in a}) == 1


async def test_concurrent_appends_get_every_offset_exactly_once(store: Store) -> None:
    positions = await asyncio.gather(*(store.append("s", b"%d" % i, KEEP) for i in range(200)))
    assert sorted(p.offset for p in positions) == list(range(1, 201))
    messages, pos = await store.read("s", 0)
    assert [m.offset for m in messages] == list(range(1, 201)) and pos.offset == 200


async def test_read_returns_messages_after_since_in_order_with_the_position(
    store: Store,
) -> None:
    for i in range(1, 6):
        await store.append("s", b"m%d" % i, KEEP)
    messages, pos = await store.read("s", 2)
    assert [(m.offset, m.data) for m in messages] == [(3, b"m3"), (4, b"m4"), (5, b"m5")]
    assert pos.offset == 5
    limited, _ = await store.read("s", 0, limit=2)
    assert [m.offset for m in limited] == [1, 2]
    assert (await store.read("s", 5))[0] == []
    assert (await store.read("s", 99))[0] == []


async def test_an_unknown_stream_is_empty_and_keeps_its_epoch_once_written(store: Store) -> None:
    empty = await store.position("new")
    messages, pos = await store.read("new", 0)
    assert empty.offset == 0 and messages == [] and pos == empty
    written = await store.append("new", b"x", KEEP)
    assert written.offset == 1 and written.epoch == empty.epoch


async def test_retention_by_count_keeps_the_newest(store: Store) -> None:
    for i in range(1, 11):
        await store.append("s", b"%d" % i, Retention(size=3, ttl=None))
    messages, pos = await store.read("s", 0)
    assert [m.offset for m in messages] == [8, 9, 10] and pos.offset == 10


async def test_retention_size_zero_keeps_nothing_but_offsets_advance(store: Store) -> None:
    for _ in range(4):
        await store.append("s", b"x", Retention(size=0, ttl=None))
    messages, pos = await store.read("s", 0)
    assert messages == [] and pos.offset == 4


async def test_retention_by_age_drops_old_messages(store: Store, clock: Clock) -> None:
    await store.append("s", b"old", Retention(size=None, ttl=60))
    clock.now += 50
    await store.append("s", b"new", Retention(size=None, ttl=60))
    clock.now += 20  # "old" is 70 s old, "new" 20 s
    messages, pos = await store.read("s", 0)
    assert [m.data for m in messages] == [b"new"] and pos.offset == 2


async def test_cursors_start_at_zero_and_only_move_forward(store: Store) -> None:
    for _ in range(5):
        await store.append("u", b"x", KEEP)
    assert await store.cursor("u") == 0
    await store.advance_cursor("u", 3)
    await store.advance_cursor("u", 2)
    assert await store.cursor("u") == 3
    await store.advance_cursor("u", 5)
    assert await store.cursor("u") == 5
    assert await store.cursor("other") == 0


async def test_concurrent_appends_return_in_the_order_offsets_were_assigned(store: Store) -> None:
    """The hub delivers a publication locally as soon as its append returns: appends must come
    back in offset order, or local subscribers would see offsets out of order."""
    returned: list[int] = []

    async def append(i: int) -> None:
        returned.append((await store.append("s", b"%d" % i, KEEP)).offset)

    await asyncio.gather(*(append(i) for i in range(300)))
    assert returned == list(range(1, 301))


async def test_a_batch_appends_in_order_and_moves_cursors_in_the_same_step(store: Store) -> None:
    await store.append("u", b"first", KEEP)
    items = [Append("a", b"a1", KEEP), Append("b", b"b1", KEEP), Append("a", b"a2", KEEP)]
    results = await store.append_batch(items, {"u": 1})
    assert [(r.offset if isinstance(r, StreamPosition) else r) for r in results] == [1, 1, 2]
    messages, _ = await store.read("a", 0)
    assert [m.data for m in messages] == [b"a1", b"a2"]
    assert await store.cursor("u") == 1
    assert await store.append_batch([], {"u": 5}) == []  # beyond the top: not moved
    assert await store.cursor("u") == 1


async def test_a_store_publishes_only_with_a_broker_of_its_own_engine(store: Store) -> None:
    assert store.publish_with(MemoryBroker()) is False  # a broker on no bus connects nothing
