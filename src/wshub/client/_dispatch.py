"""Running application callbacks in order, off the reader task."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["Callback", "Dispatcher"]

logger = logging.getLogger("wshub.client")

T = TypeVar("T")
#: A callback the client calls: a plain function, or a coroutine function (awaited).
Callback = Callable[[T], Awaitable[None] | None]


class Dispatcher:
    """Calls callbacks one at a time, in submission order, in a task of its own.

    The reader only submits, so a callback may await the client (``await client.publish(...)``
    inside a message callback) without deadlocking the reader that must deliver the reply. An
    exception in a callback is logged and does not stop the others.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Callable[[], Awaitable[None] | None] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="wshub-client-dispatch")

    def submit(self, callback: Callback[T], arg: T) -> None:
        self._queue.put_nowait(lambda: callback(arg))

    @property
    def in_dispatcher(self) -> bool:
        """Whether the caller runs inside a callback."""
        return self._task is not None and asyncio.current_task() is self._task

    async def stop(self) -> None:
        """Run what is queued, then end. From inside a callback: end after it returns."""
        task = self._task
        if task is None or task.done():
            return
        self._queue.put_nowait(None)
        if not self.in_dispatcher:
            await task

    async def _run(self) -> None:
        while (call := await self._queue.get()) is not None:
            try:
                result = call()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("client callback failed")
