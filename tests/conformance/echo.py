"""A test-only echo endpoint on wshub's native WebSocket layer, for the Autobahn cases.

The Autobahn fuzzing client expects a server that sends every message back. ``EchoProtocol`` is
:class:`wshub.native.HubProtocol` with two things swapped: the hub (:class:`EchoHub`) hands out an
:class:`EchoSession` instead of dispatching JSON to handlers and sends no ``welcome``, and binary
messages are echoed (``HubProtocol._binary``) instead of answered with an ``error``. Everything
the cases are about stays ``HubProtocol``'s own code: the handshake (the ``websockets`` sans-I/O
protocol), frame parsing and the size limit, fragments included (``wshub.transport.frames``),
reassembly of fragments, UTF-8 validation of text messages, pings, pongs and the closing
handshake, and the coalesced write path (text echoes go out through ``HubProtocol.send``, like
every hub frame), and permessage-deflate (``WS_COMPRESSION=deflate`` with a minimum size of 0:
every echo of a client that negotiated it is compressed, by ``Frame.wire_deflate``).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from wshub.config import Settings
from wshub.core.hub import Hub
from wshub.core.session import Session
from wshub.factory import create_broker, create_presence, create_store
from wshub.framing import OP_BINARY, deflate_frame, frame
from wshub.native import HubProtocol
from wshub.protocol import CloseCode, Frame
from wshub.testing import free_port, serve_asgi
from wshub.types import ConnectionId

__all__ = ["ECHO_PATH", "EchoHub", "EchoProtocol", "EchoSession", "echo_settings", "run_echo"]

ECHO_PATH = "/echo"
#: The 9.x cases send messages of up to 16 MiB; leave room for the frame header.
MAX_MESSAGE = 16 * 1024 * 1024 + 1024


class EchoSession(Session):
    """A real :class:`~wshub.core.session.Session` whose messages are not dispatched: every
    complete, UTF-8-checked text message is sent straight back through the connection."""

    __slots__ = ()

    def receive_nowait(self, raw: str | bytes) -> None:
        text = raw if isinstance(raw, str) else raw.decode()
        # Completes without suspending: HubProtocol runs it inline in data_received.
        if not self.conn.send(Frame(text.encode())):
            self.conn.close(CloseCode.TRY_AGAIN_LATER, "echo outbox full", drain=False)

    async def receive(self, raw: str | bytes) -> None:
        self.receive_nowait(raw)

    def receive_binary(self) -> None:  # pragma: no cover - EchoProtocol echoes binary itself
        raise AssertionError("binary messages are echoed by EchoProtocol")


class EchoHub(Hub):
    """A real hub (handshake checks, admission, heartbeat registry) whose sessions echo."""

    _echo_ids = itertools.count(1)

    def open_session(self, conn: Any, **kwargs: Any) -> Session:
        return EchoSession(self, conn, id=ConnectionId(f"echo-{next(self._echo_ids)}"))

    async def start_session(self, session: Session, principal: Any = None) -> None:
        """No ``welcome``: the Autobahn cases expect nothing but their own echoes."""

    def close_session(self, session: Session) -> None:
        session.open = False


class EchoProtocol(HubProtocol):
    """``HubProtocol`` that echoes binary messages (the hub's protocol answers them with an
    ``error``); text goes through ``HubProtocol._message`` unchanged."""

    def _binary(self, data: bytes) -> None:
        # Compressed like a hub frame would be (Frame.wire_deflate) when deflate is negotiated.
        if self._deflate and len(data) >= self._min_size:
            wire = deflate_frame(data, OP_BINARY)
        else:
            wire = frame(data, OP_BINARY)
        if not self._queue(wire):
            self.close(CloseCode.TRY_AGAIN_LATER, "echo outbox full", drain=False)


def echo_settings(**overrides: Any) -> Settings:
    """Settings for the echo hub: limits large enough for the 9.x cases, no heartbeat pings
    during a case, nothing read from the environment."""
    base: dict[str, Any] = {
        "path": ECHO_PATH,
        "store_url": "memory://",
        "max_message_size": MAX_MESSAGE,
        "outbox_max_bytes": 8 * MAX_MESSAGE,
        "outbox_max_messages": 1_000_000,
        "heartbeat_interval": 3_600_000,
        "rate_limit": 1e9,
        "rate_burst": 1_000_000_000,
        # permessage-deflate as HubProtocol negotiates it (12.x, 13.x), every echo compressed
        "compression": "deflate",
        "compression_min_size": 0,
    }
    base.update(overrides)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


async def _no_http(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app behind the echo: only the echo path is served (by EchoProtocol)."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def run_echo(settings: Settings | None = None) -> AsyncIterator[str]:
    """Serve the echo endpoint on a free loopback port; yields its ``ws://`` URL."""
    settings = settings or echo_settings()
    hub = EchoHub(
        settings,
        store=create_store(settings.store_url),
        broker=create_broker(settings.broker_url),
        presence=create_presence(settings.broker_url),
    )
    protocol = type("BoundEchoProtocol", (EchoProtocol,), {"hub": hub})
    port = free_port()
    config = uvicorn.Config(
        _no_http,
        host="127.0.0.1",
        port=port,
        ws=protocol,
        ws_max_size=settings.max_message_size,  # what uvicorn's own protocols would use
        ws_per_message_deflate=False,
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    async with hub, serve_asgi(_no_http, config=config):
        yield f"ws://127.0.0.1:{port}{settings.path}"
