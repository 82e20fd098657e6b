from __future__ import annotations

import asyncio

from wshub.core.outbox import Outbox
from wshub.protocol import Frame


def test_put_refuses_past_either_bound_without_queueing() -> None:
    box = Outbox(max_bytes=10, max_frames=3)
    assert box.put(Frame(b"12345")) and box.put(Frame(b"12345"))
    assert not box.put(Frame(b"1"))  # bytes bound
    assert len(box) == 2 and box.pending_bytes == 10
    box = Outbox(max_bytes=100, max_frames=2)
    assert box.put(Frame(b"a")) and box.put(Frame(b"b"))
    assert not box.put(Frame(b"c"))  # count bound


async def test_take_waits_for_a_frame_and_returns_everything_queued() -> None:
    box = Outbox(max_bytes=100, max_frames=10)
    taker = asyncio.create_task(box.take())
    await asyncio.sleep(0)
    assert not taker.done()
    box.put(Frame(b"a"))
    box.put(Frame(b"b"))
    frames = await asyncio.wait_for(taker, 1)
    assert [f.data for f in frames] == [b"a", b"b"]
    assert box.pending_bytes == 0


async def test_close_wakes_the_writer_and_drop_discards_the_queue() -> None:
    box = Outbox(max_bytes=100, max_frames=10)
    taker = asyncio.create_task(box.take())
    await asyncio.sleep(0)
    box.close()
    assert await asyncio.wait_for(taker, 1) == []
    box = Outbox(max_bytes=100, max_frames=10)
    box.put(Frame(b"a"))
    box.close()
    assert [f.data for f in await box.take()] == [b"a"]  # drained after close
    assert await box.take() == []
    box = Outbox(max_bytes=100, max_frames=10)
    box.put(Frame(b"a"))
    box.close(drop=True)
    assert await box.take() == []


async def test_hold_keeps_an_idle_writer_asleep_until_release() -> None:
    box = Outbox(max_bytes=100, max_frames=10)
    assert not box.hold()  # no writer waiting yet: nothing to hold
    taker = asyncio.create_task(box.take())
    await asyncio.sleep(0)
    assert box.hold()
    assert not box.hold()  # already held
    box.put(Frame(b"reply"))
    assert [f.data for f in box.take_nowait()] == [b"reply"]  # the holder sends it
    box.put_all([Frame(b"late")])
    box.close()  # a close while held must not let the writer send behind the holder's back
    await asyncio.sleep(0)
    assert not taker.done()
    box.release()  # the writer gets what the holder left, then sees the close
    assert [f.data for f in await asyncio.wait_for(taker, 1)] == [b"late"]
    assert await box.take() == []


async def test_hold_refused_while_the_writer_has_work() -> None:
    box = Outbox(max_bytes=100, max_frames=10)
    taker = asyncio.create_task(box.take())
    await asyncio.sleep(0)
    box.put(Frame(b"a"))  # wakes the writer; until it runs, the frame is its to send
    assert not box.hold()
    assert [f.data for f in await asyncio.wait_for(taker, 1)] == [b"a"]
