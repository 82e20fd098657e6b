"""Who on this node gets which frame of a stream: the one owner of delivery state.

For every stream with a listener on this node (:class:`StreamState`) it keeps

- ``last``: the highest offset handed to the node's listeners. Frames are handed out in offset
  order, each once: one at or below ``last`` is dropped (this node's own publication coming back,
  a repeat), one right after it is delivered, one further ahead waits in ``held``;
- ``inflight``: this node's own appends to the stream that have not completed yet. A frame from
  another node that arrives ahead of ``last + 1`` may be waiting for one of them; once none is in
  flight, a gap is real (messages lost on a broken broker connection) and is read from the store;
- per listener catching up (``holding``): everything seen for the stream while its reply and
  replay are prepared, sorted out when it is released (:meth:`StreamTable.release`);
- per listener whose catch-up read saw further than ``last`` (``floors``): the offset below which
  it already has everything.

:func:`wants` is the single rule "does this session get this frame now"; the fan-out and the
user delivery both ask it. Engines that append and publish in one step (Redis, the in-process
bus) deliver every stream to every node in offset order, so ``held`` only ever bridges the short
time until this node's own commit returns.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from ..protocol import Frame
from ..types import StoredMessage, StreamPosition
from .streams import StreamKey

if TYPE_CHECKING:
    from .session import Session

__all__ = ["StreamState", "StreamTable", "wants"]

logger = logging.getLogger("wshub.delivery")

#: Messages per store read when closing a gap.
GAP_READ_LIMIT = 1000

Deliver = Callable[["StreamState", int, Frame], None]
Read = Callable[[str, int, int], Awaitable[tuple[Sequence[StoredMessage], StreamPosition]]]


class StreamState:
    """This node's delivery state for one stream (see the module docstring)."""

    __slots__ = ("filling", "floor_max", "floors", "held", "holding", "inflight", "key", "last")

    def __init__(self, key: StreamKey) -> None:
        self.key = key
        self.last: int | None = None
        self.held: dict[int, Frame] = {}
        self.inflight = 0
        self.holding: dict[Session, list[tuple[int, Frame]]] = {}
        self.floors: dict[Session, int] = {}
        self.floor_max = 0
        self.filling = False

    def delivered(self, offset: int) -> None:
        """Listeners were handed everything up to ``offset`` (the fan-out calls this once the
        frames went out, after :func:`wants` was asked): floors at or below it are done."""
        if offset >= self.floor_max:
            self.floors.clear()
            self.floor_max = 0


def wants(state: StreamState, session: Session, offset: int, frame: Frame) -> bool:
    """Whether ``session`` gets ``frame`` sent now; a session catching up keeps it for later."""
    holding = state.holding
    if holding:
        kept = holding.get(session)
        if kept is not None:
            kept.append((offset, frame))
            return False
    floors = state.floors
    return not (floors and offset <= floors.get(session, 0))


class StreamTable:
    """Every stream this node has listeners for. ``deliver(state, offset, frame)`` hands one frame
    to the stream's listeners (through :func:`wants`); it is called in offset order."""

    def __init__(
        self,
        *,
        deliver: Deliver,
        read: Read,
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self._deliver = deliver
        self._read = read
        self._spawn = spawn
        self.streams: dict[str, StreamState] = {}

    # -- listeners -----------------------------------------------------------------------------

    def get(self, topic: str) -> StreamState | None:
        return self.streams.get(topic)

    def open(self, key: StreamKey) -> StreamState:
        state = self.streams.get(key.topic)
        if state is None:
            state = self.streams[key.topic] = StreamState(key)
        return state

    def close(self, key: StreamKey) -> None:
        """The stream's last local listener left."""
        self.streams.pop(key.topic, None)

    def hold(self, session: Session, key: StreamKey) -> None:
        """``session`` starts catching up ``key``: keep what arrives for it meanwhile."""
        self.open(key).holding.setdefault(session, [])

    def held_for(self, session: Session, key: StreamKey) -> int:
        """How many live frames wait for ``session``'s catch-up of ``key``."""
        state = self.streams.get(key.topic)
        kept = state.holding.get(session) if state is not None else None
        return len(kept) if kept is not None else 0

    def drop(self, session: Session, key: StreamKey) -> None:
        """``session`` no longer follows ``key`` (it left, or its catch-up failed)."""
        state = self.streams.get(key.topic)
        if state is not None:
            state.holding.pop(session, None)
            state.floors.pop(session, None)

    def release(
        self,
        session: Session,
        key: StreamKey,
        pos: StreamPosition,
        messages: Sequence[StoredMessage],
        send: Callable[[Frame], None],
        *,
        sent: int = 0,
    ) -> int:
        """End ``session``'s catch-up: send the stored ``messages`` (read at ``pos``), then what
        arrived meanwhile that is newer, in offset order, each once. From now on it gets what
        follows ``pos``. ``sent``: the replay went up to there already (earlier pages).
        Returns the last offset sent (0 if none)."""
        state = self.open(key)
        kept = state.holding.pop(session, [])
        last = sent
        for m in messages:
            send(Frame(key.frame_data(m.data, m.offset)))
            last = m.offset
        seen = max(pos.offset, last)
        if kept:
            kept.sort(key=_offset)
            for offset, frame in kept:
                if offset > seen:
                    send(frame)
                    seen = last = offset
        if state.last is None:
            # The first listener's read says where the stream stands; what waited for it goes
            # out now (frames up to here were in the read).
            state.last = seen
            self._drain(state)
        elif seen > state.last:
            state.floors[session] = seen
            if seen > state.floor_max:
                state.floor_max = seen
        return last

    # -- frames --------------------------------------------------------------------------------

    def submitted(self, topic: str) -> None:
        """This node queued an append to ``topic``."""
        state = self.streams.get(topic)
        if state is not None:
            state.inflight += 1

    def committed(self, topic: str, offset: int, frame: Frame | None) -> None:
        """This node's append to ``topic`` completed at ``offset`` (``frame`` None: it failed)."""
        state = self.streams.get(topic)
        if state is None:
            return
        if state.inflight:
            state.inflight -= 1
        if frame is not None:
            self.push(state, offset, frame)
        elif not state.inflight and state.held:
            self._fill(state)

    def received(self, topic: str, offset: int, frame: Frame) -> None:
        """A frame of ``topic`` from the broker (another node's, or ours coming back)."""
        state = self.streams.get(topic)
        if state is not None:
            self.push(state, offset, frame)

    def push(self, state: StreamState, offset: int, frame: Frame) -> None:
        last = state.last
        if last is None or state.filling:
            state.held[offset] = frame
            return
        if offset <= last:
            # A repeat, or ours coming back: listeners have it, but one still catching up may
            # not (it sorts out what it needs on release).
            for kept in state.holding.values():
                kept.append((offset, frame))
            return
        if offset > last + 1:
            state.held[offset] = frame
            if not state.inflight:
                self._fill(state)
            return
        self._advance(state, offset, frame)
        if state.held:
            self._drain(state)

    def resync(self) -> None:
        """The broker may have lost messages: read every stream from ``last`` on."""
        for state in list(self.streams.values()):
            if state.last is not None and not state.filling:
                self._fill(state, whole=True)

    # -- internals -----------------------------------------------------------------------------

    def _advance(self, state: StreamState, offset: int, frame: Frame) -> None:
        state.last = offset
        self._deliver(state, offset, frame)

    def _drain(self, state: StreamState) -> None:
        """Deliver what is held and now next in line; drop what is behind ``last``."""
        held = state.held
        last = state.last
        assert last is not None
        for offset in [o for o in held if o <= last]:
            frame = held.pop(offset)
            for kept in state.holding.values():
                kept.append((offset, frame))
        while held:
            nxt = held.pop(last + 1, None)
            if nxt is None:
                break
            last += 1
            self._advance(state, last, nxt)
        if held and not state.inflight:
            self._fill(state)

    def _fill(self, state: StreamState, *, whole: bool = False) -> None:
        if state.filling or state.last is None:
            return
        state.filling = True
        self._spawn(self._fill_gap(state, whole))

    async def _fill_gap(self, state: StreamState, whole: bool) -> None:
        """Read what is missing between ``last`` and the first held frame (``whole``: everything
        after ``last``) and deliver it, in order; what retention dropped is skipped. Frames that
        arrive meanwhile are held, so ``last`` moves only here until the read is done."""
        topic = state.key.topic
        try:
            while self.streams.get(topic) is state and state.last is not None:
                last = state.last
                upto = min(state.held) - 1 if state.held else None
                if upto is None and not whole:
                    return
                limit = GAP_READ_LIMIT if upto is None else min(upto - last, GAP_READ_LIMIT)
                if limit <= 0:
                    break
                try:
                    messages, _ = await self._read(topic, last, limit)
                    failed = False
                except Exception as exc:
                    logger.warning("cannot read a gap in %r from the store: %s", topic, exc)
                    messages, failed = (), True
                if self.streams.get(topic) is not state:
                    return
                held = state.held
                for m in messages:  # consecutive offsets, from the first one still kept
                    if m.offset > state.last:
                        kept_frame = held.pop(m.offset) if m.offset in held else None
                        frame = kept_frame or Frame(state.key.frame_data(m.data, m.offset))
                        self._advance(state, m.offset, frame)
                complete = failed or len(messages) < limit
                if upto is not None and state.last < upto and complete:
                    # Gone from the store (retention), or the store is down: go on after them
                    # rather than hold what is here for ever.
                    if failed:
                        logger.warning("%r: offsets %d-%d skipped", topic, state.last + 1, upto)
                    state.last = upto
                if whole and complete:
                    whole = False
                self._drain(state)
        finally:
            state.filling = False
        if state.held and not state.inflight and self.streams.get(topic) is state:
            self._drain(state)


def _offset(item: tuple[int, Frame]) -> int:
    return item[0]
