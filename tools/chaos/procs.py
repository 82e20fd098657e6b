"""The processes a run owns: ``wshub serve`` nodes and a ``redis-server``, each started in a
session of its own and signalled only by its own PID."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
from collections import deque
from pathlib import Path

__all__ = ["API_KEY", "SECRET", "NodeProcess", "RedisProcess", "free_port"]

SECRET = "chaos-secret-" + "0123456789abcdef" * 4
API_KEY = "chaos-api-key"

#: Log lines that say something went wrong on the server.
_BAD = ("ERROR", "Traceback", "CRITICAL", "WARNING")


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL it if the checker itself dies, so not even a
    kill -9 of the checker leaves a node or a redis-server behind."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Proc:
    """A child process with its output collected: the last lines, and every line that reports
    a problem (capped)."""

    name = "proc"
    ready_line = ""
    bad: tuple[str, ...] = _BAD

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.tail: deque[str] = deque(maxlen=300)
        self.problems: list[str] = []
        self.starts = 0
        self.kills = 0
        self._reader: asyncio.Task[None] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout: float = 30) -> None:
        assert not self.running, f"{self.name} already running"
        self.starts += 1
        self.tail.append(f"==== start #{self.starts} ====")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv(),
            env=self.env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill reaches it and its children
            preexec_fn=_die_with_parent,
        )
        ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(self.proc, ready))
        try:
            await asyncio.wait_for(ready, timeout)
        except BaseException:
            await self.kill9()
            raise

    async def _read(self, proc: asyncio.subprocess.Process, ready: asyncio.Future[None]) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            if any(word in line for word in self.bad) and len(self.problems) < 200:
                self.problems.append(f"[{self.name} start #{self.starts}] {line}")
            if self.ready_line in line and not ready.done():
                ready.set_result(None)
        if not ready.done():
            ready.set_exception(
                RuntimeError(f"{self.name} exited:\n" + "\n".join(list(self.tail)[-20:]))
            )

    async def kill9(self) -> None:
        """SIGKILL to this process's own group (its PID is the group id), then reap it."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            self.kills += 1
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        self.proc = None

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                await self.kill9()
                return
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        self.proc = None


class NodeProcess(_Proc):
    """``python -m wshub serve`` on a fixed loopback port with the given ``WS_*`` settings."""

    ready_line = "Uvicorn running on"

    def __init__(self, index: int, cwd: Path, settings: dict[str, str]) -> None:
        super().__init__()
        self.name = f"node{index}"
        self.cwd = cwd
        self.port = free_port()
        self.settings = settings

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "wshub", "serve"]

    def env(self) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("WS_")},
            "WS_HOST": "127.0.0.1",
            "WS_PORT": str(self.port),
            "WS_JWT_SECRET": SECRET,
            "WS_API_KEY": API_KEY,
            **{f"WS_{k.upper()}": v for k, v in self.settings.items()},
        }


class RedisProcess(_Proc):
    """A throwaway ``redis-server`` on a free loopback port, persisting every acknowledged write
    (``appendonly yes``, ``appendfsync always``) in its own directory."""

    name = "redis"
    ready_line = "Ready to accept connections"
    bad = ()  # its start-up warnings (overcommit, ...) are about the machine, not wshub

    def __init__(self, directory: Path) -> None:
        super().__init__()
        path = shutil.which("redis-server")
        if path is None:
            raise FileNotFoundError("redis-server is not on PATH (install Redis >= 7)")
        self.executable = path
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
