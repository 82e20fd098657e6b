"""Putting a node's deliveries back in offset order.

Offsets come from the shared store, but each node publishes to the broker after its own append,
so publications of two nodes can reach a third one crossed (offset 2 before offset 1). The
sequencer holds a stream's later frames until the missing earlier one arrives, reads it from the
store if it does not arrive by itself first, and drops what was already delivered. It only
tracks streams with a listener on this node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from ..protocol import Frame
from ..types import StoredMessage, StreamPosition

__all__ = ["Sequencer"]

logger = logging.getLogger("wshub.sequencer")

Deliver = Callable[[str, int, Frame, bool], int]
Read = Callable[[str, int, int], Awaitable[tuple[Sequence[StoredMessage], StreamPosition]]]
Envelope = Callable[[str, bytes, int], bytes]


class Sequencer:
    """Per stream key: the last offset delivered on this node, and frames waiting for a gap."""

    def __init__(
        self,
        *,
        deliver: Deliver,
        listeners: Callable[[str], int],
        read: Read,
        envelope: Envelope,
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self._deliver = deliver
        self._listeners = listeners
        self._read = read
        self._envelope = envelope
        self._spawn = spawn
        self.last: dict[str, int] = {}
        self._held: dict[str, dict[int, Frame]] = {}

    def push(self, key: str, offset: int, frame: Frame, *, remote: bool) -> int:
        """Deliver now, hold, or drop. Returns how many local listeners it reaches."""
        if not self._listeners(key):
            return 0
        last = self.last.get(key)
        if last is not None and offset <= last:
            return 0  # already delivered, or replayed to every listener then
        held = self._held.get(key)
        if last is not None and offset > last + 1:
            if held is None:
                held = self._held[key] = {}
                self._spawn(self._fill_gap(key))
            held[offset] = frame
            return self._listeners(key)
        self.last[key] = offset
        n = self._deliver(key, offset, frame, remote)
        if held:
            self._release(key)
        return n

    def caught_up(self, key: str, offset: int) -> None:
        """A listener's catch-up read the stream up to ``offset``: nothing at or below it is
        delivered live any more."""
        if self.last.get(key, -1) < offset:
            self.last[key] = offset

    def forget(self, key: str) -> None:
        """The last local listener of ``key`` left."""
        self.last.pop(key, None)
        self._held.pop(key, None)

    def _release(self, key: str) -> None:
        held = self._held.get(key)
        while held:
            nxt = self.last[key] + 1
            frame = held.pop(nxt, None)
            if frame is None:
                return
            self.last[key] = nxt
            self._deliver(key, nxt, frame, True)
        self._held.pop(key, None)

    async def _fill_gap(self, key: str) -> None:
        await asyncio.sleep(0)  # a frame still in flight in this very turn may land first
        held = self._held.get(key)
        last = self.last.get(key)
        if not held or last is None:
            self._held.pop(key, None)
            return
        try:
            messages, _ = await self._read(key, last, min(held) - last - 1)
        except Exception as exc:  # deliver what is here rather than hold it forever
            logger.warning("cannot fill a gap in %r from the store: %s", key, exc)
            messages = ()
        for m in messages:
            if self.last.get(key, 0) < m.offset and key in self._held:
                self.last[key] = m.offset
                self._deliver(key, m.offset, Frame(self._envelope(key, m.data, m.offset)), True)
        held = self._held.get(key)
        if held and key in self.last:
            # What retention dropped is gone: go on from the first held frame.
            self.last[key] = max(self.last[key], min(held) - 1)
            self._release(key)
            if self._held.get(key):  # a further gap: its own fill will come with the next frame
                self._held.pop(key, None)
