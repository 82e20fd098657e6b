"""Where the application stands in one stream, and what a (re)join tells about it. Pure.

A stream is a channel or the user's own stream. The client remembers the stream's ``epoch``, the
highest offset it has handed to the application (``delivered``), and the stream's head as the
server reported it when the client joined without ``since`` (``head``). It resumes from
``max(delivered, head)``: after a fresh join nothing before ``head`` is owed to this client
(for the user stream, the server itself replays what no connection has been handed yet, right
after ``authenticated``; those messages are older than ``head`` but newer than ``delivered``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..types import StreamPosition

__all__ = ["GapFill", "StreamState"]

T = TypeVar("T")


@dataclass(slots=True)
class StreamState:
    """Mutable per-stream bookkeeping for gapless, duplicate-free delivery.

    Contract: call :meth:`joined` with each ``subscribed``/``authenticated`` reply, before any
    message that follows it; call :meth:`accept` with each message's offset, in arrival order,
    and hand the message on only when it returns True. :attr:`since`/:attr:`epoch` are what the
    next join should carry.
    """

    epoch: str | None = None
    delivered: int = 0
    head: int = 0
    known: bool = False  # False until joined (or given a position to resume from)
    #: The last join said ``recovered: false``: the next message starts the numbering over (the
    #: first one kept after a trimmed gap), it is no jump.
    loose: bool = False

    @classmethod
    def resuming(cls, since: int, epoch: str | None) -> StreamState:
        """A stream to be resumed after offset ``since`` of ``epoch`` (None: whatever epoch)."""
        return cls(epoch, since, since, True)

    @property
    def since(self) -> int | None:
        """The offset to resume after, or None to join fresh."""
        return max(self.delivered, self.head) if self.known else None

    @property
    def position(self) -> StreamPosition | None:
        """Where the stream stands for this client (None before the first join)."""
        since = self.since
        if since is None or self.epoch is None:
            return None
        return StreamPosition(since, self.epoch)

    def joined(
        self,
        offset: int,
        epoch: str,
        recovered: bool | None,
        since: int | None,
        since_epoch: str | None,
    ) -> bool:
        """Apply a join reply: the stream's ``offset``/``epoch`` and ``recovered`` as the server
        sent them, and the ``since``/``since_epoch`` the join carried (None: a fresh join).
        Returns True when a gap could not be closed (``recovered: false``)."""
        if since is None:
            if epoch != self.epoch:
                self.delivered = 0
            self.head = offset
        elif since_epoch is not None and epoch != since_epoch:
            # The server lost the stream and replays all it keeps of the new one: nothing of the
            # old numbering means anything any more.
            self.delivered = 0
            self.head = 0
        elif since > offset:
            # The client is ahead of the stream: start again where the stream is, or every new
            # message up to the old offset would look like a duplicate.
            self.delivered = min(self.delivered, offset)
            self.head = min(self.head, offset)
        self.epoch = epoch
        self.known = True
        self.loose = recovered is False
        return recovered is False

    def is_duplicate(self, offset: int) -> bool:
        """Whether the message at ``offset`` was handed on already."""
        return offset <= self.delivered

    def jumps(self, offset: int) -> bool:
        """Whether a new message at ``offset`` leaves a gap after :attr:`since`: something
        between was not received (a live stream must be contiguous; after a fresh join of the
        user stream the server's replay of undelivered messages is older than ``head``, so no
        jump either)."""
        since = self.since
        return since is not None and not self.loose and offset > since + 1

    def accept(self, offset: int) -> bool:
        """True when the message at ``offset`` is new (and records it); False for a duplicate."""
        if offset <= self.delivered:
            return False
        self.delivered = offset
        self.loose = False
        return True


@dataclass(slots=True)
class GapFill(Generic[T]):
    """A jump seen on a live stream, being filled by a resume from :attr:`since` (the last
    offset received without a gap, on the same connection): the messages after the gap wait in
    :attr:`held` until the replay has delivered what is missing before them.

    The client resumes, then sends a ``ping``: the server sends a resume's replay right after
    its reply, so once the ``pong`` is in, the replay is complete and whatever is still held
    goes out (:meth:`release` with ``flush``), in order, gaps or not.
    """

    since: int
    first_seen: int
    held: dict[int, T] = field(default_factory=dict)
    #: A ``Gap`` with ``lost`` was reported already (the resume said ``recovered: false``).
    lost_reported: bool = False

    def hold(self, offset: int, item: T) -> None:
        self.held.setdefault(offset, item)

    def release(
        self, state: StreamState, *, flush: bool = False
    ) -> tuple[list[T], list[tuple[int, int]]]:
        """Take out of :attr:`held`, in order, what may go now, recording it in ``state``: what
        follows ``state.delivered`` without a gap; with ``flush``, everything, with the ranges
        still missing between. Duplicates are dropped."""
        out: list[T] = []
        missing: list[tuple[int, int]] = []
        for offset in sorted(self.held):
            if state.is_duplicate(offset):
                del self.held[offset]
                continue
            contiguous = state.loose or offset == state.delivered + 1
            if not (contiguous or flush):
                break
            if not contiguous:
                missing.append((state.delivered + 1, offset - 1))
            out.append(self.held.pop(offset))
            state.accept(offset)
        return out, missing
