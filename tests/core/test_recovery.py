from __future__ import annotations

import pytest

from wshub.core.recovery import is_recovered, replay_from
from wshub.types import StoredMessage, StreamPosition

POS = StreamPosition(10, "e1")


def msgs(*offsets: int) -> list[StoredMessage]:
    return [StoredMessage(o, b"{}") for o in offsets]


@pytest.mark.parametrize(
    ("since", "epoch", "messages", "expected"),
    [
        (7, "e1", msgs(8, 9, 10), True),
        (7, None, msgs(8, 9, 10), True),
        (10, "e1", msgs(), True),
        (0, "e1", msgs(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), True),
        (2, "e1", msgs(5, 6, 7, 8, 9, 10), False),  # trimmed by retention
        (0, "e1", msgs(), False),  # everything trimmed
        (11, "e1", msgs(), False),  # client ahead of the stream
        (7, "other", msgs(8, 9, 10), False),  # another epoch
    ],
)
def test_is_recovered(
    since: int, epoch: str | None, messages: list[StoredMessage], expected: bool
) -> None:
    assert is_recovered(since, epoch, POS, messages) is expected


def test_replay_from_restarts_at_zero_for_another_epoch() -> None:
    assert replay_from(7, "e1", POS) == 7
    assert replay_from(7, None, POS) == 7
    assert replay_from(7, "old", POS) == 0
