"""pytest fixtures for testing an app that uses wshub: a real hub, a real cluster, real faults.

Installed with wshub as the ``wshub`` pytest plugin (entry point ``pytest11``), loaded by pytest
by itself; ``-p wshub.pytest_plugin`` only with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``. See
docs/testing.md.

- ``wshub_server``: an in-process hub and standalone server on a free loopback port (the app's
  own hub if ``wshub_hub`` is overridden); ``wshub_server_factory(**settings)`` for more.
- ``wshub_client``: ``await wshub_client(server_or_node, user="alice")``, a
  :class:`~wshub.testing.TestClient` with ``welcome`` (and ``authenticated``) read.
- ``wshub_cluster``: ``wshub serve`` processes on a throwaway ``redis-server``, with fault
  injection: ``kill``/``restart`` a node, ``stall_reader`` a client, ``redis.pause``/``resume``,
  ``redis.kill``/``restart``.

Loading the plugin imports nothing but pytest (pytest-asyncio, once pytest has loaded it, at
``pytest_configure``); uvicorn, redis-py, httpx and websockets are imported by the fixtures that
need them, and a missing one fails the test with one line naming the extra to install. The async
fixtures need pytest-asyncio (strict or auto mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import pytest

if TYPE_CHECKING:
    from .core.hub import Hub
    from .testing import TestClient, TestServer

__all__ = [
    "NODE_TTL",
    "TEST_API_KEY",
    "TEST_SECRET",
    "ClientFactory",
    "Cluster",
    "ClusterFactory",
    "ClusterNode",
    "RedisProcess",
    "ServerFactory",
]

#: The JWT secret and API key of the fixtures' servers and nodes (override ``wshub_settings``).
TEST_SECRET = "wshub-pytest-secret-" + "0123456789abcdef" * 4
TEST_API_KEY = "wshub-pytest-api-key"

#: Seconds without heartbeat after which a cluster node counts as dead (the broker's node_ttl).
NODE_TTL = 1.5

_READY_REDIS = "Ready to accept connections"
_READY_NODE = "Uvicorn running on"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "wshub_cluster(nodes=2, **settings): the size and WS_* settings of wshub_cluster",
    )
    async_fixture: Callable[..., Any]
    try:
        import pytest_asyncio

        async_fixture = pytest_asyncio.fixture
    except ImportError:
        async_fixture = _missing_pytest_asyncio
    config.pluginmanager.register(_async_fixtures(async_fixture), "wshub-async-fixtures")


# -- helpers -------------------------------------------------------------------------------


def _require_runtime(fixture: str, *extras: str) -> None:
    """Fail the test with one line naming the extra to install when one is missing."""
    from .extras import MissingExtra, require

    modules = {"server": "uvicorn", "redis": "redis", "cli": "httpx"}
    for extra in extras:
        try:
            require(modules[extra], extra, needed_by=f"the {fixture} fixture")
        except MissingExtra as exc:
            missing = str(exc)
        else:
            continue
        pytest.fail(missing, pytrace=False)  # outside the except: no chained traceback


def _redis_server_executable() -> str:
    """``$WSHUB_REDIS_SERVER`` or ``redis-server`` on PATH; skips the test without one, or fails
    it when ``CI`` is true or ``WSHUB_REQUIRE_REDIS=1``."""
    path = os.environ.get("WSHUB_REDIS_SERVER") or shutil.which("redis-server")
    if path:
        return path
    reason = (
        "wshub_cluster: redis-server is not on PATH (install Redis >= 7, or set WSHUB_REDIS_SERVER)"
    )
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if ci or os.environ.get("WSHUB_REQUIRE_REDIS") == "1":
        pytest.fail(reason + "; required here (CI / WSHUB_REQUIRE_REDIS=1)", pytrace=False)
    pytest.skip(reason)


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a ``preexec_fn`` that has the child SIGKILLed if the test process dies: nothing
    outlives a crashed or killed pytest."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return preexec


async def _end(proc: asyncio.subprocess.Process | None, sig: int, timeout: float = 10) -> None:
    """Signal our own child (by its PID) and wait for it; SIGKILL if it does not go."""
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
        if sig == signal.SIGTERM:
            proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.wait_for(proc.wait(), timeout)


class _LoggedProcess:
    """A child process whose output is read into ``log`` until it exits; started once
    ``ready_line`` is printed."""

    def __init__(self, name: str, ready_line: str) -> None:
        self.name = name
        self.ready_line = ready_line
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def _spawn(
        self, args: list[str], *, env: dict[str, str], cwd: Path, timeout: float
    ) -> None:
        assert not self.running, f"{self.name} is running already"
        self.proc = await asyncio.create_subprocess_exec(
            *args,
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent(),
        )
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(self.proc, ready))
        try:
            await asyncio.wait_for(ready, timeout)
        except BaseException:
            await self.end(signal.SIGKILL)
            raise

    async def _read(self, proc: asyncio.subprocess.Process, ready: asyncio.Future[None]) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if self.ready_line in line and not ready.done():
                ready.set_result(None)
        if not ready.done():
            tail = "\n".join(self.log[-30:])
            ready.set_exception(RuntimeError(f"{self.name} exited during start-up:\n{tail}"))

    async def end(self, sig: int) -> None:
        await _end(self.proc, sig)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


# -- redis-server --------------------------------------------------------------------------


class RedisProcess(_LoggedProcess):
    """The cluster's own ``redis-server``: loopback, a free port, files in its own directory,
    every acknowledged write fsynced (``appendfsync always``) so a ``kill()`` and ``restart()``
    keeps what was acknowledged."""

    def __init__(self, executable: str, directory: Path) -> None:
        super().__init__("redis-server", _READY_REDIS)
        self.executable = executable
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, timeout: float = 15) -> None:
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--protected-mode", "yes",
            "--daemonize", "no",
        ]  # fmt: skip
        self.paused = False
        await self._spawn(args, env=dict(os.environ), cwd=self.directory, timeout=timeout)

    async def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a stalled or partitioned
        Redis); the nodes' bounded Redis calls time out."""
        assert self.proc is not None and self.running, "redis-server is not running"
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    async def resume(self) -> None:
        """SIGCONT: Redis answers again, on the same connections."""
        assert self.proc is not None and self.running, "redis-server is not running"
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    @contextlib.asynccontextmanager
    async def paused_for(self) -> AsyncIterator[None]:
        """``async with cluster.redis.paused_for(): ...``: paused inside, resumed after."""
        await self.pause()
        try:
            yield
        finally:
            if self.running:
                await self.resume()

    async def kill(self) -> None:
        """SIGKILL: only what Redis fsynced survives (with appendfsync always: everything
        acknowledged)."""
        await self.end(signal.SIGKILL)
        self.paused = False

    async def restart(self, timeout: float = 15) -> None:
        """Start again on the same port and directory (stopping it first if it runs)."""
        if self.running:
            await self.end(signal.SIGTERM)
        await self.start(timeout)


# -- wshub serve ---------------------------------------------------------------------------


class ClusterNode(_LoggedProcess):
    """One ``python -m wshub serve`` process of a cluster, on its own loopback port."""

    def __init__(self, index: int, env: dict[str, str], cwd: Path) -> None:
        super().__init__(f"node {index}", _READY_NODE)
        self.index = index
        self.port = int(env["WS_PORT"])
        self.path = env.get("WS_PATH", "/ws")
        self.env = env
        self.cwd = cwd
        self.secret = env["WS_JWT_SECRET"]
        self.api_key = env.get("WS_API_KEY", "")
        self._api: Any = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.path}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> Any:
        """An ``httpx.AsyncClient`` for this node's HTTP API, with its API key (wshub[cli] or
        httpx installed)."""
        if self._api is None:
            _require_runtime("wshub_cluster (node.api)", "cli")
            import httpx

            self._api = httpx.AsyncClient(
                base_url=self.http,
                headers={"Authorization": f"Bearer {self.api_key}"},
                timeout=10,
            )
        return self._api

    def token(self, user_id: str, **kwargs: Any) -> str:
        from .auth.jwt import issue_token

        return issue_token(user_id, self.secret, **kwargs)

    async def start(self, timeout: float = 30) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "wshub", "serve"]
        await self._spawn(args, env=self.env, cwd=self.cwd, timeout=timeout)

    async def close(self) -> None:
        await self.end(signal.SIGKILL)
        if self._api is not None:
            await self._api.aclose()
            self._api = None

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "down"
        return f"<ClusterNode {self.index} {self.url} {state}>"


# -- loopback TCP proxies: a balancer in front of the nodes, and one per client -------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _transport(writer: asyncio.StreamWriter) -> asyncio.Transport:
    return cast(asyncio.Transport, writer.transport)


class _Pipe:
    """One proxied connection; the node-to-client direction can be stalled."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.reading.set()
        self.upstream: asyncio.StreamWriter | None = None

    def stall(self) -> None:
        self.reading.clear()
        if self.upstream is not None:
            _transport(self.upstream).pause_reading()

    def resume(self) -> None:
        self.reading.set()
        if self.upstream is not None and not self.upstream.transport.is_closing():
            _transport(self.upstream).resume_reading()

    async def run(
        self,
        down_r: asyncio.StreamReader,
        down_w: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
    ) -> None:
        self.upstream = up_w
        if not self.reading.is_set():
            _transport(up_w).pause_reading()
        tasks = {
            asyncio.create_task(self._copy(down_r, up_w, None)),
            asyncio.create_task(self._copy(up_r, down_w, self.reading)),
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            for w in (down_w, up_w):
                w.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.wait_closed(), 1)

    @staticmethod
    async def _copy(
        r: asyncio.StreamReader, w: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        with contextlib.suppress(OSError):
            while True:
                if gate is not None:
                    await gate.wait()
                data = await r.read(65536)
                if not data:
                    return
                w.write(data)
                await w.drain()


class _Proxy:
    """A loopback listener forwarding each connection to the first of ``targets()`` that
    accepts it. The upstream socket has a small receive buffer, so a stalled reader's backlog
    lands on the node quickly, as it would with a slow client far away."""

    RCVBUF = 16 * 1024

    def __init__(self, targets: Callable[[], Iterable[int]]) -> None:
        self.targets = targets
        self.pipes: set[_Pipe] = set()
        self.stalled = False
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        loop = asyncio.get_running_loop()
        for port in self.targets():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.RCVBUF)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5)
            except (OSError, TimeoutError):
                sock.close()
                continue
            return await asyncio.open_connection(sock=sock)
        return None

    async def _handle(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        pipe = _Pipe()
        try:
            upstream = await self._connect()
            if upstream is None:  # no node up: the client sees the connection refused-ish
                down_w.close()
                return
            if self.stalled:
                pipe.reading.clear()
            self.pipes.add(pipe)
            await pipe.run(down_r, down_w, *upstream)
        except asyncio.CancelledError:
            # close() ended it; a cancelled handler would be logged as an error by asyncio
            down_w.close()
        finally:
            self.pipes.discard(pipe)
            self._handlers.discard(task)

    def stall(self) -> None:
        self.stalled = True
        for pipe in self.pipes:
            pipe.stall()

    def resume(self) -> None:
        self.stalled = False
        for pipe in self.pipes:
            pipe.resume()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)


# -- the cluster ---------------------------------------------------------------------------


class Cluster:
    """``wshub serve`` nodes sharing a throwaway ``redis-server`` (store, broker, presence).

    ``nodes[i].url`` / ``.http`` / ``.api``; ``url``: a loopback balancer sending each new
    connection to the first node that is up (so a client of a killed node reconnects to the
    next one); ``connect(node, user=...)``; faults: ``kill``, ``restart``, ``stall_reader``,
    ``resume_reader``, ``redis.pause``/``resume``/``kill``/``restart``.
    """

    def __init__(self, redis: RedisProcess, nodes: list[ClusterNode], path: str) -> None:
        self.redis = redis
        self.nodes = nodes
        self.path = path
        self._balancer = _Proxy(lambda: [n.port for n in self.nodes if n.running])
        self._client_proxies: dict[int, _Proxy] = {}
        self._proxies: list[_Proxy] = [self._balancer]

    @property
    def url(self) -> str:
        """The WebSocket URL of the balancer in front of the nodes (first live node first)."""
        return f"ws://127.0.0.1:{self._balancer.port}{self.path}"

    @property
    def secret(self) -> str:
        return self.nodes[0].secret

    def token(self, user_id: str, **kwargs: Any) -> str:
        return self.nodes[0].token(user_id, **kwargs)

    def node(self, node: int | ClusterNode) -> ClusterNode:
        return self.nodes[node] if isinstance(node, int) else node

    async def _start(self) -> None:
        await self._balancer.start()

    @contextlib.asynccontextmanager
    async def connect(
        self,
        node: int | ClusterNode,
        *,
        user: str | None = None,
        token: str | None = None,
        handshake: bool = True,
        timeout: float = 5.0,
        **ws_options: Any,
    ) -> AsyncIterator[TestClient]:
        """A :class:`~wshub.testing.TestClient` connected to ``node`` through a loopback proxy
        that :meth:`stall_reader` can stall. With ``user`` (or ``token``) it authenticates in
        the handshake; with ``handshake`` ``welcome`` (and ``authenticated``) are read already."""
        import websockets

        from .testing import TestClient

        target = self.node(node)
        proxy = _Proxy(lambda: [target.port])
        await proxy.start()
        self._proxies.append(proxy)
        if user is not None:
            token = target.token(user)
        url = f"ws://127.0.0.1:{proxy.port}{target.path}" + (f"?token={token}" if token else "")
        try:
            async with websockets.connect(url, open_timeout=timeout, **ws_options) as ws:
                client = TestClient(ws, timeout)
                self._client_proxies[id(client)] = proxy
                try:
                    if handshake:
                        await client.expect("welcome")
                        if token is not None:
                            await client.expect("authenticated")
                    yield client
                finally:
                    self._client_proxies.pop(id(client), None)
        finally:
            await proxy.close()
            self._proxies.remove(proxy)

    def _proxy_of(self, client: TestClient) -> _Proxy:
        proxy = self._client_proxies.get(id(client))
        if proxy is None:
            raise ValueError("stall_reader needs a client from cluster.connect(), still open")
        return proxy

    async def stall_reader(self, client: TestClient) -> None:
        """The client stops reading: what the node sends piles up in the socket buffers and then
        in the node's outbox for that connection (``WS_OUTBOX_MAX_*``), as with a slow client.
        The client can still send."""
        self._proxy_of(client).stall()

    async def resume_reader(self, client: TestClient) -> None:
        """The client reads again: what the buffers held arrives, in order."""
        self._proxy_of(client).resume()

    async def kill(self, node: int | ClusterNode) -> None:
        """kill -9 the node's process (its PID only): no shutdown code runs."""
        await self.node(node).end(signal.SIGKILL)

    async def restart(self, node: int | ClusterNode, timeout: float = 30) -> None:
        """Start the node again on the same port (killing it first if it still runs)."""
        n = self.node(node)
        if n.running:
            await n.end(signal.SIGKILL)
        await n.start(timeout)

    async def close(self) -> None:
        for proxy in list(self._proxies):
            await proxy.close()
        for node in self.nodes:
            await node.close()
        await self.redis.kill()

    def logs(self) -> str:
        parts = [f"---- {n.name} (port {n.port}) ----\n" + "\n".join(n.log) for n in self.nodes]
        parts.append(
            f"---- redis-server (port {self.redis.port}) ----\n" + "\n".join(self.redis.log)
        )
        return "\n".join(parts)


class ClusterFactory(Protocol):
    def __call__(self, nodes: int = 2, **settings: Any) -> Awaitable[Cluster]: ...


class ServerFactory(Protocol):
    def __call__(
        self, *, hub: Hub | None = None, app: Any = None, **settings: Any
    ) -> Awaitable[TestServer]: ...


class ClientFactory(Protocol):
    def __call__(
        self,
        target: TestServer | ClusterNode | str,
        *,
        user: str | None = None,
        token: str | None = None,
        handshake: bool = True,
        **ws_options: Any,
    ) -> Awaitable[TestClient]: ...


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def wshub_settings() -> dict[str, Any]:
    """The ``Settings`` fields of the fixtures' servers and cluster nodes (override it, or pass
    settings to the factories): a known secret and API key, the memory store for servers."""
    return {"jwt_secret": TEST_SECRET, "api_key": TEST_API_KEY, "store_url": "memory://"}


@pytest.fixture
def wshub_hub() -> Hub | None:
    """The hub ``wshub_server`` runs: None for a fresh one from ``wshub_settings``; override it
    to return your app's hub (``from myapp import hub``)."""
    return None


def _async_fixtures(async_fixture: Callable[..., Any]) -> object:
    """The async fixtures, made by pytest-asyncio's ``fixture`` (so they work in its strict mode
    too), as a plugin object registered at ``pytest_configure``: pytest-asyncio is imported
    after pytest loaded it, never earlier."""

    class WshubAsyncFixtures:
        @async_fixture
        async def wshub_server_factory(
            self, wshub_settings: dict[str, Any]
        ) -> AsyncIterator[ServerFactory]:
            """``server = await wshub_server_factory(rate_limit=5)``: a standalone server in
            this test's event loop on a free loopback port (``hub=``: run that hub; ``app=`` and
            ``hub=``: serve your whole ASGI app with the hub mounted). Stopped after the test."""
            _require_runtime("wshub_server", "server")
            from .config import Settings
            from .testing import TestServer, run_server, serve_asgi

            async with contextlib.AsyncExitStack() as stack:

                async def start(
                    *, hub: Hub | None = None, app: Any = None, **settings: Any
                ) -> TestServer:
                    if app is not None:
                        if hub is None:
                            raise TypeError("app= needs hub=: the hub mounted in it")
                        port = await stack.enter_async_context(serve_asgi(app, hub=hub))
                        return TestServer(hub, hub.settings, "127.0.0.1", port)
                    if hub is not None:
                        merged = hub.settings.model_copy(update=settings) if settings else None
                        return await stack.enter_async_context(run_server(merged, hub=hub))
                    options = {**wshub_settings, **settings}
                    return await stack.enter_async_context(
                        run_server(Settings(_env_file=None, **options))
                    )

                yield start

        @async_fixture
        async def wshub_server(
            self, wshub_server_factory: ServerFactory, wshub_hub: Hub | None
        ) -> TestServer:
            """A running server (``.url``, ``.http``, ``.hub``, ``.token(user)``,
            ``.connect(user=)``) for ``wshub_hub``, or a fresh hub with ``wshub_settings``."""
            return await wshub_server_factory(hub=wshub_hub)

        @async_fixture
        async def wshub_client(self) -> AsyncIterator[ClientFactory]:
            """``alice = await wshub_client(wshub_server, user="alice")`` (or a cluster node, or a
            ``ws://`` URL with ``token=``): a TestClient, closed after the test."""
            _require_runtime("wshub_client", "server")  # wshub.testing imports uvicorn
            import websockets

            from .testing import TestClient

            async with contextlib.AsyncExitStack() as stack:

                async def connect(
                    target: TestServer | ClusterNode | str,
                    *,
                    user: str | None = None,
                    token: str | None = None,
                    handshake: bool = True,
                    **ws_options: Any,
                ) -> TestClient:
                    if isinstance(target, str):
                        url = target
                        if user is not None:
                            raise TypeError("with a URL, give token= (wshub_server.token(user))")
                    else:
                        url = target.url
                        if user is not None:
                            token = target.token(user)
                    if token is not None:
                        url += ("&" if "?" in url else "?") + f"token={token}"
                    ws_options.setdefault("open_timeout", 5)
                    ws = await stack.enter_async_context(websockets.connect(url, **ws_options))
                    client = TestClient(ws, 5.0)
                    if handshake:
                        await client.expect("welcome")
                        if token is not None:
                            await client.expect("authenticated")
                    return client

                yield connect

        @async_fixture
        async def wshub_cluster_factory(
            self,
            tmp_path_factory: pytest.TempPathFactory,
            wshub_settings: dict[str, Any],
        ) -> AsyncIterator[ClusterFactory]:
            """``cluster = await wshub_cluster_factory(3, outbox_max_bytes=65536)``: nodes on
            their own redis-server. Everything started is killed after the test (by PID),
            whatever happened; the logs are printed (pytest shows them when the test failed)."""
            _require_runtime("wshub_cluster", "server", "redis")
            executable = _redis_server_executable()
            clusters: list[Cluster] = []

            async def start(nodes: int = 2, **settings: Any) -> Cluster:
                base = tmp_path_factory.mktemp("wshub-cluster")
                redis = RedisProcess(executable, base / "redis")
                # the servers' memory:// default is not for a cluster: the nodes share Redis
                defaults = {k: v for k, v in wshub_settings.items() if k != "store_url"}
                options: dict[str, Any] = {**defaults, **settings}
                # start-up is seen in uvicorn's "running on" line: logged at info
                if str(options.get("log_level", "info")).lower() != "debug":
                    options["log_level"] = "info"
                env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
                env.update({f"WS_{k.upper()}": str(v) for k, v in options.items()})
                env["WS_HOST"] = "127.0.0.1"
                env.setdefault("WS_STORE_URL", redis.url)
                env.setdefault("WS_BROKER_URL", f"{redis.url}?node_ttl={NODE_TTL}")
                members = []
                for i in range(nodes):
                    node_env = {**env, "WS_PORT": str(_free_port())}
                    members.append(ClusterNode(i, node_env, base / f"node{i}"))
                cluster = Cluster(redis, members, env.get("WS_PATH", "/ws"))
                clusters.append(cluster)
                await redis.start()
                await cluster._start()
                # every start ends (ready or failed) before a failure is raised: teardown then
                # kills every process, none still being spawned
                results = await asyncio.gather(
                    *(n.start() for n in members), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
                return cluster

            try:
                yield start
            finally:
                for cluster in clusters:
                    await cluster.close()
                    print(cluster.logs())

        @async_fixture
        async def wshub_cluster(
            self, wshub_cluster_factory: ClusterFactory, request: pytest.FixtureRequest
        ) -> Cluster:
            """A 2-node cluster; ``@pytest.mark.wshub_cluster(nodes=3, **settings)`` for another."""
            marker = request.node.get_closest_marker("wshub_cluster")
            kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
            if marker and marker.args:
                kwargs.setdefault("nodes", marker.args[0])
            return await wshub_cluster_factory(**kwargs)

    return WshubAsyncFixtures()


def _missing_pytest_asyncio(func: Callable[..., Any]) -> Any:
    @pytest.fixture(name=func.__name__)
    def fixture(self: object) -> None:
        pytest.fail(
            f"{func.__name__} is an async fixture: it needs pytest-asyncio "
            "(pip install pytest-asyncio)",
            pytrace=False,
        )

    return fixture
