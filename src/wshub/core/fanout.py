"""This node's side of fan-out: which local sessions listen to what, and getting frames to them.

Channel publications are queued per channel during an event-loop turn and delivered together at
its end (:meth:`LocalFanout.flush_batches`): every subscriber gets the turn's frames for the
channel as one pre-joined ``bytes`` object. Which session gets which frame is decided by
:func:`wshub.core.delivery.wants`; nothing here awaits, and sends never block.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..protocol import Frame, FrameBatch
from ..types import UserId
from .delivery import StreamState, wants
from .session import Session
from .stats import HubStats

__all__ = ["LocalFanout"]


class _Batch:
    """One channel's publications during one loop turn, and which sessions already got a
    prefix of them early (because something else was sent to them directly meanwhile)."""

    __slots__ = ("early", "items", "state")

    def __init__(self, state: StreamState, first: tuple[int, Frame]) -> None:
        self.state = state
        self.items = [first]
        self.early: dict[Session, int] = {}


class LocalFanout:
    """Local subscribers per channel, local sessions per user, and the turn's batches."""

    def __init__(self, stats: HubStats, on_overflow: Callable[[Session], None]) -> None:
        self.stats = stats
        self._on_overflow = on_overflow
        self.channels: dict[str, set[Session]] = {}
        self.users: dict[UserId, set[Session]] = {}
        # Channel publications of the current loop turn, delivered together at its end.
        self.batches: dict[str, _Batch] = {}
        self._scheduled = False

    def fanout(self, state: StreamState, offset: int, frame: Frame) -> int:
        """Queue a publication for the channel's local subscribers; it goes out, with the rest
        of this loop turn's publications on the channel, when the turn's callbacks run.
        Returns the number of subscribers it will reach."""
        channel = state.key.name
        subscribers = self.channels.get(channel)
        if not subscribers:
            return 0
        batch = self.batches.get(channel)
        if batch is None:
            self.batches[channel] = _Batch(state, (offset, frame))
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self.flush_batches)
        else:
            batch.items.append((offset, frame))
        n = len(subscribers)
        self.stats.deliveries += n
        return n

    def flush_batches(self) -> None:
        self._scheduled = False
        batches, self.batches = self.batches, {}
        for channel, batch in batches.items():
            self.deliver_batch(channel, batch)

    def flush_channel(self, channel: str) -> None:
        """Deliver the channel's queued publications now: before its subscriber set changes,
        so a new subscriber never gets what was published before it subscribed."""
        batch = self.batches.pop(channel, None)
        if batch is not None:
            self.deliver_batch(channel, batch)

    def deliver_batch(self, channel: str, batch: _Batch) -> None:
        subscribers = self.channels.get(channel)
        if not subscribers:
            return
        items = batch.items
        early = batch.early
        state = batch.state
        holding, floors = state.holding, state.floors
        frames: FrameBatch | None = None
        overflowed = None
        for s in subscribers:
            if (early and s in early) or (holding and s in holding) or (floors and s in floors):
                # got part of the batch already (see send_pending_to), or catching up, or had
                # some of it replayed: only what it wants goes out
                rest = items[early.get(s, 0) :] if early else items
                if rest and not self.send_items(s, state, rest):
                    overflowed = overflowed or []
                    overflowed.append(s)
                continue
            if frames is None:
                frames = FrameBatch([frame for _, frame in items])
            if not s.conn.send_batch(frames):
                overflowed = overflowed or []
                overflowed.append(s)
        if state.floors:
            state.delivered(items[-1][0])
        if overflowed:
            for s in overflowed:
                self._on_overflow(s)

    def send_pending_to(self, session: Session) -> None:
        """Before a frame goes to ``session`` directly (a reply, a user message), send it what
        this turn's channel batches hold for it, so its frames keep their order: a ``message``
        published before a reply arrives before that reply."""
        batches, channels = self.batches, session.channels
        names = (
            [c for c in batches if c in channels]
            if len(batches) <= len(channels)
            else [c for c in channels if c in batches]
        )
        for channel in names:
            batch = batches[channel]
            done = batch.early.get(session, 0)
            if done < len(batch.items):
                if not self.send_items(session, batch.state, batch.items[done:]):
                    self._on_overflow(session)
                batch.early[session] = len(batch.items)

    @staticmethod
    def send_items(s: Session, state: StreamState, items: list[tuple[int, Frame]]) -> bool:
        if state.holding or state.floors:
            items = [item for item in items if wants(state, s, item[0], item[1])]
            if not items:
                return True
        return s.conn.send_batch(FrameBatch([frame for _, frame in items]))

    def deliver_user(self, state: StreamState, offset: int, frame: Frame) -> int:
        """Hand a frame of a user's stream to the user's sessions here; returns how many were
        handed it now (a session catching up gets it with its replay)."""
        sessions = self.users.get(UserId(state.key.name))
        if not sessions:
            return 0
        handed = 0
        for s in list(sessions):
            if wants(state, s, offset, frame):
                s.send_frame(frame)
                handed += 1
        if state.floors:
            state.delivered(offset)
        self.stats.deliveries += len(sessions)
        return handed

    def broadcast(self, frame: Frame, sessions: list[Session]) -> int:
        for s in sessions:
            s.send_frame(frame)
        self.stats.deliveries += len(sessions)
        return len(sessions)
