"""The short run of the fault checker (``python -m tools.chaos --short``), as part of make test:
real ``wshub serve`` processes, kill -9 of a node (SQLite) and of a node and Redis (Redis
cluster), every acknowledged message accounted for. ``make chaos`` runs the long version."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 150) -> None:
    """Run the checker; on a non-zero exit the assertion shows its tables."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.chaos", "--short", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the checker stops its processes on the way out
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        pytest.fail(f"the chaos run did not finish within {timeout} s:\n{output}")
    print(output)
    assert proc.returncode == 0, f"the chaos run failed (exit {proc.returncode}):\n{output}"


def _require_redis_server() -> None:
    if shutil.which("redis-server") is not None:
        return
    reason = "redis-server is not on PATH (install Redis >= 7 to run the chaos check on Redis)"
    if os.environ.get("WSHUB_REQUIRE_REDIS") == "1" or os.environ.get("CI", "").lower() in {
        "1",
        "true",
        "yes",
    }:
        pytest.fail(reason + "; CI / WSHUB_REQUIRE_REDIS=1 require it", pytrace=False)
    pytest.skip(reason)


@pytest.mark.timeout(200)
def test_sqlite_node_kill_loses_nothing() -> None:
    _run("--scenario", "sqlite")


@pytest.mark.timeout(200)
def test_redis_cluster_node_and_redis_kills_lose_nothing() -> None:
    _require_redis_server()
    _run("--scenario", "redis")
