"""Run Autobahn|Testsuite cases (with kosoku) against the native echo endpoint of echo.py.

::

    .venv/bin/python -m tests.conformance.run                     # the fast cases (make test's)
    .venv/bin/python -m tests.conformance.run --cases '9.*'       # limits and performance
    .venv/bin/python -m tests.conformance.run --cases '9.*' --report build/autobahn

Prints a summary (counts per verdict, every case that is not a plain OK with the reason) and
exits 0 when every case is acceptable: OK, or a NON-STRICT / INFORMATIONAL verdict documented in
expectations.py, or a 9.x case ending in a documented limit (``LIMITS``), or UNIMPLEMENTED for
the compression cases listed in ``UNIMPLEMENTED`` (offers wshub declines).

kosoku runs in this process, not in the test runner's: it puts its Autobahn shims (an
``autobahn`` package and a ``pkg_resources`` module) first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .echo import run_echo
from .expectations import (
    ACCEPTABLE,
    COMPRESSION_GROUPS,
    FAST_CASES,
    INFORMATIONAL,
    LIMITS,
    NON_STRICT,
    UNIMPLEMENTED,
)

__all__ = ["COMPRESSION_GROUPS", "CaseOutcome", "judge", "main", "run_cases"]


@dataclass(frozen=True)
class CaseOutcome:
    """The parts of a kosoku ``CaseResult`` the tests and the summary need."""

    case: str
    behavior: str
    behavior_close: str
    remote_close_code: int | None
    duration_ms: int
    result: str
    result_close: str


async def run_cases(
    cases: Sequence[str],
    *,
    exclude: Sequence[str] = (),
    concurrency: int = 1,
    report: Path | None = None,
) -> list[CaseOutcome]:
    """Serve the echo endpoint and run the selected cases against it."""
    from kosoku import FailureError, run_fuzzingclient

    async with run_echo() as url:
        try:
            results = await run_fuzzingclient(
                url, list(cases), list(exclude) or None, concurrency=concurrency
            )
        except FailureError as failure:  # raised when any case is not a pass; has them all
            results = failure.results
    if report is not None:
        from kosoku._report import write_reports  # what the kosoku CLI writes its reports with

        write_reports(results, str(report))
    return [
        CaseOutcome(
            case=r.case_id,
            behavior=r.behavior.value,
            behavior_close=r.behavior_close.value,
            remote_close_code=r.remote_close_code,
            duration_ms=r.duration,
            result=r.result,
            result_close=r.result_close,
        )
        for r in results
    ]


def judge(outcome: CaseOutcome) -> str | None:
    """None if the case is acceptable as documented, else why not."""
    verdicts = {outcome.behavior, outcome.behavior_close}
    if outcome.case in UNIMPLEMENTED:
        if outcome.behavior == "UNIMPLEMENTED" and outcome.behavior_close == "OK":
            return None
        return "expected UNIMPLEMENTED: wshub declines this permessage-deflate offer"
    if outcome.case.split(".")[0] in COMPRESSION_GROUPS and not verdicts <= {"OK"}:
        return f"{outcome.behavior}/{outcome.behavior_close}: {outcome.result}"
    if outcome.case in LIMITS:
        code, _ = LIMITS[outcome.case]
        if outcome.remote_close_code == code or verdicts <= {"OK"}:
            return None
        return f"expected the limit's close code {code}, got {outcome.remote_close_code}"
    if not verdicts <= ACCEPTABLE:
        return f"{outcome.behavior}/{outcome.behavior_close}: {outcome.result_close}"
    if "NON-STRICT" in verdicts and outcome.case not in NON_STRICT:
        return "NON-STRICT but not documented in expectations.py and README.md"
    if "INFORMATIONAL" in verdicts and outcome.case not in INFORMATIONAL:
        return "INFORMATIONAL but not documented in expectations.py and README.md"
    return None


def summarize(outcomes: Sequence[CaseOutcome], elapsed: float) -> tuple[str, bool]:
    """The printed summary, and whether the run is acceptable."""
    counts = Counter(f"{o.behavior}/{o.behavior_close}" for o in outcomes)
    lines = [f"{len(outcomes)} cases in {elapsed:.1f} s"]
    lines += [f"  {n:4d}  {verdict}" for verdict, n in sorted(counts.items())]
    ok = True
    explained: set[str] = set()

    def once(reason: str) -> str:  # a reason shared by several cases is printed once
        if reason in explained:
            return "(as above)"
        explained.add(reason)
        return reason

    for o in outcomes:
        problem = judge(o)
        plain = o.behavior == o.behavior_close == "OK"
        if problem is None and plain:
            continue
        if problem is None:
            why = (
                NON_STRICT.get(o.case)
                or INFORMATIONAL.get(o.case)
                or UNIMPLEMENTED.get(o.case)
                or LIMITS[o.case][1]
            )
            lines.append(f"  {o.case}: {o.behavior}/{o.behavior_close} accepted: {once(why)}")
        else:
            ok = False
            lines.append(f"  {o.case}: FAILED {problem} (close code {o.remote_close_code})")
    timed = [o for o in outcomes if o.case.startswith("9.")]
    if timed:
        lines.append("durations (ms): " + ", ".join(f"{o.case} {o.duration_ms}" for o in timed))
    return "\n".join(lines), ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance.run", description=__doc__)
    parser.add_argument(
        "--cases", nargs="+", default=list(FAST_CASES), help="case ids or globs (default: fast)"
    )
    parser.add_argument("--exclude", nargs="*", default=[], help="case ids or globs to skip")
    parser.add_argument("--concurrency", type=int, default=1, help="cases run in parallel")
    parser.add_argument("--report", type=Path, help="write Autobahn HTML/JSON reports here")
    parser.add_argument("--json", type=Path, help="write every case's outcome here (JSON)")
    args = parser.parse_args(argv)

    start = time.monotonic()
    outcomes = asyncio.run(
        run_cases(
            args.cases, exclude=args.exclude, concurrency=args.concurrency, report=args.report
        )
    )
    text, ok = summarize(outcomes, time.monotonic() - start)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    if not outcomes:
        print("no case matched the selection", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
