"""The scenarios: which load generator subcommand, with which arguments, and which numbers of its
result go into the table.

Every metric is a column. Ratios in the table always read "times better than the reference":
value / reference for throughput, reference / value for latency and memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Metric", "Scenario", "Timing", "build_scenarios"]


@dataclass(frozen=True)
class Metric:
    column: str  # table column
    field: str  # key in the run record (loadgen result, or what the runner adds)
    unit: str
    higher_is_better: bool
    fmt: Callable[[float], str]
    throughput: bool = False  # the server should be CPU-bound; flag it when it is not


@dataclass(frozen=True)
class Scenario:
    key: str
    kind: str  # loadgen subcommand: fanout | pingpong | latency | idle | chat | rooms
    args: tuple[str, ...]  # loadgen arguments besides --port/--path/--token/--sio
    metrics: tuple[Metric, ...]
    describe: str
    store_heavy: bool = False  # the scenario that is mostly the store's work (publish-10)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def idle_conns(self) -> int:
        return int(self.extra.get("conns", 0))


@dataclass(frozen=True)
class Timing:
    warmup: float
    duration: float
    idle_conns: int
    idle_hold: float


def _k(v: float) -> str:
    return f"{v / 1000:.0f}k" if v >= 10_000 else f"{v / 1000:.1f}k"


def _ms(v: float) -> str:
    return f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def _kib(v: float) -> str:
    return f"{v:.1f} KiB"


def _rate(v: float) -> str:
    return f"{v:,.0f}/s"


def build_scenarios(t: Timing) -> list[Scenario]:
    win = ("--warmup", str(t.warmup), "--duration", str(t.duration))

    def fanout(subs: int, window: int) -> Scenario:
        col = f"fanout-{subs}"
        return Scenario(
            key=col,
            kind="fanout",
            args=("--subs", str(subs), "--window", str(window), *win),
            metrics=(Metric(col, "deliveries_per_s", "deliveries/s", True, _k, throughput=True),),
            describe=f"{subs} subscribers, 1 publisher keeping {window} publications in flight; "
            "deliveries per second",
        )

    hold = f"{t.idle_hold:g}"
    return [
        fanout(100, 64),
        fanout(1000, 16),
        fanout(5000, 16),  # the same window as at 1,000: the cost per subscriber shows
        Scenario(
            key="pingpong-100",
            kind="pingpong",
            args=("--conns", "100", *win),
            metrics=(
                Metric(
                    "pingpong-100", "round_trips_per_s", "round trips/s", True, _k, throughput=True
                ),
            ),
            describe="100 connections, one ping in flight each; round trips per second",
        ),
        Scenario(
            key="latency-1000",
            kind="latency",
            args=("--subs", "1000", "--rate", "10", *win),
            metrics=(
                Metric("latency p50", "p50_ms", "ms", False, _ms),
                Metric("latency p99", "p99_ms", "ms", False, _ms),
            ),
            describe="1,000 subscribers, 10 publications/s (open loop); publish-to-delivery "
            "latency over every delivery",
        ),
        Scenario(
            key="idle",
            kind="idle",
            args=("--conns", str(t.idle_conns), "--hold", hold),
            metrics=(
                Metric("idle RSS/conn", "rss_per_conn_kib", "KiB", False, _kib),
                Metric("set-up rate", "handshakes_per_s", "handshakes/s", True, _rate),
            ),
            describe=f"{t.idle_conns:,} idle connections; server RSS growth per connection, and "
            "the connection set-up rate: connections / (first connect to the last `welcome`), "
            "128 handshakes in progress at a time",
            extra={"conns": t.idle_conns},
        ),
        Scenario(
            key="publish-10",
            kind="fanout",
            args=("--subs", "10", "--window", "256", *win),
            metrics=(
                Metric("publish-10", "pubs_per_s", "publications/s", True, _rate, throughput=True),
            ),
            describe="10 subscribers, 1 publisher keeping 256 publications in flight; "
            "publications per second (the store-heavy scenario: wshub writes every publication "
            "to the channel's history; the peers keep none)",
            store_heavy=True,
        ),
        Scenario(
            key="chat-1000",
            kind="chat",
            args=("--conns", "1000", "--window", "4", *win),
            metrics=(
                Metric("chat-1000", "deliveries_per_s", "deliveries/s", True, _k, throughput=True),
            ),
            describe="1,000 users, one connection each (wshub: a JWT per user), each keeping 4 "
            "`chat` messages in flight to random other (online) users; `chat` frames received "
            "by the recipients per second (wshub keeps every one in the recipient's stream)",
            extra={"users": 1000},
        ),
        Scenario(
            key="rooms",
            kind="rooms",
            args=(
                "--channels",
                "2000",
                "--per-channel",
                "5",
                "--pubs",
                "20",
                "--window",
                "16",
                *win,
            ),
            metrics=(
                Metric("rooms", "deliveries_per_s", "deliveries/s", True, _k, throughput=True),
            ),
            describe="10,000 subscribers in 2,000 channels of 5, and 20 publishers, each "
            "subscribed to 100 of the channels and keeping 16 publications in flight to random "
            "ones of them; deliveries to the subscribers per second",
        ),
    ]
