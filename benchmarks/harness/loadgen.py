"""Running the C load generator against a started server, and what the runner measures on the
server side meanwhile: its CPU over the loadgen's measured window, its RSS for idle connections."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from .scenarios import Scenario
from .servers import ServerProcess, pinned

__all__ = ["LOADGEN", "machine_busy", "run_loadgen"]

LOADGEN = Path(__file__).resolve().parent.parent / "build" / "loadgen"


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (everything but idle and iowait). Interrupt
    time is included: the kernel charges softirq ticks (loopback TCP) to the task they interrupt
    as well, so the server's and the loadgen's own times include it."""
    t = psutil.cpu_times()
    return float(
        sum(t)
        - t.idle
        - getattr(t, "iowait", 0.0)
        - getattr(t, "guest", 0.0)
        - getattr(t, "guest_nice", 0.0)
    )


def _deadline(scenario: Scenario, args: list[str]) -> float:
    """Seconds after which a loadgen that has not exited is killed (it exits by itself before)."""

    def opt(name: str, default: float) -> float:
        return float(args[args.index(name) + 1]) if name in args else default

    return (
        opt("--connect-timeout", 60)
        + opt("--warmup", 1)
        + opt("--duration", 4)
        + opt("--hold", 2)
        + 15
    )


def run_loadgen(
    scenario: Scenario,
    server: ServerProcess,
    *,
    loadgen_core: int,
    token: str | None,
    chat_tokens: Path | None = None,
    idle_settle: float = 1.0,
) -> dict[str, Any]:
    """Run one scenario; return the loadgen's result line plus the runner's own measurements:
    server_cpu_ratio (server CPU / wall over the window) and, for idle, RSS figures. wshub gets
    ``token`` for its publishers and, in chat, ``chat_tokens`` (a file, one JWT per user); the
    peers ignore authentication."""
    args = [str(LOADGEN), scenario.kind, "--port", str(server.port), *scenario.args]
    if server.server.sio:
        args.append("--sio")
    if server.server.path:
        args += ["--path", server.server.path]
    if token and server.server.wshub:
        args += ["--token", token]
    if scenario.kind == "chat" and server.server.wshub:
        if chat_tokens is None:
            raise RuntimeError("no chat tokens for wshub (PyJWT missing?)")
        args += ["--tokens", str(chat_tokens)]
    record: dict[str, Any] = {}
    rss_base = server.rss() if scenario.kind == "idle" else 0
    proc = subprocess.Popen(
        pinned(loadgen_core, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    killer = threading.Timer(_deadline(scenario, args), proc.kill)
    killer.start()
    result: dict[str, Any] | None = None
    cpu0 = t0 = 0.0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            event = msg.get("event")
            if event == "window_start":
                cpu0, busy0, t0 = server.cpu_seconds(), machine_busy(), time.monotonic()
            elif event == "window_end":
                wall = max(time.monotonic() - t0, 1e-9)
                server_cpu = server.cpu_seconds() - cpu0
                record["server_cpu_ratio"] = server_cpu / wall
                # everything else that ran meanwhile (less the loadgen, subtracted below)
                record["busy_cpu_ratio"] = (machine_busy() - busy0) / wall - server_cpu / wall
            elif event == "ready":
                # connections are up: let the server settle, then take the highest of two samples
                time.sleep(idle_settle)
                a = server.rss()
                time.sleep(0.3)
                rss = max(a, server.rss())
                conns = int(msg.get("conns", scenario.idle_conns or 1))
                record.update(
                    rss_base=rss_base,
                    rss_loaded=rss,
                    rss_per_conn_kib=(rss - rss_base) / conns / 1024,
                )
            elif event is None:
                result = msg
                result["loadgen_scenario"] = result.pop("scenario", scenario.kind)
        proc.wait(timeout=10)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    if result is None:
        raise RuntimeError(
            f"loadgen gave no result (status {proc.returncode}) {stderr.strip()[-300:]}"
        )
    record.update(result)
    if "busy_cpu_ratio" in record and "loadgen_cpu_ratio" in record:
        record["other_cpu_ratio"] = round(
            record.pop("busy_cpu_ratio") - record["loadgen_cpu_ratio"], 3
        )
    if not result.get("ok"):
        detail = result.get("first_error") or ""
        raise RuntimeError(
            f"{result.get('error')} ({result.get('ready')}/{result.get('needed')} connections up)"
            + (f": {detail}" if detail else "")
        )
    return record
