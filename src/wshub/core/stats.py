"""Counters the hub keeps as it works: plain integers, read by metrics and the dashboard at
scrape time, so the hot path pays one addition and no locks."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["HANDLER_BUCKETS", "HubStats"]

#: Upper bounds (seconds) of the handler latency histogram.
HANDLER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5)


@dataclass(slots=True)
class HubStats:
    connections_opened: int = 0
    connections_closed: int = 0
    messages_in: int = 0
    deliveries: int = 0
    publications: int = 0
    user_messages: int = 0
    errors_sent: int = 0
    rate_limited: int = 0
    overflows: int = 0
    dropped: int = 0
    backend_errors: int = 0
    #: client messages by type (unknown types are counted as ``"unknown"``)
    in_by_type: Counter[str] = field(default_factory=Counter)
    #: frames handed to connections, by type
    out_by_type: Counter[str] = field(default_factory=Counter)
    #: handler latency: counts per bucket of HANDLER_BUCKETS (+ one for larger), and the sum
    handler_buckets: list[int] = field(default_factory=lambda: [0] * (len(HANDLER_BUCKETS) + 1))
    handler_seconds: float = 0.0

    def observe_handler(self, seconds: float) -> None:
        self.handler_buckets[bisect.bisect_left(HANDLER_BUCKETS, seconds)] += 1
        self.handler_seconds += seconds
