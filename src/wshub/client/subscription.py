"""Async iterators over what the client receives: a channel :class:`Subscription` and the user's
:class:`MessageStream`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from ..types import StreamPosition
from .models import ChannelMessage, Envelope
from .streams import StreamState

__all__ = ["Feed", "MessageStream", "Subscription"]

T = TypeVar("T")


class _End:
    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Feed(Generic[T]):
    """An unbounded, ordered queue read as an async iterator, that can be ended.

    The client's reader puts items with :meth:`_put` (never blocks); iteration stops after
    :meth:`_end`, raising the error it was ended with, if any, once the items before it are read.
    Unbounded on purpose: bounding it would mean dropping messages or stalling every stream of
    the connection; an application that cannot keep up should use a callback that does less.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[T | _End] = asyncio.Queue()
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    def _put(self, item: T) -> None:
        if not self._ended:
            self._queue.put_nowait(item)

    def _end(self, error: BaseException | None = None) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(_End(error))

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later read ends too
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def get(self, timeout: float | None = None) -> T:
        """The next item, waiting at most ``timeout`` seconds (``TimeoutError``); raises
        ``StopAsyncIteration`` once ended."""
        return await asyncio.wait_for(self.__anext__(), timeout)


class Subscription(Feed[ChannelMessage]):
    """A subscription to one channel, as returned by :meth:`Client.subscribe`.

    Iterate it (``async for msg in sub``) unless a callback was given, in which case messages go
    to the callback only. Each publication arrives once, in offset order, across reconnects;
    ``recovered`` is False after a resume that could not close the gap (see :class:`Gap`).
    Iteration ends after :meth:`unsubscribe` or when the client closes.
    """

    def __init__(
        self,
        channel: str,
        *,
        state: StreamState,
        callback: Callable[[ChannelMessage], Awaitable[None] | None] | None,
        unsubscribe: Callable[[Subscription], Awaitable[None]],
    ) -> None:
        super().__init__()
        self.channel = channel
        self.state = state
        self.callback = callback
        self.recovered: bool | None = None
        self._unsubscribe = unsubscribe

    @property
    def position(self) -> StreamPosition | None:
        """The last position seen (offset and epoch); pass it to ``subscribe(since=...)`` in a
        later process to resume from there."""
        return self.state.position

    @property
    def active(self) -> bool:
        return not self.ended

    async def unsubscribe(self) -> None:
        """Stop the subscription (server side too, when connected). Idempotent."""
        await self._unsubscribe(self)

    def __repr__(self) -> str:
        return f"<Subscription {self.channel!r} position={self.position} active={self.active}>"


class MessageStream(Feed[Envelope]):
    """The user's own stream (``chat``, ``notification``, anything with an envelope ``offset``)
    as an async iterator, from :meth:`Client.user_messages`. Create it before connecting to see
    the messages that were waiting for the user. :meth:`close` stops it."""

    def __init__(self, on_close: Callable[[MessageStream], None]) -> None:
        super().__init__()
        self._on_close = on_close

    def close(self) -> None:
        self._on_close(self)
        self._end()
