"""From run records to the table (medians and per-repetition ratios), the chart and RESULTS.md."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .scenarios import Metric, Scenario

if TYPE_CHECKING:
    from .servers import Server

__all__ = [
    "DISTURBED",
    "REFERENCES",
    "Cell",
    "Summary",
    "cell_text",
    "md_cpu_table",
    "md_table",
    "md_targets",
    "md_vs_peers",
    "pair_ratio",
    "render_markdown",
    "summarize",
    "visible",
    "write_chart",
]

REFERENCES = ("picows", "node-ws")
SATURATED = 0.90  # loadgen CPU / wall above this: the load generator may be the limit
SERVER_BOUND = 0.90  # server CPU / wall below this in a throughput scenario: not server-bound
DISTURBED = 0.15  # CPU used by other processes during the window (share of a core) above this


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)  # one per successful repetition
    ratios: dict[str, list[float]] = field(default_factory=dict)
    reps: int = 0  # repetitions attempted
    errors: list[str] = field(default_factory=list)
    loadgen_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    other_cpu: list[float] = field(default_factory=list)
    closed: int = 0
    protocol_errors: int = 0
    first_error: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def ratio(self, ref: str) -> float | None:
        r = self.ratios.get(ref)
        return statistics.median(r) if r else None

    @property
    def saturated(self) -> bool:
        return any(c > SATURATED for c in self.loadgen_cpu)

    @property
    def disturbed(self) -> bool:
        return any(c > DISTURBED for c in self.other_cpu)


@dataclass
class Summary:
    servers: list[Server]
    metrics: list[Metric]
    cells: dict[tuple[str, str], Cell]  # (server key, metric column) -> cell
    footnotes: list[str] = field(default_factory=list)


def _ratio(metric: Metric, value: float, ref: float) -> float | None:
    if value <= 0 or ref <= 0:
        return None
    return value / ref if metric.higher_is_better else ref / value


def summarize(
    records: list[dict[str, Any]], servers: list[Server], scenarios: list[Scenario]
) -> Summary:
    metrics = [m for sc in scenarios for m in sc.metrics]
    cells: dict[tuple[str, str], Cell] = {}
    by_run = {(r["rep"], r["scenario"], r["server"]): r for r in records}
    for rec in records:
        sc = next(s for s in scenarios if s.key == rec["scenario"])
        for m in sc.metrics:
            cell = cells.setdefault((rec["server"], m.column), Cell())
            cell.reps += 1
            if not rec.get("ok"):
                cell.errors.append(str(rec.get("error", "failed")))
                continue
            value = rec.get(m.field)
            if value is None:
                cell.errors.append(f"no {m.field} in the result")
                continue
            cell.values.append(float(value))
            if "loadgen_cpu_ratio" in rec:
                cell.loadgen_cpu.append(float(rec["loadgen_cpu_ratio"]))
            if "server_cpu_ratio" in rec:
                cell.server_cpu.append(float(rec["server_cpu_ratio"]))
            if "other_cpu_ratio" in rec:
                cell.other_cpu.append(float(rec["other_cpu_ratio"]))
            cell.closed += int(rec.get("closed", 0))
            cell.protocol_errors += int(rec.get("errors", 0))
            cell.first_error = cell.first_error or str(rec.get("first_error") or "")
            for ref in REFERENCES:
                ref_rec = by_run.get((rec["rep"], rec["scenario"], ref))
                if ref_rec and ref_rec.get("ok") and ref_rec.get(m.field) is not None:
                    r = _ratio(m, float(value), float(ref_rec[m.field]))
                    if r is not None:
                        cell.ratios.setdefault(ref, []).append(r)
    return Summary(servers=servers, metrics=metrics, cells=cells)


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def cell_text(summary: Summary, server: Server, metric: Metric) -> str:
    """`209k (1.00 / 1.29)`: median, then median ratio vs picows / vs node-ws; marks for caveats."""
    cell = summary.cells.get((server.key, metric.column))
    if cell is None:
        return "—"
    if cell.median is None:
        note = _note(summary, f"{server.key} / {metric.column} failed: {cell.errors[0][:300]}")
        return f"failed{note}"
    ratios = " / ".join(_fmt_ratio(cell.ratio(ref)) for ref in REFERENCES)
    text = f"{metric.fmt(cell.median)} ({ratios})"
    if len(cell.values) < cell.reps:
        text += f" [{len(cell.values)}/{cell.reps} reps]"
        _note(
            summary,
            f"{server.key} / {metric.column}: {cell.reps - len(cell.values)} rep(s) failed: "
            f"{cell.errors[0][:300]}",
        )
    if cell.saturated:
        text += " †"
    if metric.throughput and cell.server_cpu and statistics.median(cell.server_cpu) < SERVER_BOUND:
        text += " ‡"
    if cell.disturbed:
        text += " §"
    if cell.closed or cell.protocol_errors:
        text += _note(
            summary,
            f"{server.key} / {metric.column}: {cell.closed} connection(s) closed by "
            f"the server, {cell.protocol_errors} error message(s)"
            + (f", first: {cell.first_error}" if cell.first_error else ""),
        )
    return text


def _note(summary: Summary, text: str) -> str:
    if text not in summary.footnotes:
        summary.footnotes.append(text)
    return f" [{summary.footnotes.index(text) + 1}]"


def cpu_text(summary: Summary, server: Server, metric: Metric) -> str:
    cell = summary.cells.get((server.key, metric.column))
    if cell is None or not cell.loadgen_cpu:
        return "—"

    def pct(v: list[float]) -> str:
        return f"{statistics.median(v) * 100:.0f}%" if v else "?"

    return f"{pct(cell.server_cpu)} / {pct(cell.loadgen_cpu)} / {pct(cell.other_cpu)}"


def visible(summary: Summary) -> tuple[list[Server], list[Metric]]:
    servers = [
        s
        for s in summary.servers
        if any((s.key, m.column) in summary.cells for m in summary.metrics)
    ]
    metrics = [
        m for m in summary.metrics if any((s.key, m.column) in summary.cells for s in servers)
    ]
    return servers, metrics


def md_table(summary: Summary) -> str:
    servers, metrics = visible(summary)
    rows = [
        "| server | " + " | ".join(m.column for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    rows += [
        f"| {s.label} | " + " | ".join(cell_text(summary, s, m) for m in metrics) + " |"
        for s in servers
    ]
    return "\n".join(rows)


def pair_ratio(
    records: list[dict[str, Any]],
    field: str,
    a: tuple[str, str],
    b: tuple[str, str],
    higher_is_better: bool = True,
) -> list[float]:
    """Per repetition in which both ran: how many times better (server, scenario) ``a`` did
    than ``b`` (a / b for throughput, b / a for latency and memory)."""
    va, vb = _values(records, field, a), _values(records, field, b)
    return [
        va[r] / vb[r] if higher_is_better else vb[r] / va[r] for r in sorted(va.keys() & vb.keys())
    ]


def md_vs_peers(
    summary: Summary,
    records: list[dict[str, Any]],
    scenarios: list[Scenario],
    server: str = "wshub",
) -> str:
    """``server`` against every peer (the servers that are not wshub), column by column: the
    median of the ratios taken within each repetition ("times better", as in the main table)."""
    servers, metrics = visible(summary)
    peers = [s for s in servers if not s.wshub]
    if not any(s.key == server for s in servers) or not peers:
        return ""
    scenario_of = {m.column: sc.key for sc in scenarios for m in sc.metrics}
    rows = ["| wshub against | " + " | ".join(m.column for m in metrics) + " |"]
    rows.append("|---|" + "---|" * len(metrics))
    for peer in peers:
        cells = []
        for m in metrics:
            sc = scenario_of.get(m.column)
            ratios = (
                pair_ratio(records, m.field, (server, sc), (peer.key, sc), m.higher_is_better)
                if sc
                else []
            )
            cells.append(f"{statistics.median(ratios):.2f}x" if ratios else "—")
        rows.append(f"| {peer.label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def md_cpu_table(summary: Summary, scenarios: list[Scenario]) -> str:
    """One column per scenario with a measured window (idle has none)."""
    servers, _ = visible(summary)
    cols = [(sc.key, sc.metrics[0]) for sc in scenarios if sc.kind != "idle"]
    cols = [(k, m) for k, m in cols if any((s.key, m.column) in summary.cells for s in servers)]
    rows = ["| server | " + " | ".join(k for k, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    rows += [
        f"| {s.label} | " + " | ".join(cpu_text(summary, s, m) for _, m in cols) + " |"
        for s in servers
    ]
    return "\n".join(rows)


@dataclass(frozen=True)
class Target:
    """One target of the issues (fast fan-out; durable and fast at once), checked against the
    run's records.

    ``relative``: the median, over the repetitions, of ``a / b`` (``b / a`` when lower is
    better) with both taken in the same repetition, compared with ``goal``. Otherwise ``a``'s
    median value itself must be at most ``goal`` (an absolute ceiling). Every text names the
    rows' configurations: `wshub` is `wshub serve` with its default store (SQLite,
    synchronous=full, history on)."""

    text: str
    field: str
    a: tuple[str, str]  # (server, scenario)
    b: tuple[str, str] | None
    goal: float
    higher_is_better: bool = True
    unit: str = "x"


def _vs(text: str, field: str, a: str, b: str, scenario: str, goal: float, **kw: Any) -> Target:
    """``a`` against ``b`` on the same scenario."""
    return Target(text, field, (a, scenario), (b, scenario), goal, **kw)


TARGETS = (
    # Durable and fast at once: the default configuration against the peers.
    _vs(
        "wshub (default store) fan-out at 1,000 subscribers >= 4x node-ws",
        "deliveries_per_s",
        "wshub",
        "node-ws",
        "fanout-1000",
        4.0,
    ),
    _vs(
        "wshub (default store) fan-out at 1,000 subscribers >= 2.5x bare picows",
        "deliveries_per_s",
        "wshub",
        "picows",
        "fanout-1000",
        2.5,
    ),
    _vs(
        "wshub (default store) fan-out at 1,000 subscribers >= 1.0x Bun",
        "deliveries_per_s",
        "wshub",
        "bun",
        "fanout-1000",
        1.0,
    ),
    _vs(
        "wshub (default store) publish-10 >= 0.5x wshub with the memory store",
        "pubs_per_s",
        "wshub",
        "wshub-memory",
        "publish-10",
        0.5,
    ),
    _vs(
        "wshub-redis (Redis store + broker) fan-out at 1,000 subscribers >= 3x node-ws",
        "deliveries_per_s",
        "wshub-redis",
        "node-ws",
        "fanout-1000",
        3.0,
    ),
    _vs(
        "wshub-redis (Redis store + broker) publish-10 >= 0.4x wshub with the memory store",
        "pubs_per_s",
        "wshub-redis",
        "wshub-memory",
        "publish-10",
        0.4,
    ),
    _vs(
        "wshub (default store) chat-1000 deliveries >= 1.0x node-ws",
        "deliveries_per_s",
        "wshub",
        "node-ws",
        "chat-1000",
        1.0,
    ),
    _vs(
        "wshub (default store) rooms deliveries >= 2x node-ws",
        "deliveries_per_s",
        "wshub",
        "node-ws",
        "rooms",
        2.0,
    ),
    _vs(
        "wshub (default store) connection set-up rate (idle scenario) >= 1.5x node-ws",
        "handshakes_per_s",
        "wshub",
        "node-ws",
        "idle",
        1.5,
    ),
    _vs(
        "wshub (default store) p99 latency at 1,000 subscribers and 10 publications/s <= node-ws",
        "p99_ms",
        "wshub",
        "node-ws",
        "latency-1000",
        1.0,
        higher_is_better=False,
    ),
    _vs(
        "wshub (default store) ping-pong >= 1.3x node-ws",
        "round_trips_per_s",
        "wshub",
        "node-ws",
        "pingpong-100",
        1.3,
    ),
    Target(
        "wshub (default store) idle memory <= 4 KiB per connection",
        "rss_per_conn_kib",
        ("wshub", "idle"),
        None,
        4.0,
        higher_is_better=False,
        unit=" KiB",
    ),
    Target(
        "wshub (default store) deliveries/s at 5,000 subscribers within 20% of the 1,000 figure",
        "deliveries_per_s",
        ("wshub", "fanout-5000"),
        ("wshub", "fanout-1000"),
        0.8,
    ),
    # Fast fan-out, mounted in an existing app (default store too).
    _vs(
        "mounted, plain ASGI (default store): fan-out 1,000 >= 1.3x the naive Starlette endpoint",
        "deliveries_per_s",
        "wshub-asgi",
        "starlette",
        "fanout-1000",
        1.3,
    ),
    _vs(
        "mounted, plain ASGI (default store): fan-out 1,000 >= 5x python-socketio",
        "deliveries_per_s",
        "wshub-asgi",
        "socketio",
        "fanout-1000",
        5.0,
    ),
    _vs(
        "mounted fast path (default store): fan-out 1,000 within 20% of wshub (default store)",
        "deliveries_per_s",
        "wshub-mounted",
        "wshub",
        "fanout-1000",
        0.8,
    ),
    _vs(
        "mounted fast path (default store): ping-pong within 20% of wshub (default store)",
        "round_trips_per_s",
        "wshub-mounted",
        "wshub",
        "pingpong-100",
        0.8,
    ),
)


def _values(records: list[dict[str, Any]], field: str, who: tuple[str, str]) -> dict[int, float]:
    """Per repetition: the value of ``field`` for (server, scenario), where the run succeeded."""
    server, scenario = who
    return {
        int(r["rep"]): float(r[field])
        for r in records
        if r["server"] == server
        and r["scenario"] == scenario
        and r.get("ok")
        and r.get(field) is not None
        and float(r[field]) > 0
    }


def check_target(records: list[dict[str, Any]], t: Target) -> tuple[str, str] | None:
    """``(measured, verdict)`` for one target, or None when the run did not measure it."""
    if t.b is None:
        a = _values(records, t.field, t.a)
        if not a:
            return None
        value = statistics.median(a.values())
        met = value <= t.goal if not t.higher_is_better else value >= t.goal
        measured = f"{value:.1f}{t.unit} ({len(a)} rep(s))"
        return measured, "met" if met else f"**missed by {abs(value / t.goal - 1) * 100:.1f}%**"
    ratios = pair_ratio(records, t.field, t.a, t.b, t.higher_is_better)
    if not ratios:
        return None
    value = statistics.median(ratios)
    spread = f", {min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else ""
    measured = f"{value:.2f}x ({len(ratios)} rep(s){spread})"
    if value >= t.goal:
        return measured, "met"
    return measured, f"**missed by {(1 - value / t.goal) * 100:.1f}%**"


def idle_held(records: list[dict[str, Any]], server: str = "wshub") -> str | None:
    """The idle-connections target: every connection of every repetition held, none closed."""
    runs = [r for r in records if r["server"] == server and r["scenario"] == "idle"]
    if not runs:
        return None
    ok = all(r.get("ok") and not r.get("closed") and not r.get("errors") for r in runs)
    conns = min(int(r.get("conns", 0)) for r in runs)
    verdict = "met" if ok and conns >= 10_000 else "**not met**"
    held = "held, none closed, no error" if ok else "failed, closed or errors in some repetition"
    what = f"{server} (default store): {conns:,} idle connections on one core held without errors"
    return f"| {what} | {held} | {verdict} |"


def md_targets(records: list[dict[str, Any]]) -> str:
    """The issue's targets, each with what this run measured and whether it is met."""
    rows = ["| target | measured (median of per-repetition ratios, min-max) | |", "|---|---|---|"]
    for t in TARGETS:
        result = check_target(records, t)
        if result is not None:
            rows.append(f"| {t.text} | {result[0]} | {result[1]} |")
    held = idle_held(records)
    if held:
        rows.append(held)
    return "\n".join(rows) if len(rows) > 2 else ""


def render_markdown(
    summary: Summary,
    *,
    scenarios: list[Scenario],
    machine: dict[str, Any],
    settings: dict[str, Any],
    skipped: dict[str, str],
    elapsed_s: float,
    generated: str,
    records: list[dict[str, Any]] | None = None,
    analysis: str = "",
) -> str:
    table = md_table(summary)
    cpu_table = md_cpu_table(summary, scenarios)
    pk = machine["packages"]
    versions = ", ".join(f"{k} {v}" for k, v in pk.items())
    lines = [
        "# wshub benchmark results",
        "",
        f"Written by `make -C benchmarks bench` (`benchmarks/run.py`) on {generated}: "
        f"{settings['reps']} repetition(s), warmup {settings['warmup']:g} s + window "
        f"{settings['duration']:g} s per scenario, {elapsed_s / 60:.1f} min in all. "
        "How to run and what each scenario means: [README.md](README.md).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB |",
        f"| OS, kernel | {machine['os']}, Linux {machine['kernel']} |",
        f"| Python, Node | {machine['python']}, {machine['node']} |",
        f"| compiler, redis | {machine['gcc']}; {machine['redis']} |",
        f"| packages | {versions} |",
        f"| pinning | server on core {settings['server_core']} (its redis too), load generator "
        f"on core {settings['loadgen_core']} (taskset); all traffic over 127.0.0.1 |",
        "",
        "## Results",
        "",
        "Median over the repetitions; in parentheses the ratio to picows / to node-ws, taken "
        'within each repetition, then the median. Ratios read "times better than the reference": '
        "value / reference for throughput, reference / value for latency and memory.",
        "",
        table,
        "",
        "† the load generator used more than 90% of its core in at least one repetition: "
        "the number may be a lower bound for the server.  ",
        "‡ the server used less than 90% of its core during the window: not CPU-bound on the "
        "server side (limited by the publication window, the 2 ms client batches, or waiting).  ",
        "§ other processes on the machine used more than 15% of a core during the window in at "
        "least one repetition: the number is disturbed; rerun on a quiet machine.",
    ]
    if summary.footnotes:
        lines.append("")
        lines += [f"[{i}] {t}  " for i, t in enumerate(summary.footnotes, 1)]
    if skipped:
        lines += ["", "Not measured:"]
        lines += [f"- {k}: {v}" for k, v in skipped.items()]
    vs_peers = md_vs_peers(summary, records or [], scenarios)
    if vs_peers:
        lines += [
            "",
            "### wshub against each peer",
            "",
            "How many times better `wshub serve` with its default store (the `wshub` row) did "
            "than each peer: the "
            "ratio taken within each repetition, then the median.",
            "",
            vs_peers,
        ]
    lines += [
        "",
        "### CPU during the measured window",
        "",
        "Server / load generator / every other process, each as a share of one core (median over "
        "the repetitions).",
        "",
        cpu_table,
        "",
        "## Scenarios",
        "",
    ]
    lines += [f"- **{sc.key}**: {sc.describe}." for sc in scenarios]
    lines += [
        "",
        "Loopback compresses the ratios between fast servers; compare ratios, not absolute "
        "numbers. The chart of this table (medians, bars from the lowest to the highest "
        "repetition) is [RESULTS.png](RESULTS.png); every run also writes it to "
        "`benchmarks/results/<run>/chart.png` (git-ignored), next to the raw per-run records "
        "(`runs.jsonl`) and server logs.",
        "",
    ]
    targets = md_targets(records or [])
    if targets:
        lines += [
            "## Against the targets (issues: fast fan-out; durable and fast at once)",
            "",
            "Computed from this run's records by `harness/report.py` (`TARGETS`).",
            "",
            targets,
            "",
        ]
    if analysis:
        lines += [analysis.strip(), ""]
    return "\n".join(lines)


def write_chart(summary: Summary, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    servers, metrics = visible(summary)
    cols = 4
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 0.5 * len(servers) * rows + 1.6 * rows), squeeze=False
    )
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    for ax, m in zip(axes.flat, metrics, strict=False):
        names, meds, lo, hi, colors = [], [], [], [], []
        for s in servers:
            cell = summary.cells.get((s.key, m.column))
            if cell is None or cell.median is None:
                continue
            names.append(s.key)
            med = cell.median
            meds.append(med)
            lo.append(med - min(cell.values))
            hi.append(max(cell.values) - med)
            colors.append("#d62728" if s.wshub else "#1f77b4")
        y = list(range(len(names)))
        ax.barh(y, meds, xerr=[lo, hi], color=colors, capsize=3)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        better = "higher" if m.higher_is_better else "lower"
        ax.set_title(f"{m.column}\n{m.unit}, {better} is better", fontsize=9)
        ax.tick_params(labelsize=8)
        for yi, v in zip(y, meds, strict=True):
            ax.text(v, yi, " " + m.fmt(v), va="center", fontsize=7)
        ax.margins(x=0.25)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda v, _pos: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}")
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))  # room for the title
    fig.savefig(path, dpi=110)
    plt.close(fig)
