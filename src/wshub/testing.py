"""Helpers for testing code that uses wshub: a real server on a free loopback port, in-process.

::

    async with run_server(Settings(jwt_secret="test-secret")) as server:
        async with server.connect(user="alice") as ws:
            await ws.expect("welcome")
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection

from .auth.jwt import issue_token
from .config import Settings
from .core.hub import Hub
from .server.app import create_app
from .server.run import DrainingServer, uvicorn_config

__all__ = ["TestClient", "TestServer", "free_port", "run_server", "serve_asgi"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _QuietServer(DrainingServer):
    """Leaves signals to the test runner and says when it is listening."""

    def __init__(self, config: uvicorn.Config, hub: Hub | None) -> None:
        super().__init__(config, hub)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.listening.set()


@contextlib.asynccontextmanager
async def serve_asgi(
    app: Any,
    *,
    port: int | None = None,
    hub: Hub | None = None,
    config: uvicorn.Config | None = None,
) -> AsyncIterator[int]:
    """Serve any ASGI app (yours, with wshub mounted) on a loopback port; yields the port."""
    if config is None:
        port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = _QuietServer(config, hub)
    task = asyncio.create_task(server.serve())
    listening = asyncio.create_task(server.listening.wait())
    await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
    if not server.listening.is_set():
        listening.cancel()
        task.result()
        raise RuntimeError("server exited during start-up")
    try:
        yield config.port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


class TestClient:
    """A real WebSocket client with JSON helpers that never wait forever."""

    __test__ = False  # not a pytest class

    def __init__(self, ws: ClientConnection, timeout: float) -> None:
        self.ws = ws
        self.timeout = timeout

    async def send(self, type_: str, payload: Any = None, **envelope: Any) -> None:
        msg: dict[str, Any] = {"type": type_, **envelope}
        if payload is not None:
            msg["payload"] = payload
        await self.ws.send(orjson.dumps(msg).decode())

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout or self.timeout)
        msg: dict[str, Any] = orjson.loads(raw)
        return msg

    async def expect(self, type_: str, timeout: float | None = None) -> dict[str, Any]:
        """Receive the next message and check its type (raising AssertionError otherwise)."""
        msg = await self.recv(timeout)
        if msg.get("type") != type_:
            raise AssertionError(f"expected {type_!r}, got {msg!r}")
        return msg

    async def request(self, type_: str, payload: Any = None, *, id: str = "r") -> dict[str, Any]:
        """Send a message with an ``id`` and return the next message carrying that id."""
        await self.send(type_, payload, id=id)
        while True:
            msg = await self.recv()
            if msg.get("id") == id:
                return msg

    async def closed(self, timeout: float | None = None) -> tuple[int | None, str]:
        """Wait for the server to close; return (code, reason)."""
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout or self.timeout)
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd else (None, "")


@dataclass
class TestServer:
    """A running server: its hub, settings and addresses."""

    __test__ = False

    hub: Hub
    settings: Settings
    host: str
    port: int
    timeout: float = 5.0

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.settings.path}"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    def token(self, user_id: str, **kwargs: Any) -> str:
        secret = self.settings.jwt_secret
        assert secret is not None, "the server has no WS_JWT_SECRET"
        return issue_token(user_id, secret.get_secret_value(), **kwargs)

    @contextlib.asynccontextmanager
    async def connect(
        self, *, user: str | None = None, token: str | None = None, **kwargs: Any
    ) -> AsyncIterator[TestClient]:
        """Connect; with ``user`` a token for that user goes in the handshake."""
        url = self.url
        if user is not None:
            token = self.token(user)
        if token is not None:
            url += f"?token={token}"
        async with websockets.connect(url, open_timeout=self.timeout, **kwargs) as ws:
            yield TestClient(ws, self.timeout)


@contextlib.asynccontextmanager
async def run_server(
    settings: Settings | None = None,
    *,
    hub: Hub | None = None,
    port: int | None = None,
    **uvicorn_options: Any,
) -> AsyncIterator[TestServer]:
    """Run the standalone app on a loopback port (free, or ``port`` to restart on the same one)
    inside the current event loop."""
    if settings is None:
        settings = hub.settings if hub is not None else Settings()
    port = port or free_port()
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port})
    if hub is not None:
        hub.settings = settings
    app = create_app(settings, hub=hub)
    config = uvicorn_config(app, settings, app.state.hub, **uvicorn_options)
    async with serve_asgi(app, hub=app.state.hub, config=config):
        yield TestServer(app.state.hub, settings, "127.0.0.1", port)
