#!/usr/bin/env python
"""Run the wshub benchmarks side by side with the peers, and report.

    make -C benchmarks bench                       # full: 3 repetitions (~30 min on 2 cores)
    BENCH_QUICK=1 make -C benchmarks bench         # smoke check: 1 repetition, short windows
    BENCH_REPS=5 BENCH_SERVERS=picows,node-ws BENCH_SCENARIOS=fanout-1000 make -C benchmarks bench

Every (repetition, scenario, server) starts a fresh server pinned to core 0, runs the C load
generator pinned to core 1, and stops the server. Repetitions are interleaved (rep 1 of every
scenario and server, then rep 2, ...) so that ratios taken within a repetition compare servers
measured minutes apart, not half an hour apart. Output: a table of medians and per-repetition
ratios (vs picows / vs node-ws) on the console and in benchmarks/results/<run>/ (table.md,
runs.jsonl, summary.json, chart.png, server logs); a full run (no filter, not quick) also
rewrites benchmarks/RESULTS.md.

Environment (or the matching --options): BENCH_REPS, BENCH_QUICK, BENCH_SERVERS, BENCH_SCENARIOS,
BENCH_SERVER_CORE, BENCH_LOADGEN_CORE, BENCH_RESULTS_MD (1: always write RESULTS.md, 0: never),
BENCH_WSHUB_CMD (instead of `<venv>/bin/wshub serve`; its last word must be `serve`),
BENCH_RETRY_BUDGET (seconds, default 180, quick 0: a measurement that other processes disturbed is
taken again once, after waiting up to 20 s for quiet, while the budget lasts).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.loadgen import LOADGEN, machine_busy, run_loadgen
from harness.machine import describe_machine
from harness.report import (
    DISTURBED,
    cell_text,
    md_cpu_table,
    md_table,
    md_targets,
    render_markdown,
    summarize,
    visible,
    write_chart,
)
from harness.scenarios import Scenario, Timing, build_scenarios
from harness.servers import PEERS, Server, ServerProcess, Session, build_servers, wshub_command
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: Hand-written reading of the profile behind the numbers, appended to RESULTS.md by every run.
ANALYSIS = HERE / "ANALYSIS.md"
NOFILE_WANTED = 65536
QUIET_WAIT = 20.0  # seconds at most to wait for quiet before measuring a disturbed run again


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", default=env("BENCH_QUICK", "0") not in ("", "0"))
    p.add_argument("--reps", type=int, default=int(env("BENCH_REPS") or 0) or None)
    p.add_argument("--servers", default=env("BENCH_SERVERS", ""), help="comma-separated keys")
    p.add_argument("--scenarios", default=env("BENCH_SCENARIOS", ""), help="comma-separated keys")
    p.add_argument("--server-core", type=int, default=int(env("BENCH_SERVER_CORE", "0")))
    p.add_argument("--loadgen-core", type=int, default=int(env("BENCH_LOADGEN_CORE", "1")))
    p.add_argument(
        "--results-md", choices=("auto", "1", "0"), default=env("BENCH_RESULTS_MD", "auto")
    )
    p.add_argument(
        "--retry-budget",
        type=float,
        default=float(env("BENCH_RETRY_BUDGET") or -1),
        help="seconds the run may spend waiting for quiet and measuring disturbed runs again "
        "(0: never; default 180, quick 0)",
    )
    p.add_argument("--list", action="store_true", help="list servers and scenarios, then exit")
    p.add_argument(
        "--report",
        metavar="RUN_DIR",
        type=Path,
        help="measure nothing: write the report of an earlier run again from its runs.jsonl and "
        "summary.json (after editing ANALYSIS.md, say); RESULTS.md too with --results-md 1",
    )
    args = p.parse_args()
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.retry_budget < 0:
        args.retry_budget = 0 if args.quick else 180
    return args


def raise_nofile(console: Console) -> int:
    """Servers and the loadgen each hold one descriptor per connection (10,000 for idle)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (max(NOFILE_WANTED, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
            break
        except (ValueError, OSError):
            continue
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 10_500:
        console.print(
            f"[yellow]warning: open-file limit is {soft}; the idle scenario needs > 10,000"
        )
    return soft


def publisher_token(session: Session, console: Console) -> str:
    """`wshub token bench-publisher` with the session's secret; PyJWT as a fallback."""
    exe = wshub_command(session)[:-1] or [str(session.venv_bin / "wshub")]
    env = {**os.environ, "WS_JWT_SECRET": session.jwt_secret}
    try:
        out = subprocess.run(
            [*exe, "token", "bench-publisher", "--ttl", "86400"],
            env=env,
            cwd=session.scratch,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        token = out.stdout.strip().splitlines()[-1]
        if token.count(".") == 2:
            return token
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    console.print("[yellow]`wshub token` failed; signing the publisher's HS256 token with PyJWT")
    import jwt

    now = int(time.time())
    return str(
        jwt.encode(
            {"sub": "bench-publisher", "iat": now, "exp": now + 86400},
            session.jwt_secret,
            algorithm="HS256",
        )
    )


def chat_tokens(session: Session, users: int) -> Path:
    """A file of HS256 JWTs with the session's secret, one per line, `sub` u<i> on line i: the
    chat scenario's users (each connection its own user)."""
    import jwt

    now = int(time.time())
    path = session.scratch / "chat-tokens.txt"
    lines = (
        jwt.encode(
            {"sub": f"u{i}", "iat": now, "exp": now + 86400}, session.jwt_secret, algorithm="HS256"
        )
        for i in range(users)
    )
    path.write_text("".join(f"{t}\n" for t in lines))
    return path


def select(items: list[Any], wanted: str, what: str) -> list[Any]:
    if not wanted:
        return items
    keys = [k.strip() for k in wanted.split(",") if k.strip()]
    unknown = [k for k in keys if k not in {i.key for i in items}]
    if unknown:
        sys.exit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(i.key for i in items)}")
    return [i for i in items if i.key in keys]


def plan(
    reps: int, scenarios: list[Scenario], servers: list[Server]
) -> list[tuple[int, Scenario, Server]]:
    return [
        (rep, sc, srv)
        for rep in range(1, reps + 1)
        for sc in scenarios
        for srv in servers
        if not srv.only or sc.key in srv.only
    ]


def one_run(
    rep: int, sc: Scenario, srv: Server, session: Session, args: argparse.Namespace
) -> dict[str, Any]:
    record: dict[str, Any] = {"rep": rep, "scenario": sc.key, "server": srv.key}
    t0 = time.monotonic()
    proc: ServerProcess | None = None
    try:
        proc = ServerProcess(srv, session, f"rep{rep}-{sc.key}-{srv.key}")
        time.sleep(0.3)  # let it finish starting (imports after bind, lifespan)
        record.update(
            run_loadgen(
                sc,
                proc,
                loadgen_core=args.loadgen_core,
                token=session.token,
                chat_tokens=session.chat_tokens,
            )
        )
        record["ok"] = True
        if not proc.alive():
            record.update(ok=False, error=f"server died during the run: {proc.log_tail()}")
    except Exception as exc:  # one failed run must not stop the others
        tail = proc.log_tail() if proc else ""
        record.update(ok=False, error=f"{exc}" + (f" (server log: {tail})" if tail else ""))
    finally:
        if proc:
            proc.stop()
    record["wall_s"] = round(time.monotonic() - t0, 2)
    return record


def busy_now(seconds: float = 1.0) -> float:
    """CPU in use by processes on the machine, in cores, over `seconds`."""
    a = machine_busy()
    time.sleep(seconds)
    return (machine_busy() - a) / seconds


def disturbed(rec: dict[str, Any]) -> bool:
    return bool(rec.get("other_cpu_ratio", 0) > DISTURBED)


def wait_quiet(limit: float) -> None:
    """Return once other processes use less than DISTURBED of a core, or after `limit` s."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and busy_now(1.0) > DISTURBED:
        pass


def measure(
    rep: int,
    sc: Scenario,
    srv: Server,
    session: Session,
    args: argparse.Namespace,
    progress: Progress,
    task: TaskID,
    label: str,
) -> dict[str, Any]:
    """One measurement; taken again once, after waiting for quiet, if other processes disturbed
    it (a test suite or a browser on a 2-core machine halves the numbers), while
    args.retry_budget (seconds) lasts."""
    rec = one_run(rep, sc, srv, session, args)
    if disturbed(rec) and args.retry_budget > 0:
        t0 = time.monotonic()
        progress.console.print(describe_run(rec, sc) + " [yellow]-> again[/]")
        progress.update(task, description=f"waiting for a quiet machine · {srv.key}")
        wait_quiet(min(QUIET_WAIT, args.retry_budget))
        progress.update(task, description=label)
        rec = one_run(rep, sc, srv, session, args)
        rec["retried"] = True
        args.retry_budget -= time.monotonic() - t0
        if args.retry_budget <= 0:
            progress.console.print(
                "[yellow]retry budget spent: the machine stays busy; disturbed cells are marked §"
            )
    return rec


def describe_run(rec: dict[str, Any], sc: Scenario) -> str:
    head = f"rep {rec['rep']} {sc.key:<13} {rec['server']:<13}"
    if not rec.get("ok"):
        return f"{head} [red]failed[/]: {rec.get('error', '')[:200]}"
    parts = [f"{m.column} {m.fmt(float(rec[m.field]))}" for m in sc.metrics if m.field in rec]
    cpu = []
    if "server_cpu_ratio" in rec:
        cpu.append(f"server {rec['server_cpu_ratio'] * 100:.0f}%")
    if "loadgen_cpu_ratio" in rec:
        lg = rec["loadgen_cpu_ratio"]
        cpu.append(
            ("[yellow]" if lg > 0.9 else "")
            + f"loadgen {lg * 100:.0f}%"
            + ("[/]" if lg > 0.9 else "")
        )
    if disturbed(rec):
        cpu.append(f"[yellow]other processes {rec['other_cpu_ratio'] * 100:.0f}%[/]")
    if rec.get("closed") or rec.get("errors"):
        cpu.append(f"[yellow]{rec.get('closed', 0)} closed, {rec.get('errors', 0)} errors[/]")
    if rec.get("undelivered"):  # chat: every user is online, so none should be stored instead
        cpu.append(f"[yellow]{rec['undelivered']} chats acked as not delivered[/]")
    cpu.append(f"{rec['wall_s']:.0f} s")
    return f"{head} {', '.join(parts)}  ({', '.join(cpu)})"


def main() -> int:
    args = parse_args()
    # wide enough for the table when the output is a file or a pipe (CI logs, tee)
    console = Console(width=None if sys.stdout.isatty() else 220)
    timing = (
        Timing(warmup=0.3, duration=1.0, idle_conns=2000, idle_hold=2.0)
        if args.quick
        else Timing(warmup=1.0, duration=4.0, idle_conns=10_000, idle_hold=2.5)
    )
    if args.report:
        return rewrite_report(console, args)
    all_scenarios = build_scenarios(timing)
    all_servers = build_servers()
    if args.list:
        for s in all_servers:
            console.print(f"server   {s.key:<14} {s.label}")
        for sc in all_scenarios:
            console.print(f"scenario {sc.key:<14} {sc.describe}")
        return 0
    if not LOADGEN.exists():
        console.print(f"[red]{LOADGEN} not built: run `make -C benchmarks loadgen`")
        return 2
    scenarios = select(all_scenarios, args.scenarios, "scenario")
    servers = select(all_servers, args.servers, "server")
    raise_nofile(console)

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    out = RESULTS / stamp
    (out / "logs").mkdir(parents=True, exist_ok=True)
    latest = RESULTS / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(stamp)
    session = Session(
        server_core=args.server_core,
        scratch=Path(tempfile.mkdtemp(prefix="wshub-bench-")),
        logs=out / "logs",
        venv_bin=Path(sys.executable).parent,
    )

    skipped: dict[str, str] = {}
    for srv in list(servers):
        why = srv.missing(session)
        if why:
            skipped[srv.key] = why
            servers.remove(srv)
            console.print(f"[yellow]skipping {srv.key}: {why}")
    if any(s.wshub for s in servers):
        session.token = publisher_token(session, console)
        users = max((int(sc.extra.get("users", 0)) for sc in scenarios), default=0)
        if users:
            session.chat_tokens = chat_tokens(session, users)

    background = busy_now()
    if background > 0.2:
        console.print(
            f"[yellow]warning: other processes are using {background * 100:.0f}% of a core "
            "right now; results will be noisy (cells get a § where it happened)"
        )

    runs = plan(args.reps, scenarios, servers)
    console.print(
        f"{len(runs)} runs: {args.reps} rep(s) x {len(scenarios)} scenario(s) x "
        f"{len(servers)} server(s); server on core {args.server_core}, loadgen on core "
        f"{args.loadgen_core}; results in {out.relative_to(HERE)}/"
    )
    records: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("starting", total=len(runs))
            with open(out / "runs.jsonl", "w") as raw:
                for rep, sc, srv in runs:
                    label = f"rep {rep}/{args.reps} {sc.key} · {srv.key}"
                    progress.update(task, description=label)
                    rec = measure(rep, sc, srv, session, args, progress, task, label)
                    records.append(rec)
                    raw.write(json.dumps(rec) + "\n")
                    raw.flush()
                    progress.console.print(describe_run(rec, sc))
                    progress.advance(task)
    finally:
        shutil.rmtree(session.scratch, ignore_errors=True)
    elapsed = time.monotonic() - started
    settings = {
        "reps": args.reps,
        "quick": args.quick,
        "warmup": timing.warmup,
        "duration": timing.duration,
        "idle_conns": timing.idle_conns,
        "idle_hold": timing.idle_hold,
        "server_core": args.server_core,
        "loadgen_core": args.loadgen_core,
    }
    full = not (args.quick or args.servers or args.scenarios)
    write_report(
        console,
        out,
        records,
        servers,
        scenarios,
        settings=settings,
        machine=describe_machine(PEERS),
        skipped=skipped,
        elapsed=elapsed,
        results_md=args.results_md == "1" or (args.results_md == "auto" and full),
    )
    return 0 if all(r.get("ok") for r in records) else 1


def rewrite_report(console: Console, args: argparse.Namespace) -> int:
    """--report RUN_DIR: the report of an earlier run, from what it saved."""
    out: Path = args.report.resolve()
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    saved = json.loads((out / "summary.json").read_text())
    settings = saved["settings"]
    # Runs saved before idle_conns was in the settings: the idle runs' own connection count.
    idle_runs = [int(r.get("conns", 0)) for r in records if r["scenario"] == "idle"]
    idle_conns = max(idle_runs, default=0)
    timing = Timing(
        warmup=settings["warmup"],
        duration=settings["duration"],
        idle_conns=int(settings.get("idle_conns", idle_conns)),
        idle_hold=float(settings.get("idle_hold", 0.0)),
    )
    ran = {(r["scenario"], r["server"]) for r in records}
    scenarios = [sc for sc in build_scenarios(timing) if any(sc.key == k for k, _ in ran)]
    servers = [srv for srv in build_servers() if any(srv.key == k for _, k in ran)]
    write_report(
        console,
        out,
        records,
        servers,
        scenarios,
        settings=settings,
        machine=saved["machine"],
        skipped=saved.get("skipped", {}),
        elapsed=float(saved.get("elapsed_s", 0)),
        results_md=args.results_md == "1",
        generated=saved.get("generated"),
    )
    return 0


def write_report(
    console: Console,
    out: Path,
    records: list[dict[str, Any]],
    servers: list[Server],
    scenarios: list[Scenario],
    *,
    settings: dict[str, Any],
    machine: dict[str, Any],
    skipped: dict[str, str],
    elapsed: float,
    results_md: bool,
    generated: str | None = None,
) -> None:
    """The table on the console; table.md, RESULTS.md, summary.json and chart.png in ``out``;
    benchmarks/RESULTS.md too when ``results_md``."""
    summary = summarize(records, servers, scenarios)
    generated = generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    show_table(console, summary)
    (out / "table.md").write_text(
        md_table(summary) + "\n\n" + md_cpu_table(summary, scenarios) + "\n"
    )
    console.print(md_targets(records), markup=False, highlight=False)
    markdown = render_markdown(
        summary,
        scenarios=scenarios,
        machine=machine,
        settings=settings,
        skipped=skipped,
        elapsed_s=elapsed,
        generated=generated,
        records=records,
        analysis=ANALYSIS.read_text() if ANALYSIS.exists() else "",
    )
    (out / "RESULTS.md").write_text(markdown)
    (out / "summary.json").write_text(
        json.dumps(
            {
                "settings": settings,
                "machine": machine,
                "skipped": skipped,
                "elapsed_s": elapsed,
                "generated": generated,
                "cells": {
                    f"{k[0]} / {k[1]}": {
                        "values": c.values,
                        "median": c.median,
                        "ratios": c.ratios,
                        "errors": c.errors,
                        "loadgen_cpu": c.loadgen_cpu,
                        "server_cpu": c.server_cpu,
                    }
                    for k, c in summary.cells.items()
                },
            },
            indent=1,
        )
    )
    try:
        write_chart(
            summary,
            out / "chart.png",
            f"wshub benchmarks, {generated}, median of {settings['reps']} rep(s); {machine['cpu']}",
        )
        console.print(f"chart: {(out / 'chart.png').relative_to(HERE)}")
    except Exception as exc:  # the numbers matter more than the picture
        console.print(f"[yellow]chart not written: {exc}")
    if results_md:
        (HERE / "RESULTS.md").write_text(markdown)
        if (out / "chart.png").exists():
            shutil.copyfile(out / "chart.png", HERE / "RESULTS.png")
        console.print("RESULTS.md and RESULTS.png updated")
    else:
        console.print(
            f"RESULTS.md left as it is (quick, filtered or re-reported run); this run's copy: "
            f"{(out / 'RESULTS.md').relative_to(HERE)}"
        )
    for note_no, note in enumerate(summary.footnotes, 1):
        console.print(f"[{note_no}] {note}", markup=False, highlight=False)
    console.print(f"done in {elapsed / 60:.1f} min")


def show_table(console: Console, summary: Any) -> None:
    servers, metrics = visible(summary)
    table = Table(title="median (ratio vs picows / vs node-ws; >1 = better than the reference)")
    table.add_column("server")
    for m in metrics:
        table.add_column(m.column, justify="right")
    for s in servers:
        table.add_row(s.label, *(cell_text(summary, s, m) for m in metrics))
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
