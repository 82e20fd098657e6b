"""StreamState: the position a client resumes from, and duplicate detection. Pure, no loop."""

from __future__ import annotations

import pytest

from wshub.client.streams import StreamState
from wshub.types import StreamPosition


def test_a_fresh_stream_has_no_position_and_joins_at_the_head() -> None:
    s = StreamState()
    assert s.since is None and s.position is None
    assert s.joined(7, "e1", None, None, None) is False
    assert s.position == StreamPosition(7, "e1")
    assert s.accept(8) and s.position == StreamPosition(8, "e1")


def test_messages_older_than_the_head_after_a_fresh_join_are_still_delivered() -> None:
    # The user stream: authenticated says offset 5, then the undelivered 4 and 5 are replayed.
    s = StreamState()
    s.joined(5, "e1", None, None, None)
    assert s.accept(4) and s.accept(5)
    assert s.position == StreamPosition(5, "e1")


@pytest.mark.parametrize(
    ("offsets", "accepted"),
    [
        ([1, 2, 3], [1, 2, 3]),
        ([1, 2, 2, 3, 1], [1, 2, 3]),
        ([3, 4, 2, 5], [3, 4, 5]),
    ],
)
def test_an_offset_at_or_below_the_last_delivered_is_a_duplicate(
    offsets: list[int], accepted: list[int]
) -> None:
    s = StreamState()
    s.joined(0, "e", None, None, None)
    assert [o for o in offsets if s.accept(o)] == accepted


def test_resuming_in_the_same_epoch_keeps_the_position_and_drops_replayed_duplicates() -> None:
    s = StreamState()
    s.joined(0, "e1", None, None, None)
    for o in (1, 2, 3):
        s.accept(o)
    since, epoch = s.since, s.epoch
    assert (since, epoch) == (3, "e1")
    assert s.joined(6, "e1", True, since, epoch) is False
    assert s.position == StreamPosition(3, "e1")  # not 6: 4..6 are about to be replayed
    assert [o for o in (3, 4, 5, 6) if s.accept(o)] == [4, 5, 6]


def test_a_new_epoch_is_a_gap_and_restarts_the_numbering() -> None:
    s = StreamState.resuming(40, "old")
    assert s.joined(2, "new", False, 40, "old") is True
    assert s.epoch == "new" and s.position == StreamPosition(0, "new")
    assert s.accept(1) and s.accept(2)


def test_a_gap_trimmed_by_retention_is_reported_and_what_is_kept_delivered() -> None:
    s = StreamState.resuming(3, "e")
    assert s.joined(200, "e", False, 3, "e") is True
    assert s.accept(101)  # the oldest kept
    assert s.position == StreamPosition(101, "e")


def test_a_client_ahead_of_the_stream_starts_again_at_the_stream_head() -> None:
    s = StreamState.resuming(10, "e")
    assert s.joined(4, "e", False, 10, "e") is True
    assert s.position == StreamPosition(4, "e")
    assert s.accept(5)


def test_a_position_without_epoch_resumes_from_since() -> None:
    s = StreamState.resuming(3, None)
    assert s.since == 3 and s.position is None
    assert s.joined(5, "e", True, 3, None) is False
    assert s.position == StreamPosition(3, "e") and s.accept(4)


def test_a_fresh_rejoin_in_the_same_epoch_keeps_what_was_delivered() -> None:
    # A handshake token authenticates without since: the replay may repeat what was delivered.
    s = StreamState()
    s.joined(2, "e", None, None, None)
    s.accept(3)
    assert s.joined(5, "e", None, None, None) is False
    assert not s.accept(3) and s.accept(4)
    assert s.position == StreamPosition(5, "e")
