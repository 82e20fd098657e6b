"""Throwaway ``redis-server`` processes for tests: own port, own directory, never the machine's
shared Redis.

Tests that need Redis are skipped with a clear reason when ``redis-server`` is not on PATH, unless
``WSHUB_REQUIRE_REDIS=1`` (CI): then they fail.

::

    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    ...
    server.stop()      # or kill9(); start() again: same port, same directory
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from wshub.testing import free_port

__all__ = [
    "RedisServer",
    "persistent_redis",
    "redis_server",
    "redis_url",
    "require_redis_server",
]

READY = "Ready to accept connections"


def require_redis_server() -> str:
    """The path of ``redis-server``; skips the test (or fails, with WSHUB_REQUIRE_REDIS=1)."""
    path = shutil.which("redis-server")
    if path is None:
        reason = "redis-server is not on PATH (install Redis >= 7 to run the Redis tests)"
        if os.environ.get("WSHUB_REQUIRE_REDIS") == "1":
            pytest.fail(reason + "; WSHUB_REQUIRE_REDIS=1 requires them", pytrace=False)
        pytest.skip(reason)
    return path


class RedisServer:
    """One ``redis-server`` on a free loopback port, its files in ``directory``.

    ``appendonly=True`` writes an AOF with ``appendfsync always``: every acknowledged write is on
    disk, so a restart (even after kill -9) keeps it. Otherwise nothing is persisted.
    """

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.executable = require_redis_server()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        """Start (again, on the same port and directory) and wait until it accepts clients."""
        assert self.proc is None, "already running"
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--protected-mode", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("redis-server did not start:\n" + "\n".join(self.log[-20:]))

    def _read_log(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                self.log.append(line.rstrip())
                if READY in line:
                    ready.set()
        ready.set()  # exited: start() sees it through poll()

    def stop(self) -> None:
        """Shut down (SIGTERM: an AOF is flushed) and wait for the process to go."""
        self._end(signal.SIGTERM)

    def kill9(self) -> None:
        """SIGKILL: only what Redis already fsynced survives."""
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def client(self) -> redis.Redis:
        """A synchronous client, for test set-up and inspection."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def flush(self) -> None:
        with self.client() as c:
            c.flushall()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One throwaway redis-server for the whole session (no persistence)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.flush()
    return redis_server.url


@contextlib.contextmanager
def persistent_redis(directory: Path) -> Iterator[RedisServer]:
    """A redis-server of one test alone, persisting every acknowledged write
    (appendonly, appendfsync always), stopped afterwards."""
    server = RedisServer(directory, appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()
