"""A bounded per-connection queue of outgoing frames, drained by one writer task.

Used by transports whose sends must be awaited (ASGI). Publishers only ever call :meth:`put`,
which never waits; the writer takes everything queued in one :meth:`take` call.

While the connection's own task handles a client message it may :meth:`hold` the outbox: the
writer is not woken, and the replies go out from that task (:meth:`take_nowait`) when the
handler is done, saving a task switch per reply; :meth:`release` hands the writer what is left.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..protocol import Frame

__all__ = ["Outbox"]


class Outbox:
    """FIFO of :class:`Frame` bounded by total bytes and by count.

    ``put`` returns ``False`` (and queues nothing) when adding the frame would exceed either bound;
    what to do then is the caller's overflow policy.
    """

    __slots__ = (
        "_bytes",
        "_drain_waiters",
        "_frames",
        "_held",
        "_waiter",
        "closed",
        "max_bytes",
        "max_frames",
    )

    def __init__(self, *, max_bytes: int, max_frames: int) -> None:
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self._frames: deque[Frame] = deque()
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._held = False
        self.closed = False
        self._drain_waiters: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def held(self) -> bool:
        """Whether the connection's own task holds the outbox (see :meth:`hold`)."""
        return self._held

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def put(self, frame: Frame) -> bool:
        if self.closed:
            return True
        size = len(frame.data)
        if self._bytes + size > self.max_bytes or len(self._frames) >= self.max_frames:
            return False
        self._frames.append(frame)
        self._bytes += size
        waiter = self._waiter
        if waiter is not None and not self._held and not waiter.done():
            waiter.set_result(None)
        return True

    def put_all(self, frames: list[Frame], size: int | None = None) -> bool:
        """Queue every frame, or none of them when they do not all fit. ``size``: their bytes
        together, when the caller knows it (a batch delivered to many outboxes counts once)."""
        if self.closed:
            return True
        if size is None:
            size = sum(len(f.data) for f in frames)
        if self._bytes + size > self.max_bytes or len(self._frames) + len(frames) > self.max_frames:
            return False
        self._frames.extend(frames)
        self._bytes += size
        waiter = self._waiter
        if waiter is not None and not self._held and not waiter.done():
            waiter.set_result(None)
        return True

    async def take(self) -> list[Frame]:
        """Wait until a frame is queued or the outbox is closed; return (and remove) all queued.

        Returns an empty list only when the outbox is closed and empty. Waits while held.
        """
        while self._held or not self._frames:
            if self.closed and not self._held and not self._frames:
                return []
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.take_nowait()

    def take_nowait(self) -> list[Frame]:
        """Remove and return every queued frame (for the holder; the writer uses :meth:`take`)."""
        frames = list(self._frames)
        self._frames.clear()
        self._bytes = 0
        self._wake_drained()
        return frames

    def drained(self) -> asyncio.Future[None]:
        """Resolves once the writer has taken everything queued now (or the outbox closed)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._frames or self.closed:
            future.set_result(None)
        else:
            self._drain_waiters.append(future)
        return future

    def _wake_drained(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    def hold(self) -> bool:
        """Keep the writer asleep, if it is idle (waiting, nothing queued). Returns whether the
        outbox is now held: the caller must then send what it takes, and :meth:`release`."""
        if self._held or self._waiter is None or self._frames or self.closed:
            return False
        self._held = True
        return True

    def release(self) -> None:
        """End a :meth:`hold`: the writer gets whatever the holder did not send."""
        self._held = False
        waiter = self._waiter
        if waiter is not None and (self._frames or self.closed) and not waiter.done():
            waiter.set_result(None)

    def close(self, *, drop: bool = False) -> None:
        """Stop accepting frames; wake the writer. With ``drop`` the queued frames are discarded."""
        self.closed = True
        if drop:
            self._frames.clear()
            self._bytes = 0
        self._wake_drained()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
