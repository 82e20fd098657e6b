"""The benchmark report's check of the targets (benchmarks/harness/report.py): ratios taken
within each repetition, medians across them, the verdicts, and that every target names rows and
scenarios the runner really measures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from harness.report import TARGETS, check_target, idle_held, md_targets
from harness.scenarios import Timing, build_scenarios
from harness.servers import STORE_ENV, build_servers


def run(rep: int, server: str, scenario: str, **values: Any) -> dict[str, Any]:
    return {"rep": rep, "server": server, "scenario": scenario, "ok": True, **values}


def target(text: str) -> Any:
    matches = [t for t in TARGETS if t.text.startswith(text)]
    assert len(matches) == 1, f"{len(matches)} targets start with {text!r}"
    return matches[0]


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
    t = target("wshub (default store) fan-out at 1,000 subscribers >= 4x node-ws")
    measured, verdict = check_target(records, t)
    assert measured.startswith("4.50x (3 rep(s), 3.00-5.00)")
    assert verdict == "met"


def test_lower_is_better_and_a_miss_says_by_how_much() -> None:
    records = [
        run(1, "wshub", "latency-1000", p99_ms=12.0),
        run(1, "node-ws", "latency-1000", p99_ms=10.0),
    ]
    measured, verdict = check_target(records, target("wshub (default store) p99 latency"))
    assert measured.startswith("0.83x")
    assert verdict == "**missed by 16.7%**"


def test_failed_runs_and_unmeasured_targets_are_left_out() -> None:
    records = [
        run(1, "wshub", "pingpong-100", round_trips_per_s=130),
        {**run(1, "node-ws", "pingpong-100"), "ok": False, "error": "crashed"},
    ]
    assert check_target(records, target("wshub (default store) ping-pong")) is None
    assert "ping-pong" not in md_targets(records)


def test_ping_pong_goal_is_1_3x_node() -> None:
    t = target("wshub (default store) ping-pong")
    ok = [
        run(1, "wshub", "pingpong-100", round_trips_per_s=131),
        run(1, "node-ws", "pingpong-100", round_trips_per_s=100),
    ]
    short = [
        run(1, "wshub", "pingpong-100", round_trips_per_s=125),
        run(1, "node-ws", "pingpong-100", round_trips_per_s=100),
    ]
    assert check_target(ok, t)[1] == "met"  # type: ignore[index]
    assert check_target(short, t)[1] == "**missed by 3.8%**"  # type: ignore[index]


def test_absolute_ceiling_and_idle_connections_held() -> None:
    records = [
        run(1, "wshub", "idle", rss_per_conn_kib=5.0, conns=10_000, closed=0, errors=0),
        run(2, "wshub", "idle", rss_per_conn_kib=3.0, conns=10_000, closed=3, errors=0),
    ]
    measured, verdict = check_target(records, target("wshub (default store) idle memory"))
    assert measured.startswith("4.0 KiB") and verdict == "met"  # median of 5 and 3
    over = [run(1, "wshub", "idle", rss_per_conn_kib=4.5)]
    assert check_target(over, target("wshub (default store) idle memory"))[1] != "met"  # type: ignore[index]
    held = idle_held(records)
    assert held is not None and "**not met**" in held  # rep 2 lost connections


@pytest.mark.parametrize(
    ("text", "field", "a", "b", "goal"),
    [
        ("wshub (default store) fan-out at 1,000 subscribers >= 2.5x", "deliveries_per_s",
         ("wshub", "fanout-1000"), ("picows", "fanout-1000"), 2.5),
        ("wshub (default store) fan-out at 1,000 subscribers >= 1.0x Bun", "deliveries_per_s",
         ("wshub", "fanout-1000"), ("bun", "fanout-1000"), 1.0),
        ("wshub (default store) publish-10", "pubs_per_s",
         ("wshub", "publish-10"), ("wshub-memory", "publish-10"), 0.5),
        ("wshub-redis (Redis store + broker) fan-out", "deliveries_per_s",
         ("wshub-redis", "fanout-1000"), ("node-ws", "fanout-1000"), 3.0),
        ("wshub-redis (Redis store + broker) publish-10", "pubs_per_s",
         ("wshub-redis", "publish-10"), ("wshub-memory", "publish-10"), 0.4),
        ("wshub (default store) chat-1000", "deliveries_per_s",
         ("wshub", "chat-1000"), ("node-ws", "chat-1000"), 1.0),
        ("wshub (default store) rooms", "deliveries_per_s",
         ("wshub", "rooms"), ("node-ws", "rooms"), 2.0),
        ("wshub (default store) connection set-up", "handshakes_per_s",
         ("wshub", "idle"), ("node-ws", "idle"), 1.5),
        ("wshub (default store) deliveries/s at 5,000", "deliveries_per_s",
         ("wshub", "fanout-5000"), ("wshub", "fanout-1000"), 0.8),
    ],
)  # fmt: skip
def test_each_throughput_target_is_met_at_its_goal_and_missed_below(
    text: str, field: str, a: tuple[str, str], b: tuple[str, str], goal: float
) -> None:
    t = target(text)
    assert (t.field, t.a, t.b, t.goal, t.higher_is_better) == (field, a, b, goal, True)

    def records(ratio: float) -> list[dict[str, Any]]:
        return [
            run(1, a[0], a[1], **{field: 1000 * ratio}),
            run(1, b[0], b[1], **{field: 1000.0}),
        ]

    assert check_target(records(goal * 1.01), t)[1] == "met"  # type: ignore[index]
    assert check_target(records(goal * 0.9), t)[1] == "**missed by 10.0%**"  # type: ignore[index]


def test_every_target_names_measured_rows_scenarios_and_fields() -> None:
    """A target on a row or a scenario the runner does not run, or on a field its scenario does
    not produce, would silently never be checked."""
    servers = {s.key: s for s in build_servers()}
    scenarios = {
        sc.key: sc
        for sc in build_scenarios(Timing(warmup=1, duration=4, idle_conns=10, idle_hold=1))
    }
    for t in TARGETS:
        for server, scenario in (t.a, *([t.b] if t.b else [])):
            assert server in servers, t.text
            assert scenario in scenarios, t.text
            srv = servers[server]
            assert not srv.only or scenario in srv.only, f"{t.text}: {server} skips {scenario}"
            assert t.field in {m.field for m in scenarios[scenario].metrics}, t.text


def test_the_wshub_row_is_the_default_configuration() -> None:
    """`wshub` runs as `make run` starts it: no store override (sqlite:///./wshub.db, full)."""
    servers = {s.key: s for s in build_servers()}
    assert STORE_ENV[servers["wshub"].store] == {}
    for key in ("wshub-asgi", "wshub-mounted"):
        assert STORE_ENV[servers[key].store] == {}
    assert STORE_ENV[servers["wshub-memory"].store] == {"WS_STORE_URL": "memory://"}
    assert servers["wshub-redis"].store == "redis"
    assert "wshub-sqlite" not in servers  # merged into `wshub`


def test_wshub_against_each_peer_uses_ratios_within_each_repetition() -> None:
    from types import SimpleNamespace

    from harness.report import md_vs_peers, summarize

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
        run(1, "wshub", "idle", rss_per_conn_kib=5.0, handshakes_per_s=3000),
        run(1, "node-ws", "idle", rss_per_conn_kib=6.0, handshakes_per_s=2000),
    ]
    table = md_vs_peers(summarize(records, servers, scenarios), records, scenarios)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    # median of 8x and 3x; 6 / 5 KiB; 3000 / 2000 handshakes/s
    assert rows["node-ws"] == "| node-ws | 5.50x | 1.20x | 1.50x |"
    assert rows["starlette"] == "| starlette | 4.00x | — | — |"  # rep 3 had no wshub run
    assert "wshub" not in rows  # no row comparing wshub with itself
