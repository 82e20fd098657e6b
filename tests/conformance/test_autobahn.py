"""RFC 6455 conformance of the native WebSocket layer: the Autobahn|Testsuite cases, run by
kosoku against the echo endpoint of echo.py (``HubProtocol`` with echo instead of the hub).

The cases run once per module, in a child process (see run.py for why), in 3 to 5 seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .expectations import (
    COMPRESSION_FAST_CASES,
    COMPRESSION_GROUPS,
    FAST_CASES,
    INFORMATIONAL,
    NON_STRICT,
    UNIMPLEMENTED,
)
from .run import CaseOutcome, judge

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
GROUPS = [glob.split(".")[0] for glob in FAST_CASES] + list(COMPRESSION_GROUPS)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CaseOutcome]:
    out = tmp_path_factory.mktemp("autobahn") / "outcomes.json"
    cases = [*FAST_CASES, *COMPRESSION_FAST_CASES]
    command = [sys.executable, "-m", "tests.conformance.run", "--json", str(out)]
    command += ["--concurrency", "8", "--cases", *cases]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=45)
    assert out.exists(), f"the Autobahn run did not finish:\n{done.stdout}\n{done.stderr}"
    return {o["case"]: CaseOutcome(**o) for o in json.loads(out.read_text())}


@pytest.mark.parametrize("group", GROUPS)
def test_autobahn_cases_end_ok_or_as_documented(
    group: str, outcomes: dict[str, CaseOutcome]
) -> None:
    cases = [o for c, o in outcomes.items() if c.split(".")[0] == group]
    assert cases, f"no Autobahn case ran in group {group}"
    problems = {o.case: judge(o) for o in cases if judge(o) is not None}
    assert problems == {}


def test_compression_cases_are_ok_except_the_declined_offers(
    outcomes: dict[str, CaseOutcome],
) -> None:
    """permessage-deflate is negotiated (no context takeover) and every echo is compressed:
    OK, but for the offers documented as declined (UNIMPLEMENTED, in expectations.py and
    README.md)."""
    cases = {c: o for c, o in outcomes.items() if c.split(".")[0] in COMPRESSION_GROUPS}
    assert len(cases) == len(COMPRESSION_FAST_CASES)
    unimplemented = {c for c, o in cases.items() if o.behavior == "UNIMPLEMENTED"}
    assert unimplemented == set(UNIMPLEMENTED) & set(cases) != set()
    ok = {c for c, o in cases.items() if o.behavior == o.behavior_close == "OK"}
    assert ok == set(cases) - unimplemented
    readme = (HERE / "README.md").read_text()
    assert all(f"| 13.{group}.x | UNIMPLEMENTED |" in readme for group in (3, 5))


def test_the_accepted_non_strict_and_informational_cases_are_the_documented_ones(
    outcomes: dict[str, CaseOutcome],
) -> None:
    def having(verdict: str) -> set[str]:
        return {c for c, o in outcomes.items() if verdict in (o.behavior, o.behavior_close)}

    assert having("NON-STRICT") == set(NON_STRICT)
    assert having("INFORMATIONAL") == set(INFORMATIONAL)
    readme = (HERE / "README.md").read_text()
    undocumented = [c for c in (*NON_STRICT, *INFORMATIONAL) if f"| {c} |" not in readme]
    assert undocumented == []
