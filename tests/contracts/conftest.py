"""Fixtures parametrized over every implementation, real engines only: SQLite files and a
throwaway ``redis-server`` (one per session, emptied before each test), a throwaway PostgreSQL
database (one per session, a schema per test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from wshub.errors import BackendUnavailable
from wshub.interfaces import Store
from wshub.stores.memory import MemoryStore
from wshub.stores.sqlite import SQLiteStore

from ..postgres_server import (
    fresh_postgres,  # noqa: F401  (fixture)
    postgres_database,  # noqa: F401  (fixture)
)
from ..redis_server import (
    RedisCluster,
    RedisSentinel,
    RedisServer,
    redis_cluster_server,  # noqa: F401  (fixture)
    redis_sentinel_server,  # noqa: F401  (fixture)
    redis_server,  # noqa: F401  (fixture)
    redis_url,  # noqa: F401  (fixture)
)

#: Parameters that run a suite on a Redis Cluster / behind Sentinel (see fresh_redis_ha).
REDIS_HA = ("cluster", "sentinel")


class Clock:
    """A settable wall clock, injected into stores to test retention by age."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


StoreFactory = Callable[[Clock], Store]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Poll ``check`` until it holds; returns the seconds it took. For conditions that another
    process's clock decides (a node's ttl, a restarted Redis)."""
    start = time.monotonic()
    while True:
        try:
            if await check():
                return time.monotonic() - start
        except BackendUnavailable:
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fresh_redis(request: pytest.FixtureRequest) -> Callable[[], str]:
    """The URL of the session's redis-server, emptied: only requested by redis parameters, so
    the memory and SQLite runs need no Redis at all."""

    def get() -> str:
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        return server.url

    return get


@pytest.fixture
def fresh_redis_ha(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``fresh_redis_ha("cluster")``: the URL of the session's 3-master Redis Cluster,
    ``fresh_redis_ha("sentinel")``: of its master + replica + Sentinel, emptied; started only
    when a parameter asks for them."""

    def get(kind: str) -> str:
        server: RedisCluster | RedisSentinel = request.getfixturevalue(
            "redis_cluster_server" if kind == "cluster" else "redis_sentinel_server"
        )
        server.flush()
        return server.url

    return get


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres", *REDIS_HA])
def store_factory(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    fresh_redis: Callable[[], str],
    fresh_postgres: Callable[[], str],  # noqa: F811  (the fixture imported above)
    fresh_redis_ha: Callable[[str], str],
) -> StoreFactory:
    url = fresh_redis() if request.param == "redis" else ""
    url = fresh_redis_ha(request.param) if request.param in REDIS_HA else url
    url = fresh_postgres() if request.param == "postgres" else url

    def make(clock: Clock) -> Store:
        if request.param == "memory":
            return MemoryStore(clock=clock)
        if request.param == "sqlite":
            return SQLiteStore(tmp_path / "store.db", clock=clock)
        if request.param == "postgres":
            from wshub.stores.postgres import PostgresStore

            return PostgresStore(url, clock=clock)
        from wshub.stores.redis import RedisStore

        return RedisStore(url, clock=clock)

    return make


@pytest.fixture
async def store(store_factory: StoreFactory, clock: Clock) -> AsyncIterator[Store]:
    s = store_factory(clock)
    await s.start()
    try:
        yield s
    finally:
        await s.close()
