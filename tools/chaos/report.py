"""The result table of a scenario (rich), and a plain summary for logs."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .ledger import StreamResult, check
from .workload import Outcome

__all__ = ["render"]

_COLUMNS = [
    ("acked", "acked"),
    ("stored", "stored"),
    ("obs", "observers"),
    ("steady", "steady"),
    ("lost", "lost"),
    ("dup", "duplicated"),
    ("reord", "reordered"),
    ("ack∉store", "not_stored"),
    ("live gap", "live_gaps"),
    ("resume gap", "resume_gaps"),
    ("mismatch", "mismatched"),
    ("unrecov.", "unrecovered"),
]
_FAILING = {
    "lost",
    "duplicated",
    "reordered",
    "not_stored",
    "live_gaps",
    "resume_gaps",
    "mismatched",
}


def render(out: Outcome, console: Console) -> bool:
    """Print the scenario's table, events and examples; True when it passed."""
    results = check(out.ledger)
    total = StreamResult("total")
    for r in results:
        total.add(r)
    plan = out.plan
    title = (
        f"{plan.name}: {plan.nodes} node(s) on {plan.engine}, {plan.duration:.0f} s, "
        f"budget {plan.budget}, seed {plan.seed}, {out.seconds:.0f} s wall"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("stream")
    for label, _ in _COLUMNS:
        table.add_column(label, justify="right")
    for r in [*results, total]:
        cells = []
        for _, attr in _COLUMNS:
            value = getattr(r, attr)
            bad = attr in _FAILING and value
            cells.append(f"[bold red]{value}[/]" if bad else str(value))
        table.add_row(r.stream, *cells, end_section=r is results[-1])
    console.print(table)
    ledger = out.ledger
    errors = ", ".join(f"{k} x{v}" for k, v in sorted(ledger.errors.items())) or "none"
    closes = ", ".join(f"{k}: {v}" for k, v in sorted(ledger.closes.items(), key=str)) or "none"
    console.print(
        f"not acknowledged (error, timeout, connection lost): {ledger.unacked} ({errors})"
    )
    console.print(
        f"connections closed by the server, by close code: {closes}; stalls: {ledger.stalls}"
    )
    for line in out.events:
        console.print(f"  {line}")
    for stream, epoch in sorted(ledger.epochs.items()):
        starts = {o.epoch for o in ledger.observers if o.stream == stream and o.epoch}
        if starts - {epoch}:
            console.print(f"[yellow]{stream}: epoch changed {sorted(starts)} -> {epoch}[/]")
    failed = [r for r in results if r.failed]
    for r in failed:
        console.print(f"[bold red]{r.stream}[/]:")
        for example in r.examples:
            console.print(f"    {example}")
    errors_logged = [line for line in out.problems if "WARNING" not in line]
    warnings = len(out.problems) - len(errors_logged)
    if out.problems:
        console.print(
            f"server log: {len(errors_logged)} error lines, {warnings} warnings"
            " (expected while Redis or a node is down); first ones:"
        )
        for line in (errors_logged or out.problems)[:8]:
            console.print(f"    {line[:300]}")
    if out.fatal:
        console.print(f"[bold red]the run failed: {out.fatal}[/]")
    ok = not failed and out.fatal is None and total.acked > 0
    verdict = "[bold green]PASS[/]" if ok else "[bold red]FAIL[/]"
    console.print(f"{plan.name}: {verdict}\n")
    return ok
