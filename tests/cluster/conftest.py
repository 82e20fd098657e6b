"""Real ``wshub serve`` processes sharing one throwaway redis-server: a cluster on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import websockets

from wshub.auth.jwt import issue_token
from wshub.errors import BackendUnavailable
from wshub.testing import TestClient

from ..conftest import API_KEY, SECRET
from ..procs import ServerProcess
from ..redis_server import RedisServer, persistent_redis

#: Seconds without heartbeat after which a node counts as dead: short, so tests stay short.
NODE_TTL = 1.5


class Node:
    """One ``wshub serve`` process of the cluster, with an HTTP API client."""

    def __init__(self, proc: ServerProcess) -> None:
        self.proc = proc
        self.api = httpx.AsyncClient(
            base_url=proc.http, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5
        )

    @contextlib.asynccontextmanager
    async def connect(self, user: str | None = None) -> AsyncIterator[TestClient]:
        """A WebSocket client; with ``user``, authenticated in the handshake (``welcome`` and
        ``authenticated`` are read already)."""
        url = self.proc.url + (f"?token={issue_token(user, SECRET)}" if user else "")
        async with websockets.connect(url, open_timeout=5) as ws:
            client = TestClient(ws, 5)
            await client.expect("welcome")
            if user is not None:
                await client.expect("authenticated")
            yield client

    async def kill9(self) -> None:
        await self.proc.kill9()

    def log(self) -> str:
        return "\n".join(self.proc.log)


class Cluster:
    def __init__(self, redis: RedisServer, nodes: list[Node]) -> None:
        self.redis = redis
        self.nodes = nodes


class ClusterFactory(Protocol):
    def __call__(self, n: int, **settings: str) -> Awaitable[Cluster]: ...


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """This test's redis-server, persisting every acknowledged write (appendfsync always)."""
    with persistent_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def cluster(tmp_path: Path, redis: RedisServer) -> AsyncIterator[ClusterFactory]:
    """``await cluster(3)``: three nodes with the store, broker and presence in ``redis``;
    ``await cluster(2, transport="asgi")``: other ``WS_*`` settings."""
    nodes: list[Node] = []

    async def start(n: int, **settings: str) -> Cluster:
        options = {
            "broker_url": f"{redis.url}?node_ttl={NODE_TTL}",
            "store_url": redis.url,
            **settings,
        }
        procs = [ServerProcess(tmp_path, None, **options) for _ in range(n)]
        nodes.extend(Node(p) for p in procs)
        await asyncio.gather(*(p.start() for p in procs))
        return Cluster(redis, nodes)

    try:
        yield start
    finally:
        for node in nodes:
            await node.api.aclose()
            await node.proc.stop()
        for i, node in enumerate(nodes):  # shown by pytest when the test failed
            print(f"---- node {i} log ----\n{node.log()}")


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, *, every: float = 0.05
) -> float:
    """Poll a real operation until it holds; returns the seconds it took. For what another
    process's clock decides (a node's ttl, Redis coming back): there is no event to await."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(httpx.HTTPError, BackendUnavailable):
            if await check():
                return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(every)


def payload(msg: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = msg["payload"]
    return result
