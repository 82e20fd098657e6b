"""What the results were measured on: CPU, cores, kernel, runtimes and package versions."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = ["describe_machine"]

PACKAGES = (
    "wshub",
    "picows",
    "uvloop",
    "uvicorn",
    "httptools",
    "websockets",
    "starlette",
    "python-socketio",
    "python-engineio",
    "granian",
    "orjson",
    "redis",
    "psutil",
    "matplotlib",
)


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "not found"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _node_version(peers: Path, peer: str, package: str) -> str:
    """The installed version of a Node peer's ``package`` (from its node_modules)."""
    try:
        path = peers / peer / "node_modules" / package / "package.json"
        return str(json.loads(path.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "not installed"


def describe_machine(peers: Path) -> dict[str, object]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["ws (node)"] = _node_version(peers, "node_ws", "ws")
    versions["socket.io (node)"] = _node_version(peers, "node_socketio", "socket.io")
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "node": _first_line(["node", "--version"]),
        "gcc": _first_line(["gcc", "--version"]),
        "redis": _first_line(["redis-server", "--version"]),
        "packages": versions,
    }
