"""Prometheus metrics read from the hub's counters at scrape time (nothing on the hot path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import HTTPException, Request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import SecretStr

from ..core.hub import Hub
from ..core.stats import HANDLER_BUCKETS
from ..transport.sse import sse_stats
from .limits import bearer_matches

__all__ = ["metrics_access", "metrics_response"]

_COUNTERS = {
    "connections_opened": "Connections accepted",
    "connections_closed": "Connections closed",
    "messages_in": "Client messages received",
    "deliveries": "Frames handed to connections by fan-out",
    "publications": "Channel publications",
    "user_messages": "Messages to user streams",
    "errors_sent": "Error frames sent to clients",
    "rate_limited": "Client messages rejected by rate limiting",
    "overflows": "Outbound queue overflows (slow consumers)",
    "dropped": "Frames dropped by the drop overflow policy",
    "backend_errors": "Client messages that failed because the store or broker was unavailable",
}


class _HubCollector:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        gauges = {
            "connections": ("Open connections", len(hub.sessions)),
            "users": ("Users with a connection", len(hub.user_ids())),
            "channels": ("Channels with a subscriber", len(hub.channel_names())),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(f"wshub_{name}", doc, value=value)
        stats = hub.stats
        yield from _by_transport(hub)
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(f"wshub_{name}", doc, value=getattr(stats, name))
        by_in = CounterMetricFamily(
            "wshub_messages_received", "Client messages by type", labels=["type"]
        )
        for type_, n in stats.in_by_type.items():
            by_in.add_metric([type_], n)
        yield by_in
        by_out = CounterMetricFamily("wshub_messages_sent", "Frames sent by type", labels=["type"])
        for type_, n in stats.out_by_type.items():
            by_out.add_metric([type_], n)
        yield by_out
        yield GaugeMetricFamily(
            "wshub_outbound_queued_bytes", "Bytes queued for clients", value=hub.queued_bytes()
        )
        cumulative, buckets = 0, []
        for bound, count in zip(
            (*HANDLER_BUCKETS, float("inf")), stats.handler_buckets, strict=True
        ):
            cumulative += count
            buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
        yield HistogramMetricFamily(
            "wshub_handler_seconds",
            "Time spent handling a client message",
            buckets=buckets,
            sum_value=stats.handler_seconds,
        )


def _by_transport(hub: Hub) -> Iterator[Metric]:
    """Connections by transport: ``websocket``, or ``sse`` (the HTTP fallback's streams)."""
    sse_open, sse_opened = sse_stats(hub)
    open_ = GaugeMetricFamily(
        "wshub_connections_by_transport", "Open connections by transport", labels=["transport"]
    )
    open_.add_metric(["websocket"], len(hub.sessions) - sse_open)
    open_.add_metric(["sse"], sse_open)
    yield open_
    opened = CounterMetricFamily(
        "wshub_connections_opened_by_transport",
        "Connections accepted by transport",
        labels=["transport"],
    )
    opened.add_metric(["websocket"], hub.stats.connections_opened - sse_opened)
    opened.add_metric(["sse"], sse_opened)
    yield opened


def metrics_response(hub: Hub) -> tuple[bytes, str]:
    registry = getattr(hub, "_metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry()
        registry.register(_HubCollector(hub))
        hub._metrics_registry = registry  # type: ignore[attr-defined]
    return generate_latest(registry), CONTENT_TYPE_LATEST


def metrics_access(key: SecretStr | None) -> Callable[[Request], None]:
    """The check in front of ``/metrics``: none without ``WS_METRICS_KEY`` (scrapers usually
    reach it on a private network; the figures hold no message content), else the bearer key,
    compared in constant time."""
    expected = key.get_secret_value().encode() if key is not None else None

    def require_metrics_key(request: Request) -> None:
        if expected is None:
            return
        if not bearer_matches(request.headers.get("authorization"), expected):
            raise HTTPException(
                401, "Missing or invalid metrics key", {"WWW-Authenticate": "Bearer"}
            )

    return require_metrics_key
