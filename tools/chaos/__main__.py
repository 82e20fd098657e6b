"""``python -m tools.chaos [--short] [--scenario sqlite|redis|redis-burst] [--seed N] ...``

Scenarios: ``sqlite`` (one node on SQLite, node kills), ``redis`` (three nodes on Redis, node
and Redis kills, long and steady), ``redis-burst`` (the same, short and at a high rate; long run
only).

Exit status 0 when every scenario accounted for every acknowledged message; 1 otherwise; 2 when
a scenario needs ``redis-server`` and it is not on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from .report import render
from .workload import Plan, run_scenario

#: (duration s, message budget, node kills, redis kills, requests in flight per publisher) per
#: scenario, for each length.
LENGTHS = {
    "short": {"sqlite": (6, 600, 1, 0, 4), "redis": (10, 1200, 1, 1, 4)},
    "long": {
        "sqlite": (60, 12000, 3, 0, 4),
        "redis": (120, 45000, 4, 2, 8),
        "redis-burst": (40, 27000, 2, 1, 12),
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos", description=__doc__)
    parser.add_argument("--short", action="store_true", help="the short run of make test")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=["sqlite", "redis", "redis-burst"],
        help="default: all of the run's length",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--duration", type=float, help="seconds of publishing per scenario")
    parser.add_argument("--budget", type=int, help="messages per scenario at most")
    parser.add_argument("--node-kills", type=int)
    parser.add_argument("--redis-kills", type=int)
    parser.add_argument("--nodes", type=int, default=3, help="nodes of the Redis scenario")
    parser.add_argument("--inflight", type=int, help="requests in flight per publisher")
    parser.add_argument(
        "--auth-retry",
        choices=["in-place", "reconnect"],
        help="after a failed authenticate (default: in-place; reconnect with --short)",
    )
    parser.add_argument("--keep", type=Path, help="keep the processes' files under this dir")
    args = parser.parse_args(argv)
    # "socket.send() raised exception.": a client writing to a node that was just killed
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    length = "short" if args.short else "long"
    scenarios = args.scenario or list(LENGTHS[length])
    console = Console(width=140, force_terminal=sys.stdout.isatty())
    needs_redis = any(name.startswith("redis") for name in scenarios)
    if needs_redis and shutil.which("redis-server") is None:
        console.print("redis-server is not on PATH: install Redis >= 7 (or --scenario sqlite)")
        return 2
    plans = []
    for name in scenarios:
        params = LENGTHS[length].get(name) or LENGTHS["long"][name]
        duration, budget, node_kills, redis_kills, inflight = params
        auth_retry = args.auth_retry or ("reconnect" if args.short else "in-place")
        plans.append(
            Plan(
                name=f"{name}-{length}",
                engine=name.split("-")[0],
                nodes=1 if name == "sqlite" else args.nodes,
                duration=args.duration or duration,
                budget=args.budget or budget,
                node_kills=node_kills if args.node_kills is None else args.node_kills,
                redis_kills=redis_kills if args.redis_kills is None else args.redis_kills,
                seed=seed,
                stall=4.0 if args.short else 12.0,
                inflight=args.inflight or inflight,
                auth_retry_in_place=auth_retry == "in-place",
                fault_gap=2.0 if args.short else 0.0,
            )
        )
    given = list(sys.argv[1:] if argv is None else argv)
    if args.seed is None:
        given += ["--seed", str(seed)]
    cmd = " ".join([".venv/bin/python -m tools.chaos", *given])
    console.print(f"chaos: seed {seed} (reproduce: {cmd})")
    ok = True
    for plan in plans:
        with tempfile.TemporaryDirectory(prefix=f"wshub-chaos-{plan.engine}-") as tmp:
            workdir = Path(tmp)
            if args.keep is not None:
                workdir = args.keep / plan.name
                workdir.mkdir(parents=True, exist_ok=True)
            out = asyncio.run(run_scenario(plan, workdir))
            ok = render(out, console) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
