from __future__ import annotations

import pytest

from wshub.core.permissions import ChannelKind, channel_kind, claim_grants
from wshub.types import Principal, UserId


@pytest.mark.parametrize(
    ("channel", "kind"),
    [
        ("news", ChannelKind.PUBLIC),
        ("private-team", ChannelKind.PRIVATE),
        ("presence-room", ChannelKind.PRESENCE),
        ("privateer", ChannelKind.PUBLIC),
    ],
)
def test_channel_kind_comes_from_the_prefix(channel: str, kind: ChannelKind) -> None:
    assert channel_kind(channel) is kind


def test_claim_grants_exact_names_and_trailing_wildcards_only() -> None:
    p = Principal(UserId("u"), frozenset({"private-a", "private-team-*"}))
    assert claim_grants(p, "private-a")
    assert claim_grants(p, "private-team-42")
    assert not claim_grants(p, "private-b")
    assert not claim_grants(p, "private-teamx")
    assert not claim_grants(None, "private-a")
