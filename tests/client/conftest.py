"""Fixtures for the client SDK tests: clients that are closed after the test, fast reconnects,
and a token provider that holds reconnections until the test lets them through."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from wshub.client import Client, ReconnectPolicy
from wshub.testing import free_port

from ..conftest import API_KEY, SECRET

#: Reconnect at once (10-50 ms), so drop-and-resume tests stay fast.
FAST = ReconnectPolicy(min_delay=0.01, max_delay=0.05)
TIMEOUT = 5.0

WSHUB = [sys.executable, "-m", "wshub"]
READY = "Uvicorn running on"

T = TypeVar("T")
ClientFactory = Callable[..., Client]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """``make_client(url, token=...)``: a :class:`Client` (not connected yet) with fast
    reconnects, closed when the test ends."""
    made: list[Client] = []

    def make(url: str, **options: Any) -> Client:
        options.setdefault("reconnect", FAST)
        options.setdefault("request_timeout", TIMEOUT)
        options.setdefault("open_timeout", TIMEOUT)
        client = Client(url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await asyncio.wait_for(client.close(), TIMEOUT)


class Gate:
    """A token provider: the first connection goes through; each later one waits, with
    :attr:`held` set, until :meth:`release`. Lets a test act while the client is disconnected."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0
        self.held = asyncio.Event()
        self._open = asyncio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls > 1:
            self.held.set()
            await self._open.wait()
        return self.token

    async def wait_held(self) -> None:
        await asyncio.wait_for(self.held.wait(), TIMEOUT)

    def release(self) -> None:
        self._open.set()


class Recorder(Generic[T]):
    """A callback that records what it is called with; ``await rec.next()`` waits for the next."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._queue: asyncio.Queue[T] = asyncio.Queue()

    def __call__(self, item: T) -> None:
        self.items.append(item)
        self._queue.put_nowait(item)

    async def next(self, timeout: float = TIMEOUT) -> T:
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def until(self, predicate: Callable[[T], bool], timeout: float = TIMEOUT) -> T:
        """Wait for an item satisfying ``predicate`` (items before it are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                item = await self._queue.get()
                if predicate(item):
                    return item


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any WS_* setting of the developer's shell, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
    env.update(extra, NO_COLOR="1", COLUMNS="160")
    return env


class ServerProcess:
    """``wshub serve`` in a subprocess; its stderr is drained by a thread, which also notices
    when the server is listening."""

    def __init__(self, tmp_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        env = clean_env(
            WS_PORT=str(self.port),
            WS_JWT_SECRET=SECRET,
            WS_API_KEY=API_KEY,
            WS_STORE_URL="memory://",
            WS_LOG_LEVEL="info",
        )
        self.proc = subprocess.Popen(
            [*WSHUB, "serve"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
        )
        self.log: list[str] = []
        self.ready = threading.Event()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if READY in line:
                self.ready.set()
        self.ready.set()  # exited: let the waiter see it

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.ready.wait(timeout), "server did not start"
        assert self.proc.poll() is None, "server exited:\n" + "".join(self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._drainer.join(10)  # reads to EOF, which the exit brought
        assert self.proc.stderr is not None
        self.proc.stderr.close()
