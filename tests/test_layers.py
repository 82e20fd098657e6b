"""The import contracts in pyproject.toml can fail: a deliberately bad import in a copy of the
package breaks them (the old single 'forbidden' contract said KEPT when the core imported the
client SDK)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(src: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT), "--no-cache"], cwd=tmp, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("core/fanout.py", "import wshub.client.smoke", "layers"),
        ("core/hub.py", "import wshub.server.app", "layers"),
        ("protocol.py", "import wshub.core.hub", "layers"),
        ("client/streams.py", "import wshub.core.session", "client SDK"),
    ],
)
def test_a_bad_import_breaks_a_contract(
    tmp_path: Path, module: str, bad_import: str, contract: str
) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "wshub", src / "wshub", ignore=shutil.ignore_patterns("*.pyc"))
    target = src / "wshub" / module
    target.write_text(target.read_text() + f"\n{bad_import}  # deliberately bad\n")
    result = _lint(src, tmp_path)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken) or contract in result.stdout, result.stdout


def test_the_real_package_keeps_every_contract(tmp_path: Path) -> None:
    result = _lint(ROOT / "src", tmp_path)
    assert result.returncode == 0, result.stdout
