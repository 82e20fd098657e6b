"""The fault checker's accounting finds what it claims to find (pure, no processes)."""

from __future__ import annotations

from tools.chaos.ledger import Ack, Ledger, StreamResult, check


def _ledger(history: dict[int, str]) -> Ledger:
    ledger = Ledger()
    ledger.history["c:x"] = history
    ledger.heads["c:x"] = max(history, default=0)
    return ledger


def _ack(key: str, offset: int | None, seq: int, sent: float, acked: float, via: str = "ws") -> Ack:
    return Ack("c:x", key, offset, "p", 1, seq, sent, acked, via)


def _result(ledger: Ledger) -> StreamResult:
    (r,) = check(ledger)
    return r


def test_a_clean_run_passes() -> None:
    ledger = _ledger({1: "a", 2: "b", 3: "c"})
    ledger.acks += [_ack("a", 1, 1, 0, 1), _ack("b", 2, 2, 2, 3), _ack("c", 3, 3, 4, 5)]
    obs = ledger.observer("s", "steady", "c:x")
    obs.joined(0, "e", None, resumed=False)
    obs.got += [(1, "a"), (2, "b"), (3, "c")]
    r = _result(ledger)
    assert not r.failed and r.acked == 3 and r.stored == 3 and r.steady == 1


def test_lost_and_not_stored() -> None:
    ledger = _ledger({1: "a"})
    ledger.acks += [_ack("a", 1, 1, 0, 1), _ack("b", 2, 2, 2, 3), _ack("c", None, 3, 4, 5, "chat")]
    obs = ledger.observer("s", "steady", "c:x")
    obs.joined(0, "e", None, resumed=False)
    obs.got += [(1, "a"), (2, "b")]  # b was delivered but is not in the store; c nowhere
    r = _result(ledger)
    assert (r.lost, r.not_stored) == (1, 2)


def test_duplicates_reorders_and_gaps() -> None:
    ledger = _ledger({i: k for i, k in enumerate("abcdef", 1)})
    steady = ledger.observer("s", "steady", "c:x")
    steady.joined(0, "e", None, resumed=False)
    steady.got += [(1, "a"), (3, "c"), (2, "b"), (3, "c"), (4, "d")]  # jump, late, repeat; no 5, 6
    resumer = ledger.observer("r", "churn", "c:x")
    resumer.joined(0, "e", None, resumed=False)
    resumer.got += [(1, "a"), (2, "b")]
    resumer.disconnected = True
    resumer.joined(6, "e", True, resumed=True)  # resumed with since=2 but got only 6
    resumer.got += [(6, "f")]
    r = _result(ledger)
    assert r.duplicated == 1
    assert r.reordered == 1
    assert r.live_gaps == 1 + 2  # 1 -> 3 on a live connection, and the missing 5, 6
    assert r.resume_gaps == 3  # 3, 4, 5 across the resume


def test_a_publishers_order() -> None:
    ledger = _ledger({1: "b", 2: "a"})
    # a acked before b was sent, yet b got the lower offset; and pipelined out of order too
    ledger.acks += [_ack("a", 2, 1, 0, 1), _ack("b", 1, 2, 2, 3)]
    assert _result(ledger).reordered == 2


def test_an_offset_holding_another_message_is_a_mismatch() -> None:
    ledger = _ledger({1: "a", 2: "b"})
    ledger.acks += [_ack("a", 2, 1, 0, 1, "http")]
    obs = ledger.observer("s", "steady", "c:x")
    obs.joined(0, "e", None, resumed=False)
    obs.got += [(1, "b"), (2, "b")]
    r = _result(ledger)
    assert r.mismatched == 2 and r.duplicated == 1  # b stored once; seen at two offsets
