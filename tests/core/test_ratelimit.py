from __future__ import annotations

import pytest

from wshub.core.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_is_available_at_once_then_refills_at_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now = 0.1  # one token back
    assert bucket.take() is True
    assert bucket.take() is False


def test_tokens_never_exceed_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=100, burst=2, clock=clock)
    clock.now = 1000.0
    assert [bucket.take() for _ in range(3)] == [True, True, False]


def test_persistent_rejections_become_abusive_and_good_behaviour_recovers() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1, burst=2, clock=clock)
    bucket.take(), bucket.take()
    assert not bucket.take() and not bucket.abusive
    assert not bucket.take() and bucket.abusive
    clock.now = 10.0
    bucket.take()
    assert not bucket.abusive


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_invalid_parameters_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, burst=burst)
