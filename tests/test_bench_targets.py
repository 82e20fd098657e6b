"""The benchmark report's check of the fast fan-out targets (benchmarks/harness/report.py):
ratios taken within each repetition, medians across them, the verdicts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from harness.report import TARGETS, check_target, idle_held, md_targets


def run(rep: int, server: str, scenario: str, **values: Any) -> dict[str, Any]:
    return {"rep": rep, "server": server, "scenario": scenario, "ok": True, **values}


def target(text: str) -> Any:
    return next(t for t in TARGETS if t.text.startswith(text))


def test_ratio_is_taken_within_each_repetition_then_the_median() -> None:
    records = [
        # rep 1: 5x node; rep 2: 3x (node was fast that time); rep 3: 4.5x
        run(1, "wshub", "fanout-1000", deliveries_per_s=500),
        run(1, "node-ws", "fanout-1000", deliveries_per_s=100),
        run(2, "wshub", "fanout-1000", deliveries_per_s=450),
        run(2, "node-ws", "fanout-1000", deliveries_per_s=150),
        run(3, "wshub", "fanout-1000", deliveries_per_s=450),
        run(3, "node-ws", "fanout-1000", deliveries_per_s=100),
    ]
    measured, verdict = check_target(
        records, target("standalone fan-out at 1,000 subscribers >= 4x node")
    )
    assert measured.startswith("4.50x (3 rep(s), 3.00-5.00)")
    assert verdict == "met"


def test_lower_is_better_and_a_miss_says_by_how_much() -> None:
    records = [
        run(1, "wshub", "latency-1000", p99_ms=12.0),
        run(1, "node-ws", "latency-1000", p99_ms=10.0),
    ]
    measured, verdict = check_target(records, target("p99 latency"))
    assert measured.startswith("0.83x")
    assert verdict == "**missed by 16.7%**"


def test_failed_runs_and_unmeasured_targets_are_left_out() -> None:
    records = [
        run(1, "wshub", "pingpong-100", round_trips_per_s=130),
        {**run(1, "node-ws", "pingpong-100"), "ok": False, "error": "crashed"},
    ]
    assert check_target(records, target("ping-pong")) is None
    assert "ping-pong" not in md_targets(records)


def test_absolute_ceiling_and_idle_connections_held() -> None:
    records = [
        run(1, "wshub", "idle", rss_per_conn_kib=9.0, conns=10_000, closed=0, errors=0),
        run(2, "wshub", "idle", rss_per_conn_kib=7.0, conns=10_000, closed=3, errors=0),
    ]
    measured, verdict = check_target(records, target("idle memory"))
    assert measured.startswith("8.0 KiB") and verdict == "met"  # median of 9 and 7
    held = idle_held(records)
    assert held is not None and "**not met**" in held  # rep 2 lost connections


def test_wshub_against_each_peer_uses_ratios_within_each_repetition() -> None:
    from types import SimpleNamespace

    from harness.report import md_vs_peers, summarize
    from harness.scenarios import Timing, build_scenarios

    scenarios = [
        sc
        for sc in build_scenarios(Timing(warmup=1, duration=4, idle_conns=10, idle_hold=1))
        if sc.key in ("fanout-1000", "idle")
    ]
    servers: list[Any] = [
        SimpleNamespace(key="wshub", label="wshub", wshub=True),
        SimpleNamespace(key="node-ws", label="node-ws", wshub=False),
        SimpleNamespace(key="starlette", label="starlette", wshub=False),
    ]
    records = [
        run(1, "wshub", "fanout-1000", deliveries_per_s=800),
        run(1, "node-ws", "fanout-1000", deliveries_per_s=100),
        run(2, "wshub", "fanout-1000", deliveries_per_s=900),
        run(2, "node-ws", "fanout-1000", deliveries_per_s=300),
        run(1, "starlette", "fanout-1000", deliveries_per_s=200),  # no wshub run to pair in rep 3
        run(3, "starlette", "fanout-1000", deliveries_per_s=1),
        run(1, "wshub", "idle", rss_per_conn_kib=5.0),
        run(1, "node-ws", "idle", rss_per_conn_kib=6.0),
    ]
    table = md_vs_peers(summarize(records, servers, scenarios), records, scenarios)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert rows["node-ws"] == "| node-ws | 5.50x | 1.20x |"  # median of 8x and 3x; 6 / 5 KiB
    assert rows["starlette"] == "| starlette | 4.00x | — |"  # rep 3 had no wshub run
    assert "wshub" not in rows  # no row comparing wshub with itself
