"""Where the application stands in one stream, and what a (re)join tells about it. Pure.

A stream is a channel or the user's own stream. The client remembers the stream's ``epoch``, the
highest offset it has handed to the application (``delivered``), and the stream's head as the
server reported it when the client joined without ``since`` (``head``). It resumes from
``max(delivered, head)``: after a fresh join nothing before ``head`` is owed to this client
(for the user stream, the server itself replays what no connection has been handed yet, right
after ``authenticated``; those messages are older than ``head`` but newer than ``delivered``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..types import StreamPosition

__all__ = ["StreamState"]


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
        return recovered is False

    def accept(self, offset: int) -> bool:
        """True when the message at ``offset`` is new (and records it); False for a duplicate."""
        if offset <= self.delivered:
            return False
        self.delivered = offset
        return True
