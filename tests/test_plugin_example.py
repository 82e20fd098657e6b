"""examples/test_app_recovery.py (the recovery test docs/testing.md walks through) runs with
pytest in a subprocess, from the project root, as an app's own test suite would: it must pass."""

from __future__ import annotations

import subprocess
import sys

from .redis_server import require_redis_server
from .test_pytest_plugin import ROOT, outcome, plugin_args, plugin_env


def test_the_recovery_example_passes() -> None:
    require_redis_server()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
        + plugin_args(autoload=False)
        + ["examples/test_app_recovery.py"],
        cwd=ROOT,
        env=plugin_env(autoload=False),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, outcome(result)
    assert "4 passed" in result.stdout, outcome(result)
