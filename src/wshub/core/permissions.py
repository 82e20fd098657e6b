"""Which channels a principal may use. Pure functions; the hub adds the application's hooks."""

from __future__ import annotations

import enum

from ..types import Principal

__all__ = ["ChannelKind", "channel_kind", "claim_grants"]

PRIVATE_PREFIX = "private-"
PRESENCE_PREFIX = "presence-"


class ChannelKind(enum.Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    PRESENCE = "presence"


def channel_kind(channel: str) -> ChannelKind:
    if channel.startswith(PRIVATE_PREFIX):
        return ChannelKind.PRIVATE
    if channel.startswith(PRESENCE_PREFIX):
        return ChannelKind.PRESENCE
    return ChannelKind.PUBLIC


def claim_grants(principal: Principal | None, channel: str) -> bool:
    """True when the credential's ``channels`` claim lists ``channel``.

    An entry ending in ``*`` grants every channel starting with what precedes it
    (``private-team-*`` grants ``private-team-1``).
    """
    if principal is None:
        return False
    if channel in principal.channels:
        return True
    return any(
        entry.endswith("*") and channel.startswith(entry[:-1]) for entry in principal.channels
    )
