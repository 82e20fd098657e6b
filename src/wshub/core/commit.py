"""Group commit: every append that becomes ready during one event-loop turn goes to the store in
one step (one SQLite transaction and fsync, one Redis round trip).

Appends are queued with a callback instead of awaited one by one. At the end of the turn the
queue goes to :meth:`Store.append_batch`; while that commit is in flight the next turn's appends
wait and go together in the one after it (classic group commit: one commit of latency at most,
no timer). When a commit completes, every callback of the group runs in one go, in submission
order, which for each stream is offset order: the publications' fan-out and their replies are
released together in one turn, so per-connection coalescing sees them together.

Only one group is at the store at a time, so groups complete in the order they were formed and
every stream's offsets come back in order. Cursor moves ride along with the next group (the
highest offset per stream wins); they are not acknowledged to anybody.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..errors import BackendUnavailable
from ..interfaces import Append, Store
from ..types import StreamPosition

__all__ = ["Committed", "GroupCommit"]

logger = logging.getLogger("wshub.commit")

#: Called once per append: with its position, or with the exception it failed with.
Committed = Callable[[StreamPosition | None, BaseException | None], None]

#: Appends per group at most: a burst larger than this takes several commits (bounded work and
#: memory per step, for the store and for the turn that releases the group).
MAX_GROUP = 4096


class GroupCommit:
    """The hub's single way to append to its store (see the module docstring)."""

    def __init__(
        self, store: Store, *, started: Callable[[list[Append]], None] | None = None
    ) -> None:
        self._store = store
        # Told which appends go to the store now (the delivery table counts them in flight).
        self._started = started
        self._appends: list[Append] = []
        self._callbacks: list[Committed] = []
        self._cursors: dict[str, int] = {}
        self._scheduled = False
        self._running: asyncio.Task[None] | None = None
        self.groups = 0  # commits made (for stats and tests)

    def append(self, item: Append, done: Committed) -> None:
        """Queue ``item``; ``done`` runs on the event loop once it is durable (or failed)."""
        self._appends.append(item)
        self._callbacks.append(done)
        self._wake()

    def advance_cursor(self, stream: str, offset: int) -> None:
        """Move a delivery cursor forward with the next group (no acknowledgement)."""
        if offset > self._cursors.get(stream, 0):
            self._cursors[stream] = offset
            self._wake()

    async def append_now(self, item: Append) -> StreamPosition:
        """:meth:`append`, awaited: the position once durable, or the store's exception."""
        future: asyncio.Future[StreamPosition] = asyncio.get_running_loop().create_future()

        def done(pos: StreamPosition | None, exc: BaseException | None) -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                assert pos is not None
                future.set_result(pos)

        self.append(item, done)
        return await future

    async def flush(self) -> None:
        """Wait until everything queued so far is committed (for shutdown and tests)."""
        while self._appends or self._cursors or self._running is not None:
            if self._running is not None:
                await asyncio.shield(self._running)
            else:
                await asyncio.sleep(0)

    def _wake(self) -> None:
        if not self._scheduled and self._running is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        if self._running is not None or not (self._appends or self._cursors):
            return
        appends, callbacks = self._appends[:MAX_GROUP], self._callbacks[:MAX_GROUP]
        del self._appends[:MAX_GROUP]
        del self._callbacks[:MAX_GROUP]
        cursors, self._cursors = self._cursors, {}
        if self._started is not None and appends:
            self._started(appends)
        nowait = getattr(self._store, "append_batch_nowait", None)
        if nowait is not None:  # a store that never waits: no task, no extra turn
            try:
                results: list[StreamPosition | Exception] = nowait(appends, cursors)
            except Exception as exc:
                logger.exception("store append failed")
                results = [exc] * len(appends)
            self._release(callbacks, results)
            if self._appends or self._cursors:
                self._wake()
            return
        self._running = asyncio.ensure_future(self._commit(appends, callbacks, cursors))

    async def _commit(
        self, appends: list[Append], callbacks: list[Committed], cursors: dict[str, int]
    ) -> None:
        try:
            try:
                results: list[StreamPosition | Exception] = await self._store.append_batch(
                    appends, cursors
                )
            except BackendUnavailable as exc:
                results = [exc] * len(appends)
            except Exception as exc:  # a bug in a store: every caller hears of it
                logger.exception("store append failed")
                results = [exc] * len(appends)
            self._release(callbacks, results)
        finally:
            self._running = None
            if self._appends or self._cursors:
                self._start()

    def _release(
        self, callbacks: list[Committed], results: list[StreamPosition | Exception]
    ) -> None:
        """Tell every append of a group how it ended, in order, in one go."""
        self.groups += 1
        for done, result in zip(callbacks, results, strict=True):
            try:
                if isinstance(result, BaseException):
                    done(None, result)
                else:
                    done(result, None)
            except Exception:
                logger.exception("append callback failed")
