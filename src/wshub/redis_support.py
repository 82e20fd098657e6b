"""What the Redis store, broker and presence share: URLs and key prefixes, connections with
bounded timeouts, errors turned into :class:`~wshub.errors.BackendUnavailable`, a pipelining
command batcher, backoff, and stopping a background task.

Three kinds of deployment, told apart by the URL's scheme (:func:`redis_kind`):

- ``redis://`` / ``rediss://``: one Redis (``redis.asyncio.Redis``);
- ``redis+sentinel://h1:26379,h2:26379/SERVICE/DB`` (``rediss+sentinel://`` for TLS to the
  Redis servers): the master of ``SERVICE`` as the Sentinels name it, looked up again for every
  new connection, so a failover needs no restart;
- ``redis+cluster://h1:6379,h2:6379/0`` (``rediss+cluster://``): a Redis Cluster
  (``redis.asyncio.cluster.RedisCluster``), its shards found from any of the given nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import BackendUnavailable

__all__ = [
    "REDIS_DOWN",
    "AnyRedis",
    "Backoff",
    "Batcher",
    "RedisKind",
    "RedisURL",
    "check_prefix",
    "connect_redis",
    "describe",
    "parse_redis_url",
    "ping",
    "redis_errors",
    "redis_kind",
    "settle",
    "stop_task",
]

logger = logging.getLogger("wshub.redis")

#: Errors meaning "Redis cannot answer right now", as opposed to a wrong command.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # includes BusyLoadingError: a restarted Redis still loading its data
    RedisTimeoutError,
    ReadOnlyError,  # a replica after a failover
    MasterDownError,  # a replica that lost its master (Sentinel, Cluster)
    ClusterDownError,  # a cluster failing over a shard
    TryAgainError,  # a slot being migrated
    SlotNotCoveredError,
    RedisClusterException,  # no node of the cluster answers
    OSError,
    TimeoutError,
)

#: ``single`` (redis://), ``sentinel`` (redis+sentinel://) or ``cluster`` (redis+cluster://).
RedisKind: TypeAlias = Literal["single", "sentinel", "cluster"]
#: The client of any kind: commands, pipelines and scripts work the same on both.
AnyRedis: TypeAlias = "Redis | RedisCluster"

_KINDS: dict[str, RedisKind] = {
    "redis": "single",
    "rediss": "single",
    "redis+sentinel": "sentinel",
    "rediss+sentinel": "sentinel",
    "redis+cluster": "cluster",
    "rediss+cluster": "cluster",
}


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A ``redis://`` URL split into what redis-py reads and wshub's own query options:
    ``?prefix=myapp`` (key and channel prefix, default ``wshub``) and ``?node_ttl=10`` (seconds
    after which a silent node counts as dead)."""

    url: str
    prefix: str | None = None
    node_ttl: float | None = None


def redis_kind(url: str) -> RedisKind:
    """Which deployment a URL names, by its scheme; ValueError for another scheme."""
    scheme = url.partition("://")[0].lower()
    if scheme not in _KINDS:
        raise ValueError(f"not a redis:// URL: {scheme}://")
    return _KINDS[scheme]


def parse_redis_url(url: str) -> RedisURL:
    """Take wshub's options out of a ``redis://`` / ``rediss://`` / ``redis+sentinel://`` /
    ``redis+cluster://`` URL; ValueError when invalid."""
    kind = redis_kind(url)
    parts = urlsplit(url)
    if kind != "single":
        _endpoints(url)  # hosts, service and database are checked now, not at start
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


@dataclass(frozen=True, slots=True)
class _Endpoints:
    hosts: tuple[tuple[str, int], ...]
    service: str  # Sentinel only
    db: int
    kwargs: dict[str, Any]  # for redis-py's connections: credentials, TLS, query options


def _endpoints(url: str) -> _Endpoints:
    """Split a ``redis+sentinel://`` / ``redis+cluster://`` URL (several ``host:port``)."""
    kind = redis_kind(url)
    parts = urlsplit(url)
    userinfo, _, netloc = parts.netloc.rpartition("@")
    default_port = 26379 if kind == "sentinel" else 6379
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        item = item.strip()
        if item.startswith("["):  # [::1]:6379
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, colon, port = item.rpartition(":")
            if not colon:
                host, port = item, ""
        if not host:
            raise ValueError(f"{parts.scheme}://: a host is missing in {netloc!r}")
        try:
            number = int(port) if port else default_port
        except ValueError:
            raise ValueError(f"{parts.scheme}://: not a port: {port!r}") from None
        hosts.append((unquote(host), number))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if kind == "sentinel":
        if not path or len(path) > 2:
            raise ValueError(
                f"{parts.scheme}:// needs the service name: {parts.scheme}://host:26379/SERVICE/0"
            )
        service, db_text = path[0], path[1] if len(path) > 1 else "0"
    else:
        if len(path) > 1:
            raise ValueError(f"{parts.scheme}://: unexpected path {parts.path!r}")
        service, db_text = "", path[0] if path else "0"
    try:
        db = int(db_text)
    except ValueError:
        raise ValueError(f"{parts.scheme}://: not a database number: {db_text!r}") from None
    if kind == "cluster" and db != 0:
        raise ValueError(f"{parts.scheme}://: Redis Cluster has database 0 only, not {db}")
    tls = parts.scheme.lower().startswith("rediss")
    base = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}localhost"
    kwargs: dict[str, Any] = dict(parse_url(f"{base}/{db}?{parts.query}"))
    for key in ("host", "port", "db", "connection_class"):
        kwargs.pop(key, None)
    if tls:
        kwargs["ssl"] = True
    return _Endpoints(tuple(hosts), service, db, kwargs)


class _SentinelRedis(Redis):
    """The master's client; closing it closes the connections to the Sentinels too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await self.connection_pool.sentinel_manager.aclose()  # type: ignore[attr-defined]


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's connections, waiting for a free one beyond ``max_connections``."""


def connect_redis(url: str, *, timeout: float, name: str, max_connections: int = 32) -> AnyRedis:
    """A client that fails fast: ``timeout`` seconds to connect, send or read, and no hidden
    retries (a retried write could be applied twice). At most ``max_connections`` at once; a
    burst beyond them waits for a free one instead of failing. Nothing is sent until the first
    command. A Sentinel client looks the master up for each new connection; a cluster client
    holds that many connections per node."""
    kind = redis_kind(url)
    if kind == "sentinel":
        ends = _endpoints(url)
        conn_kwargs = dict(ends.kwargs)
        sentinel_password = conn_kwargs.pop("sentinel_password", None)
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if sentinel_password:
            sentinel_kwargs["password"] = sentinel_password
        sentinel = Sentinel(list(ends.hosts), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        return sentinel.master_for(  # type: ignore[no-any-return]
            ends.service,
            redis_class=_SentinelRedis,
            connection_pool_class=_BlockingSentinelPool,
            db=ends.db,
            max_connections=max_connections,
            timeout=max(5.0, timeout),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            client_name=name,
            **conn_kwargs,
        )
    if kind == "cluster":
        ends = _endpoints(url)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in ends.hosts],
            max_connections=max_connections,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            client_name=name,
            **ends.kwargs,
        )
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
    """``host:port/db`` of a Redis URL, without credentials, for messages (Sentinel:
    ``sentinel h:p,h:p/SERVICE/db``; Cluster: ``cluster h:p,h:p``)."""
    kind = redis_kind(url)
    if kind != "single":
        ends = _endpoints(url)
        hosts = ",".join(f"{h}:{p}" for h, p in ends.hosts)
        if kind == "sentinel":
            return f"sentinel {hosts}/{ends.service}/{ends.db}"
        return f"cluster {hosts}"
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or ''}"


@contextlib.contextmanager
def redis_errors(where: str) -> Iterator[None]:
    """Turn "Redis cannot answer" into :class:`BackendUnavailable` naming ``where``."""
    try:
        yield
    except REDIS_DOWN as exc:
        raise BackendUnavailable(f"{where} is unavailable: {exc or type(exc).__name__}") from exc


async def ping(client: AnyRedis, timeout: float) -> bool:
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

    def __init__(
        self,
        client: AnyRedis,
        where: str,
        *,
        max_batch: int = 512,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        self.client = client
        self.where = where
        self.max_batch = max_batch
        # > 0: every round trip ends with WAIT min_replicas, and its commands fail unless that
        # many replicas acknowledged them (on the same connection, so WAIT covers them all).
        self.min_replicas = min_replicas
        self._wait_ms = max(1, int(replica_timeout * 1000))
        self._slots_read = -math.inf  # when a cluster's slots were last read again
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
        down = False
        for i, result in enumerate(results):  # a cluster pipeline: one shard may be down
            if isinstance(result, Exception) and isinstance(result, REDIS_DOWN):
                down = True
                results[i] = BackendUnavailable(
                    f"{self.where} is unavailable: {result or type(result).__name__}"
                )
        if down and isinstance(self.client, RedisCluster):
            await self._refresh_slots(self.client)
        return results

    async def _refresh_slots(self, client: RedisCluster) -> None:
        """A shard did not answer: read the slots again (a replica may have taken over), at
        most every 0.25 s. redis-py does so itself only for commands sent one by one."""
        now = time.monotonic()
        if now - self._slots_read < 0.25:
            return
        self._slots_read = now
        with contextlib.suppress(*REDIS_DOWN):
            await client.nodes_manager.initialize()

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            if self.min_replicas:
                pipe.execute_command("WAIT", self.min_replicas, self._wait_ms)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        if self.min_replicas:
            acked = results.pop()
            if isinstance(acked, BaseException) or int(acked) < self.min_replicas:
                # Applied on the master, maybe lost by a failover: not acknowledged.
                failure = BackendUnavailable(
                    f"{self.where} is unavailable: only {acked} of the "
                    f"{self.min_replicas} replica(s) WS_REDIS_MIN_REPLICAS asks for "
                    f"acknowledged the write within {self._wait_ms} ms"
                )
                results = [r if isinstance(r, BaseException) else failure for r in results]
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
