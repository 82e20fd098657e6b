"""This node's side of fan-out: which local sessions listen to what, and getting frames to them.

Channel publications are queued per channel during an event-loop turn and delivered together at
its end (:meth:`LocalFanout.flush_batches`): every subscriber gets the turn's frames for the
channel as one pre-joined ``bytes`` object. Nothing here awaits; sends never block.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..protocol import Frame, FrameBatch
from ..types import UserId
from .session import Session
from .stats import HubStats

__all__ = ["LocalFanout", "channel_key", "message_envelope", "user_key"]


def channel_key(channel: str) -> str:
    return "c:" + channel


def user_key(user_id: str) -> str:
    return "u:" + user_id


def message_envelope(body: bytes, offset: int) -> bytes:
    """The ``message`` envelope for a stored channel publication body (see :meth:`Hub.publish`)."""
    return b'{"type":"message","payload":%s,"offset":%d}}' % (body[:-1], offset)


class _Batch:
    """One channel's publications during one loop turn, and which sessions already got a
    prefix of them early (because something else was sent to them directly meanwhile)."""

    __slots__ = ("early", "items", "remote")

    def __init__(self, first: tuple[int, Frame], remote: bool) -> None:
        self.items = [first]
        self.early: dict[Session, int] = {}
        # Frames from other nodes may arrive after a subscriber's catch-up already replayed
        # them from the store: those batches are checked against each session's floor.
        self.remote = remote


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

    def fanout(
        self, key: str, channel: str, offset: int, frame: Frame, *, remote: bool = False
    ) -> int:
        """Queue a publication for the channel's local subscribers; it goes out, with the rest
        of this loop turn's publications on the channel, when the turn's callbacks run.
        Returns the number of subscribers it will reach."""
        subscribers = self.channels.get(channel)
        if not subscribers:
            return 0
        batch = self.batches.get(channel)
        if batch is None:
            self.batches[channel] = _Batch((offset, frame), remote)
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self.flush_batches)
        else:
            batch.items.append((offset, frame))
            batch.remote = batch.remote or remote
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
        key = channel_key(channel)
        items = batch.items
        early = batch.early
        frames = FrameBatch([frame for _, frame in items])
        remote = batch.remote
        overflowed = None
        for s in subscribers:
            if (early and s in early) or (remote and s._floors and key in s._floors):
                # got part of the batch already (see send_pending_to), or may have had some of
                # it replayed: only what is newer goes out
                rest = items[early.get(s, 0) :] if early else items
                floor = s._floors.get(key, 0) if remote else 0
                if floor:
                    rest = [item for item in rest if item[0] > floor]
                if rest and not self.send_items(s, key, rest):
                    overflowed = overflowed or []
                    overflowed.append(s)
                continue
            recovering = s._recovering
            if recovering and key in recovering:
                recovering[key].extend(items)
            elif not s.conn.send_batch(frames):
                overflowed = overflowed or []
                overflowed.append(s)
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
                if not self.send_items(session, channel_key(channel), batch.items[done:]):
                    self._on_overflow(session)
                batch.early[session] = len(batch.items)

    def send_items(self, s: Session, key: str, items: list[tuple[int, Frame]]) -> bool:
        recovering = s._recovering
        if recovering and key in recovering:
            recovering[key].extend(items)
            return True
        return s.conn.send_batch(FrameBatch([frame for _, frame in items]))

    def deliver_user(
        self, uid: UserId, key: str, offset: int, frame: Frame, *, remote: bool = False
    ) -> bool:
        sessions = self.users.get(uid)
        if not sessions:
            return False
        for s in list(sessions):
            recovering = s._recovering
            if recovering and key in recovering:
                recovering[key].append((offset, frame))
            elif not (remote and offset <= s._floors.get(key, 0)):
                s.send_frame(frame)
        self.stats.deliveries += len(sessions)
        return True

    def broadcast(self, frame: Frame, sessions: list[Session]) -> int:
        for s in sessions:
            s.send_frame(frame)
        self.stats.deliveries += len(sessions)
        return len(sessions)
