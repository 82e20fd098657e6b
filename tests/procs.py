"""Real ``wshub serve`` processes for tests that restart, kill or signal the server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from wshub.testing import free_port

from .conftest import API_KEY, SECRET


class ServerProcess:
    """``python -m wshub serve`` with the given ``WS_*`` settings on a fixed port."""

    def __init__(self, cwd: Path, port: int | None = None, **settings: str) -> None:
        self.cwd = cwd
        self.port = port or free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WS_")},
            "WS_PORT": str(self.port),
            "WS_JWT_SECRET": SECRET,
            "WS_API_KEY": API_KEY,
            "WS_LOG_LEVEL": "info",
            **{f"WS_{k.upper()}": v for k, v in settings.items()},
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 20) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "wshub",
            "serve",
            env=self.env,
            cwd=self.cwd,
            stderr=asyncio.subprocess.PIPE,
        )
        started = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_log(started))
        await asyncio.wait_for(started, timeout)

    async def _read_log(self, started: asyncio.Future[None]) -> None:
        assert self.proc and self.proc.stderr
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if "Uvicorn running on" in line and not started.done():
                started.set_result(None)
        if not started.done():
            started.set_exception(RuntimeError("server exited:\n" + "\n".join(self.log[-20:])))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 15) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def kill9(self) -> None:
        """SIGKILL: no shutdown code runs, nothing is flushed by the server."""
        self.signal(signal.SIGKILL)
        await self.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.wait()


@contextlib.asynccontextmanager
async def server_process(cwd: Path, **settings: str) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(cwd, **settings)
    await proc.start()
    try:
        yield proc
    finally:
        await proc.stop()
