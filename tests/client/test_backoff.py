"""ReconnectPolicy: exponential backoff with full jitter, attempts and close codes. Pure."""

from __future__ import annotations

import pytest

from wshub.client import ReconnectPolicy


def test_the_ceiling_doubles_from_min_delay_up_to_max_delay() -> None:
    p = ReconnectPolicy(min_delay=0.5, max_delay=5.0)
    assert [p.ceiling(n) for n in range(6)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert p.ceiling(10_000) == 5.0  # no overflow


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 0.999])
def test_each_wait_is_uniform_between_min_delay_and_the_ceiling(r: float) -> None:
    p = ReconnectPolicy(min_delay=1.0, max_delay=60.0, factor=3.0)
    for attempt in range(8):
        d = p.delay(attempt, rand=lambda: r)
        assert d == pytest.approx(1.0 + r * (p.ceiling(attempt) - 1.0))
        assert 1.0 <= d <= 60.0


def test_max_attempts_bounds_retries_and_none_is_unlimited() -> None:
    assert [ReconnectPolicy(max_attempts=3).gives_up(n) for n in range(5)] == [
        False,
        False,
        False,
        True,
        True,
    ]
    assert not ReconnectPolicy().gives_up(10**9)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (1000, True),
        (1001, True),
        (1006, True),
        (1011, True),
        (1012, True),
        (1013, True),
        (None, True),
        (1008, False),
        (1002, False),
        (1003, False),
    ],
)
def test_which_close_codes_lead_to_a_reconnect(code: int | None, expected: bool) -> None:
    assert ReconnectPolicy().should_reconnect(code) is expected


def test_policy_closes_can_be_made_to_reconnect() -> None:
    assert ReconnectPolicy(reconnect_on_policy=True).should_reconnect(1008)


@pytest.mark.parametrize(
    "kwargs", [{"min_delay": 2.0, "max_delay": 1.0}, {"factor": 0.5}, {"max_attempts": -1}]
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(**kwargs)  # type: ignore[arg-type]
