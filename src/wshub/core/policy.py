"""What the application decides about channels: who may subscribe and publish, and how much
history each channel keeps. The hub asks; the application's hooks answer."""

from __future__ import annotations

import inspect

from ..errors import Forbidden, NotAuthenticated
from ..interfaces import ChannelHook, Retention
from ..types import Principal
from .permissions import ChannelKind, channel_kind, claim_grants

__all__ = ["ChannelPolicy"]


class ChannelPolicy:
    """Subscription and publish rules plus per-channel retention.

    Defaults: public channels are open; ``presence-…`` needs a user; ``private-…`` needs the
    ``channels`` claim or a subscribe hook's yes. Publishing needs an authenticated subscriber of
    a non-private channel unless a publish hook replaces that rule.
    """

    def __init__(self, history: Retention) -> None:
        self.history = history
        self._subscribe_hooks: list[ChannelHook] = []
        self._publish_hook: ChannelHook | None = None
        self._retention: dict[str, Retention] = {}

    def add_subscribe_hook(self, hook: ChannelHook) -> None:
        self._subscribe_hooks.append(hook)

    def set_publish_hook(self, hook: ChannelHook) -> None:
        self._publish_hook = hook

    async def check_subscribe(self, principal: Principal | None, channel: str) -> None:
        kind = channel_kind(channel)
        if kind is ChannelKind.PUBLIC:
            return
        if principal is None:
            raise NotAuthenticated(f"Authenticate before subscribing to {channel!r}")
        if kind is ChannelKind.PRESENCE or claim_grants(principal, channel):
            return
        for hook in self._subscribe_hooks:
            if await _call_hook(hook, principal, channel):
                return
        raise Forbidden(f"Not allowed to subscribe to {channel!r}")

    async def check_publish(
        self, principal: Principal | None, channel: str, *, subscribed: bool
    ) -> None:
        if self._publish_hook is not None:
            if not await _call_hook(self._publish_hook, principal, channel):
                raise Forbidden(f"Publishing to {channel!r} is not allowed")
            return
        if principal is None:
            raise NotAuthenticated("Authenticate before publishing")
        if channel_kind(channel) is ChannelKind.PRIVATE:
            raise Forbidden(f"Publishing to private channel {channel!r} is not allowed")
        if not subscribed:
            raise Forbidden(f"Subscribe to {channel!r} before publishing to it")

    def set_retention(self, pattern: str, *, size: int | None, ttl: float | None) -> None:
        self._retention[pattern] = Retention(
            size=self.history.size if size is None else size,
            ttl=self.history.ttl if ttl is None else ttl,
        )
        # Longest first, so that the first match is the most specific one.
        self._retention = dict(sorted(self._retention.items(), key=lambda kv: -len(kv[0])))

    def retention_for(self, channel: str) -> Retention:
        if self._retention:
            exact = self._retention.get(channel)
            if exact is not None:
                return exact
            for pattern, retention in self._retention.items():
                if pattern.endswith("*") and channel.startswith(pattern[:-1]):
                    return retention
        return self.history


async def _call_hook(hook: ChannelHook, principal: Principal | None, channel: str) -> bool:
    result = hook(principal, channel)
    if inspect.isawaitable(result):
        result = await result
    return bool(result)
