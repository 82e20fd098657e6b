"""Golden wire frames (tests/golden/): loading them and checking a frame against one.

The format and the matching rule are described in tests/golden/README.md; the JavaScript twin of
:func:`mismatches` is in js/client_tests.js and must apply the same rule.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"


@dataclass(frozen=True)
class Golden:
    name: str  # "server/welcome"
    description: str
    frame: dict[str, Any]
    variable: tuple[str, ...]

    def instance(self, *, id: str | None = None, **payload: Any) -> dict[str, Any]:
        """A copy of the frame with ``id`` and payload fields replaced (for sending it)."""
        frame = copy.deepcopy(self.frame)
        if id is not None:
            frame["id"] = id
        frame.setdefault("payload", {}).update(payload)
        return frame


def load(name: str) -> Golden:
    raw = json.loads((GOLDEN_DIR / f"{name}.json").read_text())
    return Golden(name, raw["description"], raw["frame"], tuple(raw["variable"]))


def names() -> list[str]:
    """Every golden file, as ``client/ping``, ``server/welcome``..."""
    return sorted(f"{path.parent.name}/{path.stem}" for path in GOLDEN_DIR.glob("*/*.json"))


def load_all() -> dict[str, dict[str, Any]]:
    """Every golden file's content by name, as the browser tests hand it to the page."""
    return {name: json.loads((GOLDEN_DIR / f"{name}.json").read_text()) for name in names()}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def mismatches(golden: Golden, actual: Any) -> list[str]:
    """How ``actual`` differs from the golden frame; empty when it matches."""
    problems: list[str] = []
    _compare(golden.frame, actual, "", set(golden.variable), problems)
    return problems


def _compare(expected: Any, actual: Any, path: str, variable: set[str], out: list[str]) -> None:
    where = path or "frame"
    if _kind(expected) != _kind(actual):
        out.append(f"{where}: expected {_kind(expected)}, got {actual!r}")
        return
    if path in variable:
        return
    if isinstance(expected, dict):
        for key in expected.keys() - actual.keys():
            out.append(f"{where}: missing key {key!r}")
        for key in actual.keys() - expected.keys():
            out.append(f"{where}: unexpected key {key!r}")
        for key in expected.keys() & actual.keys():
            _compare(expected[key], actual[key], f"{path}.{key}" if path else key, variable, out)
    elif isinstance(expected, list):
        if len(expected) != len(actual):
            out.append(f"{where}: expected {len(expected)} items, got {actual!r}")
            return
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _compare(e, a, f"{path}[{i}]", variable, out)
    elif expected != actual:
        out.append(f"{where}: expected {expected!r}, got {actual!r}")


def assert_matches(name: str, actual: Any) -> Any:
    """Fail unless ``actual`` matches golden ``name``; return it for further checks."""
    problems = mismatches(load(name), actual)
    assert not problems, f"{name} does not match {actual!r}:\n  " + "\n  ".join(problems)
    return actual
