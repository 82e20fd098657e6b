"""Handing what arrives to the application: channel messages to their subscription, the user
stream to iterators and callbacks, each message once and in order across reconnects."""

from __future__ import annotations

import contextlib
import logging

from ..types import JSONObject
from ._dispatch import Callback, Dispatcher
from .models import ChannelMessage, Envelope, Gap
from .requests import ReplyHook
from .streams import StreamState
from .subscription import MessageStream, Subscription

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
    ) -> None:
        self._dispatcher = dispatcher
        self._on_gap = on_gap
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

    # -- delivering ----------------------------------------------------------------------------

    def deliver(self, env: Envelope) -> None:
        """An incoming frame that is not a reply to a request."""
        if env.type == "message":
            self._channel_message(env)
            return
        if env.offset is not None:
            if not self.user.accept(env.offset):
                return  # seen before a reconnection
            for stream in self.streams:
                stream._put(env)
        for callback in (*self._handlers.get(env.type, ()), *self._handlers.get("*", ())):
            self._dispatcher.submit(callback, env)

    def _channel_message(self, env: Envelope) -> None:
        msg = ChannelMessage.from_payload(env.payload)
        sub = self.subs.get(msg.channel)
        if sub is None or sub.ended or not sub.state.accept(msg.offset):
            return
        if sub.callback is not None:
            self._dispatcher.submit(sub.callback, msg)
        else:
            sub._put(msg)

    def _gap(self, gap: Gap) -> None:
        logger.warning("could not resume %s %r without a gap: %s", gap.stream, gap.name, gap)
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
