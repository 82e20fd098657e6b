"""The hub's WebSocket endpoint as a plain ASGI app: mount it in any ASGI framework.

::

    app.add_websocket_route("/ws", WebSocketApp(hub))     # Starlette / FastAPI
    app.mount("/ws", WebSocketApp(hub))                   # or as a sub-app

Each connection gets a bounded :class:`~wshub.core.outbox.Outbox` and a writer task that does the
awaiting, so the hub's fan-out never waits on a client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from .core.hub import Hub
from .core.outbox import Outbox
from .core.session import Session
from .errors import AuthFailed, BackendUnavailable
from .handshake import handshake_token, origin_allowed
from .protocol import CloseCode, Frame, FrameBatch
from .types import Principal

__all__ = ["ASGIConnection", "HubMiddleware", "WebSocketApp"]

logger = logging.getLogger("wshub.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The scope extension of ``wshub.uvicorn_protocols.SafeWebSocketsProtocol`` (the same name
#: there): it lets the session charge control frames and fragments to its rate limit.
FRAMES_EXTENSION = "wshub.frames"


class ASGIConnection:
    """:class:`~wshub.interfaces.Connection` over an ASGI ``send`` callable."""

    __slots__ = ("_close", "_dropped", "_send", "_writer", "_writing", "outbox")

    def __init__(self, send: Send, *, max_bytes: int, max_frames: int) -> None:
        self._send = send
        self.outbox = Outbox(max_bytes=max_bytes, max_frames=max_frames)
        self._close: tuple[int, str] | None = None
        self._dropped = False
        self._writer: asyncio.Task[None] | None = None
        self._writing = False

    def send(self, frame: Frame) -> bool:
        return self.outbox.put(frame)

    def send_batch(self, batch: FrameBatch) -> bool:
        return self.outbox.put_all(batch.frames, batch.nbytes)

    async def drained(self, below: int) -> None:
        """Return once at most ``below`` bytes wait in the outbox. Called from the
        connection's own task while it holds the outbox (a handler running), it writes them
        itself: the writer is asleep then."""
        if self.outbox.held:
            await self.send_held()
        elif self.outbox.pending_bytes > below or len(self.outbox):
            await self.outbox.drained()

    def close(self, code: int = 1000, reason: str = "", *, drain: bool = True) -> None:
        """Close after what is queued (``drain``), or now (a slow consumer): the queued frames,
        and those the writer took but has not sent, are dropped, and a writer waiting for the
        client to read is cancelled so that the close goes out next."""
        if self._close is None:
            self._close = (code, reason)
        self.outbox.close(drop=not drain)
        if not drain:
            self._drop()

    def abort(self) -> None:
        """The client is gone: drop whatever is queued and stop the writer without a close."""
        self._close = None
        self.outbox.close(drop=True)
        self._drop()

    def _drop(self) -> None:
        self._dropped = True
        writer = self._writer
        if self._writing and writer is not None and writer is not asyncio.current_task():
            writer.cancel()  # blocked in the server's send, waiting for the client to read

    async def _write(self, frames: list[Frame]) -> None:
        send = self._send
        for frame in frames:
            if self._dropped:
                return
            await send({"type": "websocket.send", "text": frame.text})

    async def send_held(self) -> None:
        """Send what was queued while the outbox was held (see :meth:`Outbox.hold`), from the
        connection's own task; frames queued meanwhile go too."""
        outbox = self.outbox
        try:
            while frames := outbox.take_nowait():
                await self._write(frames)
        except Exception as exc:  # the client went away mid-write: as in run_writer
            logger.debug("send stopped: %r", exc)
            self.abort()

    async def run_writer(self) -> None:
        """Write queued frames in order until closed; then send the close frame if one is due."""
        self._writer = asyncio.current_task()
        try:
            while frames := await self.outbox.take():
                self._writing = True
                try:
                    await self._write(frames)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not self._dropped or task is None or task.uncancel():
                        raise  # cancelled by someone else
                    break
                finally:
                    self._writing = False
            if self._close is not None:
                code, reason = self._close
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception as exc:  # the client went away mid-write: nothing left to do
            logger.debug("writer stopped: %r", exc)


def _overflow(hub: Hub, session: Session) -> Callable[[], None]:
    """What to call when the transport's own frames (pongs) would pass the outbound limit."""
    return lambda: hub.overflowed(session)


class WebSocketApp:
    """ASGI application for the hub's endpoint. Plain HTTP requests get 426 Upgrade Required."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # Lets `uvicorn --ws wshub.native:HubProtocol` find the hub for its path.
        from .native import register

        register(hub)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await _http_response(send, 426, {"error": "Upgrade Required: connect with WebSocket"})
            return
        if scope["type"] != "websocket":
            return
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        hub = self.hub
        settings = hub.settings
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        if not origin_allowed(settings, headers):
            await _deny(scope, send, 403, "origin not allowed")
            return
        principal: Principal | None = None
        token = handshake_token(scope.get("query_string", b""), headers)
        if token:
            try:
                principal = await hub.verify_token(token)
            except AuthFailed as exc:
                await _deny(scope, send, 401, exc.message)
                return
            except BackendUnavailable as exc:  # revocations unreadable, or not started
                logger.warning("refusing a handshake: %s", exc)
                await _deny(scope, send, 503, "service temporarily unavailable")
                return
        client = scope.get("client")
        refused = await hub.admit(client[0] if client else None, principal)
        if refused is not None:
            await _deny(scope, send, *refused)
            return

        await send({"type": "websocket.accept"})
        conn = ASGIConnection(
            send, max_bytes=settings.outbox_max_bytes, max_frames=settings.outbox_max_messages
        )
        session = hub.open_session(
            conn,
            remote=f"{client[0]}:{client[1]}" if client else None,
            ip=client[0] if client else None,
            headers=headers,
        )
        writer = asyncio.create_task(conn.run_writer())
        outbox = conn.outbox
        max_size = settings.max_message_size
        frames = scope.get("extensions", {}).get(FRAMES_EXTENSION)
        if frames is not None:  # wshub's uvicorn protocol: control frames count too
            frames["attach"](session.charge, settings.outbox_max_bytes, _overflow(hub, session))
        try:
            await hub.start_session(session, principal)
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    text = message.get("text")
                    if text is None:
                        if len(message.get("bytes") or b"") > max_size:
                            session.close(CloseCode.MESSAGE_TOO_BIG, "message too big", drain=False)
                            break
                        session.receive_binary()
                        continue
                    # A str of n characters is n to 4n UTF-8 bytes: encode only when in doubt.
                    if len(text) > max_size or (
                        len(text) * 4 > max_size and len(text.encode()) > max_size
                    ):
                        session.close(CloseCode.MESSAGE_TOO_BIG, "message too big", drain=False)
                        break
                    if outbox.hold():  # the writer is idle: replies go out from this task
                        try:
                            await session.receive(text)
                            await conn.send_held()
                        finally:
                            outbox.release()
                    else:
                        await session.receive(text)
                elif kind == "websocket.disconnect":
                    conn.abort()
                    break
        finally:
            hub.close_session(session)
            if conn._close is None:
                conn.abort()
            try:
                await asyncio.wait_for(writer, settings.shutdown_timeout / 1000 + 1)
            except (TimeoutError, asyncio.CancelledError):
                writer.cancel()


class HubMiddleware:
    """Put the hub in front of any ASGI app: WebSocket requests for ``path`` go to the hub,
    everything else to ``app``, and the ASGI lifespan starts and stops the hub.

    For apps without lifespan support (Django), pass ``forward_lifespan=False``: the middleware
    answers the lifespan protocol itself instead of passing it on::

        application = HubMiddleware(get_asgi_application(), hub, forward_lifespan=False)
    """

    def __init__(
        self, app: Any, hub: Hub, *, path: str | None = None, forward_lifespan: bool = True
    ) -> None:
        self.app = app
        self.hub = hub
        self.path = path or hub.settings.path
        self.endpoint = WebSocketApp(hub)
        self.forward_lifespan = forward_lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" and scope["path"] == self.path:
            await self.endpoint(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.hub
        if self.forward_lifespan:

            async def receive_and_run_hub() -> Message:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await hub.start()
                elif message["type"] == "lifespan.shutdown":
                    await hub.stop()
                return message

            await self.app(scope, receive_and_run_hub, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await hub.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await hub.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _deny(scope: Scope, send: Send, status: int, message: str) -> None:
    """Refuse the handshake with an HTTP status (falls back to 403 without the ASGI extension)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = orjson.dumps({"error": message})
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})


async def _http_response(send: Send, status: int, body: dict[str, Any]) -> None:
    data = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"upgrade", b"websocket")],
        }
    )
    await send({"type": "http.response.body", "body": data})
