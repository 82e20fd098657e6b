"""Handing what arrives to the application: channel messages to their subscription, the user
stream to iterators and callbacks, each message once and in order across reconnects."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Literal, TypeVar

from ..types import JSONObject
from ._dispatch import Callback, Dispatcher
from .models import ChannelMessage, Envelope, Gap
from .requests import ReplyHook
from .streams import GapFill, StreamState
from .subscription import MessageStream, Subscription

T = TypeVar("T")
#: Asked by the distributor to resume a stream on the current connection to fill a gap: the
#: channel's subscription, or None for the user stream.
FillRequest = Callable[[Subscription | None], None]

__all__ = ["Distributor"]

logger = logging.getLogger("wshub.client")


class Distributor:
    """Everything the client knows about its streams, and who gets each incoming message.

    The client's reader calls :meth:`deliver` for every frame that is not a reply, in arrival
    order, and applies join replies through the hooks from :meth:`user_joined` and
    :meth:`sub_joined`. Callbacks run on the :class:`Dispatcher`; iterators are fed directly.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        user: StreamState,
        on_gap: Callback[Gap] | None,
        fill: FillRequest | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._on_gap = on_gap
        #: Called when a live stream jumps (set by the client: it resumes the stream).
        self.fill = fill
        self._user_fill: GapFill[Envelope] | None = None
        self._channel_fills: dict[str, GapFill[ChannelMessage]] = {}
        self.user = user
        self.user_id: str | None = None
        #: ``recovered`` of the last user-stream resume (None: no resume yet).
        self.user_recovered: bool | None = None
        self.subs: dict[str, Subscription] = {}
        self.streams: set[MessageStream] = set()
        self._handlers: dict[str, list[Callback[Envelope]]] = {}

    # -- registration --------------------------------------------------------------------------

    def on(self, type_: str, callback: Callback[Envelope]) -> None:
        self._handlers.setdefault(type_, []).append(callback)

    def off(self, type_: str, callback: Callback[Envelope]) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._handlers[type_].remove(callback)

    def remove(self, sub: Subscription) -> None:
        if self.subs.get(sub.channel) is sub:
            del self.subs[sub.channel]
            self._channel_fills.pop(sub.channel, None)

    def connection_lost(self) -> None:
        """Forget the gaps being filled: what they hold back is replayed by the resume of the
        next connection, which starts from the last offset delivered without a gap."""
        self._user_fill = None
        self._channel_fills.clear()

    def end_all(self, error: BaseException | None) -> None:
        """End every subscription and user stream iterator (with ``error``, if any)."""
        for sub in self.subs.values():
            sub._end(error)
        for stream in self.streams:
            stream._end(error)
        self.streams.clear()

    # -- joining -------------------------------------------------------------------------------

    def auth_payload(self, token: str) -> JSONObject:
        """The ``authenticate`` payload: with ``since``/``epoch`` once the stream is known."""
        return _with_position({"token": token}, self.user)

    def sub_payload(self, sub: Subscription) -> JSONObject:
        return _with_position({"channel": sub.channel}, sub.state)

    def user_refreshed(self) -> ReplyHook:
        """The hook for the ``authenticated`` reply to a token refresh (``refreshed: true``; no
        replay follows, the stream's position stays as it is)."""

        def hook(env: Envelope) -> None:
            uid = env.payload.get("userId")
            if isinstance(uid, str):
                self.user_id = uid
            if env.payload.get("refreshed") is not True:
                logger.info("the server did not say the token was refreshed: %s", env.payload)

        return hook

    def user_joined(self, *, fresh: bool = False) -> ReplyHook:
        """The hook for the ``authenticated`` reply to an authentication sent now (``fresh``: one
        without ``since``, i.e. the token was in the handshake)."""
        since = None if fresh else self.user.since
        since_epoch = None if fresh else self.user.epoch

        def hook(env: Envelope) -> None:
            p = env.payload
            uid = p.get("userId")
            self.user_id = uid if isinstance(uid, str) else None
            joined = _join(p)
            if joined is None:
                return  # a server without user streams
            offset, epoch, recovered = joined
            if since is not None:
                self.user_recovered = recovered
            if self.user.joined(offset, epoch, recovered, since, since_epoch):
                self._gap(Gap("user", self.user_id or "", since or 0, since_epoch, offset, epoch))

        return hook

    def sub_joined(self, sub: Subscription) -> ReplyHook:
        """The hook for the ``subscribed`` reply to a subscribe sent now; it also registers a new
        subscription, before the messages that follow the reply are handled."""
        since, since_epoch = sub.state.since, sub.state.epoch

        def hook(env: Envelope) -> None:
            if sub.ended or self.subs.setdefault(sub.channel, sub) is not sub:
                return
            joined = _join(env.payload)
            if joined is None:
                return
            offset, epoch, recovered = joined
            sub.recovered = recovered
            if sub.state.joined(offset, epoch, recovered, since, since_epoch):
                self._gap(Gap("channel", sub.channel, since or 0, since_epoch, offset, epoch))

        return hook

    # -- filling gaps on a live stream -----------------------------------------------------------

    def user_fill_payload(self, token: str) -> JSONObject | None:
        """The ``authenticate`` that fills the user stream's gap (None: no gap being filled)."""
        fill = self._user_fill
        if fill is None:
            return None
        payload: JSONObject = {"token": token, "since": fill.since}
        if self.user.epoch is not None:
            payload["epoch"] = self.user.epoch
        return payload

    def sub_fill_payload(self, sub: Subscription) -> JSONObject | None:
        """The ``subscribe`` that fills the channel's gap (None: no gap being filled)."""
        fill = self._channel_fills.get(sub.channel)
        if fill is None or self.subs.get(sub.channel) is not sub:
            return None
        payload: JSONObject = {"channel": sub.channel, "since": fill.since}
        if sub.state.epoch is not None:
            payload["epoch"] = sub.state.epoch
        return payload

    def user_refilled(self) -> ReplyHook:
        """The hook for the ``authenticated`` reply to :meth:`user_fill_payload`."""
        fill, since_epoch = self._user_fill, self.user.epoch

        def hook(env: Envelope) -> None:
            if fill is None or self._user_fill is not fill:
                return
            uid = env.payload.get("userId")
            if isinstance(uid, str):
                self.user_id = uid
            joined = _join(env.payload)
            if joined is not None:
                self.user_recovered = joined[2]
            self._filled("user", self.user_id or "", self.user, fill, joined, since_epoch)
            self._release(self.user, fill, self._hand_user, reply=True)

        return hook

    def sub_refilled(self, sub: Subscription) -> ReplyHook:
        """The hook for the ``subscribed`` reply to :meth:`sub_fill_payload`."""
        fill, since_epoch = self._channel_fills.get(sub.channel), sub.state.epoch

        def hook(env: Envelope) -> None:
            if fill is None or self._channel_fills.get(sub.channel) is not fill:
                return
            joined = _join(env.payload)
            if joined is not None:
                sub.recovered = joined[2]
            self._filled("channel", sub.channel, sub.state, fill, joined, since_epoch)
            self._release(sub.state, fill, lambda msg: self._hand_channel(sub, msg), reply=True)

        return hook

    def user_fill_done(self, *, failed: bool = False) -> None:
        """The replay of the user stream's fill is complete (its ``pong`` is in; ``failed``: the
        resume was refused): hand on what is held, in order."""
        fill, self._user_fill = self._user_fill, None
        if fill is not None and self._flush(
            "user", self.user_id or "", self.user, fill, self._hand_user, failed
        ):
            self.user_recovered = False

    def sub_fill_done(self, sub: Subscription, *, failed: bool = False) -> None:
        """As :meth:`user_fill_done`, for a channel."""
        fill = self._channel_fills.get(sub.channel)
        if fill is None or self.subs.get(sub.channel) is not sub:
            return
        del self._channel_fills[sub.channel]
        if self._flush(
            "channel", sub.channel, sub.state, fill, lambda m: self._hand_channel(sub, m), failed
        ):
            sub.recovered = False

    def _filled(
        self,
        kind: Literal["channel", "user"],
        name: str,
        state: StreamState,
        fill: GapFill[T],
        joined: tuple[int, str, bool | None] | None,
        since_epoch: str | None,
    ) -> None:
        if joined is None:
            return
        offset, epoch, recovered = joined
        epoch_before = state.epoch
        if state.joined(offset, epoch, recovered, fill.since, since_epoch):
            if epoch != epoch_before:
                fill.held.clear()  # the old numbering: the replay brings the new one
            fill.lost_reported = True
            missing = (fill.since + 1, fill.first_seen - 1)
            self._gap(Gap(kind, name, fill.since, since_epoch, offset, epoch, missing, lost=True))

    def _release(
        self,
        state: StreamState,
        fill: GapFill[T],
        hand: Callable[[T], None],
        *,
        reply: bool = False,
    ) -> None:
        if reply and state.loose:
            # ``recovered: false``: the replay starts after a trimmed part, maybe before what is
            # held; its first message sets the numbering, and what is held goes after it.
            return
        items, _ = fill.release(state)
        for item in items:
            hand(item)

    def _flush(
        self,
        kind: Literal["channel", "user"],
        name: str,
        state: StreamState,
        fill: GapFill[T],
        hand: Callable[[T], None],
        failed: bool,
    ) -> bool:
        """Hand on everything ``fill`` holds; True when it reported a loss (now or before)."""
        since, epoch = state.delivered, state.epoch
        items, missing = fill.release(state, flush=True)
        if failed and not fill.lost_reported and not missing:
            missing = [(fill.since + 1, fill.first_seen - 1)]
        if missing and not fill.lost_reported:
            first, last = missing[0][0], missing[-1][1]
            self._gap(
                Gap(kind, name, since, epoch, state.delivered, epoch or "", (first, last), True)
            )
        for item in items:
            hand(item)
        return fill.lost_reported or bool(missing)

    def _arrive(
        self,
        kind: Literal["channel", "user"],
        name: str,
        state: StreamState,
        fill: GapFill[T] | None,
        offset: int,
        item: T,
        hand: Callable[[T], None],
        target: Subscription | None,
    ) -> GapFill[T] | None:
        """One stream message: handed on, dropped as a duplicate, or held back behind a gap.
        Returns the gap fill in progress for the stream afterwards."""
        if state.is_duplicate(offset):
            return fill
        if fill is not None:
            fill.hold(offset, item)
            self._release(state, fill, hand)
            return fill
        since = state.since
        if since is None or not state.jumps(offset):
            state.accept(offset)
            hand(item)
            return None
        fill = GapFill(since, offset)
        fill.hold(offset, item)
        missing = (since + 1, offset - 1)
        epoch = state.epoch
        self._gap(Gap(kind, name, since, epoch, offset, epoch or "", missing, lost=False))
        if self.fill is not None:
            self.fill(target)
        return fill

    # -- delivering ----------------------------------------------------------------------------

    def deliver(self, env: Envelope) -> None:
        """An incoming frame that is not a reply to a request."""
        if env.type == "message":
            self._channel_message(env)
            return
        if env.offset is not None:
            self._user_fill = self._arrive(
                "user",
                self.user_id or "",
                self.user,
                self._user_fill,
                env.offset,
                env,
                self._hand_user,
                None,
            )
            return
        self._callbacks(env)

    def _hand_user(self, env: Envelope) -> None:
        for stream in self.streams:
            stream._put(env)
        self._callbacks(env)

    def _callbacks(self, env: Envelope) -> None:
        for callback in (*self._handlers.get(env.type, ()), *self._handlers.get("*", ())):
            self._dispatcher.submit(callback, env)

    def _channel_message(self, env: Envelope) -> None:
        msg = ChannelMessage.from_payload(env.payload)
        sub = self.subs.get(msg.channel)
        if sub is None or sub.ended:
            return
        fill = self._arrive(
            "channel",
            sub.channel,
            sub.state,
            self._channel_fills.get(sub.channel),
            msg.offset,
            msg,
            lambda m: self._hand_channel(sub, m),
            sub,
        )
        if fill is None:
            self._channel_fills.pop(sub.channel, None)
        else:
            self._channel_fills[sub.channel] = fill

    def _hand_channel(self, sub: Subscription, msg: ChannelMessage) -> None:
        if sub.ended:
            return
        if sub.callback is not None:
            self._dispatcher.submit(sub.callback, msg)
        else:
            sub._put(msg)

    def _gap(self, gap: Gap) -> None:
        if gap.lost:
            logger.warning("could not resume %s %r without a gap: %s", gap.stream, gap.name, gap)
        else:
            logger.info("%s %r skipped offsets, resuming to fill: %s", gap.stream, gap.name, gap)
        if self._on_gap is not None:
            self._dispatcher.submit(self._on_gap, gap)


def _with_position(payload: JSONObject, state: StreamState) -> JSONObject:
    if state.since is not None:
        payload["since"] = state.since
        if state.epoch is not None:
            payload["epoch"] = state.epoch
    return payload


def _join(payload: JSONObject) -> tuple[int, str, bool | None] | None:
    """``offset``, ``epoch`` and ``recovered`` of a join reply (None when they are missing)."""
    offset, epoch, recovered = payload.get("offset"), payload.get("epoch"), payload.get("recovered")
    if not isinstance(offset, int) or not isinstance(epoch, str):
        return None
    return offset, epoch, recovered if isinstance(recovered, bool) else None
