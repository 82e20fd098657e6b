"""What the Redis store, broker and presence share: URLs and key prefixes, connections with
bounded timeouts, errors turned into :class:`~wshub.errors.BackendUnavailable`, a pipelining
command batcher, backoff, and stopping a background task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import BackendUnavailable

__all__ = [
    "REDIS_DOWN",
    "Backoff",
    "Batcher",
    "RedisURL",
    "check_prefix",
    "connect_redis",
    "describe",
    "parse_redis_url",
    "ping",
    "redis_errors",
    "settle",
    "stop_task",
]

logger = logging.getLogger("wshub.redis")

#: Errors meaning "Redis cannot answer right now", as opposed to a wrong command.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # includes BusyLoadingError: a restarted Redis still loading its data
    RedisTimeoutError,
    ReadOnlyError,  # a replica after a failover
    OSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A ``redis://`` URL split into what redis-py reads and wshub's own query options:
    ``?prefix=myapp`` (key and channel prefix, default ``wshub``) and ``?node_ttl=10`` (seconds
    after which a silent node counts as dead)."""

    url: str
    prefix: str | None = None
    node_ttl: float | None = None


def parse_redis_url(url: str) -> RedisURL:
    """Take wshub's options out of a ``redis://`` / ``rediss://`` URL; ValueError when invalid."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// URL: {url!r}")
    kept: list[tuple[str, str]] = []
    prefix: str | None = None
    node_ttl: float | None = None
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "prefix":
            prefix = check_prefix(value)
        elif key == "node_ttl":
            try:
                node_ttl = float(value)
            except ValueError:
                node_ttl = -1.0
            if not node_ttl > 0 or math.isinf(node_ttl):
                raise ValueError(f"node_ttl must be a positive number of seconds, not {value!r}")
        else:
            kept.append((key, value))
    clean = urlunsplit(parts._replace(query=urlencode(kept)))
    return RedisURL(clean, prefix, node_ttl)


def check_prefix(prefix: str) -> str:
    """Key prefixes must not contain braces: they would change the keys' hash tags."""
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(f"a Redis key prefix must be non-empty and without braces: {prefix!r}")
    return prefix


def connect_redis(url: str, *, timeout: float, name: str, max_connections: int = 32) -> Redis:
    """A client that fails fast: ``timeout`` seconds to connect, send or read, and no hidden
    retries (a retried write could be applied twice). At most ``max_connections`` at once; a
    burst beyond them waits for a free one instead of failing. Nothing is sent until the first
    command."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=max(5.0, timeout),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        client_name=name,
    )
    return Redis.from_pool(pool)


def describe(url: str) -> str:
    """``host:port/db`` of a Redis URL, without credentials, for messages."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or ''}"


@contextlib.contextmanager
def redis_errors(where: str) -> Iterator[None]:
    """Turn "Redis cannot answer" into :class:`BackendUnavailable` naming ``where``."""
    try:
        yield
    except REDIS_DOWN as exc:
        raise BackendUnavailable(f"{where} is unavailable: {exc or type(exc).__name__}") from exc


async def ping(client: Redis, timeout: float) -> bool:
    """Whether Redis answers ``PING`` within ``timeout`` seconds."""
    # In a task of its own, like every redis-py call here (see RedisBroker._write_forever).
    probe = asyncio.ensure_future(client.ping())
    await asyncio.wait({probe}, timeout=timeout)
    if not probe.done():
        await stop_task(probe)
        return False
    return not probe.cancelled() and probe.exception() is None and bool(probe.result())


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended.

    Cancelling once is not enough: on Python 3.11 ``asyncio.wait_for``, which redis-py wraps
    around every send, swallows a cancellation that arrives just as the send completes
    (CPython gh-86296, fixed in 3.12). So cancel again until the task is really done."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task %s failed", task.get_name(), exc_info=task.exception())


_Queued = tuple[tuple[Any, ...], "AsyncScript | None", "asyncio.Future[Any]"]


def settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Batcher:
    """Runs commands and Lua scripts on one client, pipelined: what is submitted while a round
    trip is in flight goes in the next one, in submission order (no transaction).

    Results are handed back, and callers resume, in submission order: offsets reach the hub in
    the order Redis assigned them. A burst needs one connection and one round trip per batch, not
    a connection per command (which, on a loaded event loop, time out while connecting).
    Scripts are loaded again when Redis lost them (a restart). After :meth:`close`, pending
    commands finish and new ones fail with :class:`BackendUnavailable`.
    """

    def __init__(self, client: Redis, where: str, *, max_batch: int = 512) -> None:
        self.client = client
        self.where = where
        self.max_batch = max_batch
        self._queue: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    async def run(self, *command: Any) -> Any:
        return await self._submit(command, None)

    async def script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return await self._submit(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    async def close(self) -> None:
        self._closed = True
        if self._flusher is not None:
            await self._flusher

    def script_nowait(
        self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
    ) -> asyncio.Future[Any]:
        """:meth:`script` without awaiting: the future of its result (for many at once)."""
        return self._enqueue(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    async def _submit(self, command: tuple[Any, ...], script: AsyncScript | None) -> Any:
        return await self._enqueue(command, script)

    def _enqueue(self, command: tuple[Any, ...], script: AsyncScript | None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(BackendUnavailable(f"{self.where}: closed"))
            return future
        self._queue.append((command, script, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="wshub-redis-batch")
        return future

    async def _flush(self) -> None:
        while self._queue:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            try:
                with redis_errors(self.where):
                    results = await self._execute(batch)
            except BackendUnavailable as exc:
                results = [exc] * len(batch)
            except Exception as exc:  # a bug: every caller hears of it
                results = [exc] * len(batch)
            for (_, _, future), result in zip(batch, results, strict=True):
                if future.done():  # the caller was cancelled
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _execute(self, batch: list[_Queued]) -> list[Any]:
        results = await self._pipeline([command for command, _, _ in batch])
        lost = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if lost:  # Redis restarted and forgot the scripts: nothing of those ran; load, rerun
            for script in {id(batch[i][1]): batch[i][1] for i in lost}.values():
                assert script is not None
                await self.client.script_load(script.script)
            again = await self._pipeline([batch[i][0] for i in lost])
            for i, result in zip(lost, again, strict=True):
                results[i] = result
        return results

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results


class Backoff:
    """Exponential delays with jitter: each is between half and all of ``first * 2**n``,
    capped at ``cap`` seconds, so that nodes that lost Redis together don't return in step."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def delay(self) -> float:
        current = self._next
        self._next = min(self.cap, current * 2)
        return random.uniform(current / 2, current)
