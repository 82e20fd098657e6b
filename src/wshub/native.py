"""The hub's endpoint on the raw transport: a uvicorn WebSocket protocol class.

ASGI hands a server one frame per awaited ``send``. This protocol sits where uvicorn's own
WebSocket implementation would, takes the connection for the hub's path, and writes each
connection **once per event-loop turn**: every frame queued for a socket during a turn is joined
into one ``transport.write`` (flushed by ``call_soon``, so no timer and no added latency).
Frames are built once per message (:attr:`Frame.wire`) and shared by every subscriber.

Every other WebSocket path is handed, untouched, to uvicorn's ``websockets-sansio``
implementation, so the rest of an app keeps plain ASGI. Use it::

    wshub serve                                         # the standalone server does
    uvicorn app:app --ws wshub.native:HubProtocol       # an app with WebSocketApp(hub) mounted

Incoming bytes are parsed by the ``websockets`` sans-I/O protocol (handshake, framing, control
frames, size limit before buffering). A client's messages are handled one at a time and in
order; a message whose handler completes without suspending (``ping``, ``publish`` on the memory
store...) is handled inside ``data_received`` itself, without creating a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import types
import weakref
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any, ClassVar, cast

from websockets.frames import Frame as WSFrame
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from .core.hub import Hub
from .core.session import Session
from .errors import AuthFailed
from .handshake import handshake_token, origin_allowed
from .protocol import CloseCode, Frame, FrameBatch
from .types import Principal

__all__ = ["HubProtocol", "protocol_for", "register"]

logger = logging.getLogger("wshub.native")

#: Hubs by WebSocket path, for ``--ws wshub.native:HubProtocol`` (filled by ``WebSocketApp``).
_hubs: weakref.WeakValueDictionary[str, Hub] = weakref.WeakValueDictionary()

#: Messages waiting behind a suspended handler before the socket stops being read.
MAX_BACKLOG = 64
#: Seconds to wait for the client's close frame (or for a dead peer) before aborting.
CLOSE_TIMEOUT = 5.0


def register(hub: Hub, path: str | None = None) -> None:
    """Serve ``hub`` at ``path`` (default ``WS_PATH``) when uvicorn runs with ``HubProtocol``."""
    _hubs[path or hub.settings.path] = hub


def protocol_for(hub: Hub) -> type[HubProtocol]:
    """A ``HubProtocol`` bound to one hub (what ``wshub serve`` passes to uvicorn as ``ws``)."""
    register(hub)
    return type("BoundHubProtocol", (HubProtocol,), {"hub": hub})


class HubProtocol(asyncio.Protocol):
    """One WebSocket connection, created by uvicorn's HTTP protocol on upgrade."""

    hub: ClassVar[Hub | None] = None

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self._loop = _loop or asyncio.get_event_loop()
        self._fallback: asyncio.Protocol | None = None
        self._hub: Hub | None = None
        self._ws: ServerProtocol | None = None
        self._session: Session | None = None
        self.transport: asyncio.Transport | None = None
        # outgoing: frames of this loop turn, joined on flush
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self._paused = False
        self._closing = False
        self._close_timer: asyncio.TimerHandle | None = None
        # incoming: messages are handled in order, one at a time
        self._busy: asyncio.Future[None] | None = None
        self._backlog: deque[str] = deque()
        self._reading_paused = False
        self._fragments: list[bytes] | None = None
        self._fragment_opcode: Opcode | None = None
        self._ready = False
        self._handshaking = False
        self._early: list[Any] = []
        self.awaiting_pong = False
        self._max_bytes = 0
        self._max_frames = 0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._fallback is not None:
            self._fallback.data_received(data)
            return
        ws = self._ws
        if ws is None:
            ws = self._choose(data)
            if ws is None:
                return
        try:
            ws.receive_data(data)
        except EOFError:  # data after the close handshake: ignored, as RFC 6455 says
            return
        events = ws.events_received()
        if events:
            if self._ready:
                self._handle(events)
            else:
                self._early.extend(events)
                if not self._handshaking and isinstance(events[0], Request):
                    self._handshaking = True
                    self._start_handshake(events[0])
        self._pump()

    def eof_received(self) -> bool | None:
        if self._fallback is not None:
            return self._fallback.eof_received()
        if self._ws is not None:
            self._ws.receive_eof()
            self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._fallback is not None:
            self._fallback.connection_lost(exc)
            return
        self._closing = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._hub is not None:
            _heartbeat_for(self._hub).connections.discard(self)
        self._out.clear()
        if self._session is not None and self._hub is not None:
            self._hub.close_session(self._session)

    def pause_writing(self) -> None:
        if self._fallback is not None:
            self._fallback.pause_writing()
        else:
            self._paused = True

    def resume_writing(self) -> None:
        if self._fallback is not None:
            self._fallback.resume_writing()
        else:
            self._paused = False
            self._flush()

    # -- wshub Connection --------------------------------------------------------------------

    def send(self, frame: Frame) -> bool:
        if self._closing:
            return True
        wire = frame.wire
        size = self._out_bytes + len(wire)
        if size > self._max_bytes or len(self._out) >= self._max_frames:
            return False
        self._out.append(wire)
        self._out_bytes = size
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return True

    def send_batch(self, batch: FrameBatch) -> bool:
        if self._closing:
            return True
        wire = batch.wire
        if not self._out and not self._paused and self.transport is not None:
            # Called at the end of a loop turn with nothing else queued: write it now.
            if len(wire) > self._max_bytes:
                return False
            self.transport.write(wire)
            return True
        size = self._out_bytes + len(wire)
        if size > self._max_bytes or len(self._out) >= self._max_frames:
            return False
        self._out.append(wire)
        self._out_bytes = size
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return True

    @property
    def pending_bytes(self) -> int:
        """Bytes queued for this client: not yet flushed, plus the transport's own buffer."""
        buffered = self.transport.get_write_buffer_size() if self.transport else 0
        return self._out_bytes + buffered

    def close(self, code: int = 1000, reason: str = "", *, drain: bool = True) -> None:
        if self._closing or self._ws is None:
            return
        self._closing = True
        if not drain:
            self._out.clear()
            self._out_bytes = 0
        with contextlib.suppress(Exception):  # already closing on the protocol level
            self._ws.send_close(code, reason)
        self._pump()
        self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self._abort)

    # -- handshake -----------------------------------------------------------------------------

    def _choose(self, data: bytes) -> ServerProtocol | None:
        """Take the connection if its path is a hub's, else hand it to uvicorn's protocol."""
        line = data.split(b"\r\n", 1)[0].split(b" ")
        target = line[1].decode("latin-1") if len(line) > 1 else ""
        path = target.split("?", 1)[0]
        hub = type(self).hub
        if hub is None or path != hub.settings.path:
            hub = _hubs.get(path)
        if hub is None:
            self._hand_over()
            assert self._fallback is not None
            self._fallback.data_received(data)
            return None
        self._hub = hub
        settings = hub.settings
        self._max_bytes = settings.outbox_max_bytes
        self._max_frames = settings.outbox_max_messages
        self._ws = ServerProtocol(max_size=settings.max_message_size)
        return self._ws

    def _hand_over(self) -> None:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )

        fallback = WebSocketsSansIOProtocol(
            config=self._config,
            server_state=self._server_state,
            app_state=self._app_state,
            _loop=self._loop,
        )
        assert self.transport is not None
        fallback.connection_made(self.transport)
        self._fallback = fallback

    def _start_handshake(self, request: Request) -> None:
        task = self._loop.create_task(self._handshake(request))
        self._server_tasks().add(task)
        task.add_done_callback(self._server_tasks().discard)

    def _server_tasks(self) -> set[asyncio.Task[Any]]:
        tasks: set[asyncio.Task[Any]] = self._server_state.tasks
        return tasks

    async def _handshake(self, request: Request) -> None:
        hub, ws = self._hub, self._ws
        assert hub is not None and ws is not None and self.transport is not None
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        principal: Principal | None = None
        status, reason = 0, ""
        peer = self.transport.get_extra_info("peername")
        if not origin_allowed(hub.settings, headers):
            status, reason = 403, "origin not allowed"
        else:
            query = request.path.partition("?")[2]
            token = handshake_token(query, headers)
            if token:
                try:
                    principal = await hub.verify_token(token)
                except AuthFailed as exc:
                    status, reason = 401, exc.message
            if not status:
                refused = await hub.admit(peer[0] if peer else None, principal)
                if refused is not None:
                    status, reason = refused
        if self.transport.is_closing():
            return
        response = ws.reject(status, reason) if status else ws.accept(request)
        if status:
            response.headers["Content-Type"] = "text/plain; charset=utf-8"
        ws.send_response(response)
        if ws.handshake_exc is not None or status:
            self._pump()
            self.transport.close()
            return
        remote = f"{peer[0]}:{peer[1]}" if peer else None
        session = hub.open_session(
            self, remote=remote, ip=peer[0] if peer else None, headers=headers
        )
        self._session = session
        _heartbeat_for(hub).add(self)
        self._pump()
        await hub.start_session(session, principal)
        self._ready = True
        early, self._early = self._early, []
        frames = [e for e in early if not isinstance(e, Request)]
        if frames:
            self._handle(frames)
            self._pump()

    # -- incoming frames -------------------------------------------------------------------

    def _handle(self, events: list[Any]) -> None:
        for frame in events:
            if not isinstance(frame, WSFrame):
                continue
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if frame.fin:
                    self._message(opcode, bytes(frame.data))
                else:
                    self._fragments = [bytes(frame.data)]
                    self._fragment_opcode = opcode
            elif opcode is Opcode.CONT:
                if self._fragments is not None:
                    self._fragments.append(bytes(frame.data))
                    if frame.fin:
                        data = b"".join(self._fragments)
                        opcode_ = self._fragment_opcode
                        self._fragments = self._fragment_opcode = None
                        assert opcode_ is not None
                        self._message(opcode_, data)
            elif opcode is Opcode.PONG:
                self.awaiting_pong = False
            elif opcode is Opcode.CLOSE:
                self._closing = True

    def _message(self, opcode: Opcode, data: bytes) -> None:
        session = self._session
        if session is None or self._closing:
            return
        if opcode is Opcode.BINARY:
            session.receive_binary()
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self._fail(CloseCode.INVALID_DATA, "invalid UTF-8")
            return
        if self._busy is not None:
            self._backlog.append(text)
            if len(self._backlog) >= MAX_BACKLOG and not self._reading_paused:
                assert self.transport is not None
                self._reading_paused = True
                self.transport.pause_reading()
            return
        self._run(session, text)

    def _run(self, session: Session, text: str) -> None:
        coro = session.receive(text)
        try:
            blocked_on = coro.send(None)
        except StopIteration:
            return
        task = self._loop.create_task(_resume(coro, blocked_on))
        self._busy = task
        task.add_done_callback(self._next_message)

    def _next_message(self, task: asyncio.Future[None]) -> None:
        self._busy = None
        session = self._session
        while self._backlog and self._busy is None and session is not None:
            self._run(session, self._backlog.popleft())
        if self._busy is None and self._reading_paused and self.transport is not None:
            self._reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()
        self._pump()

    # -- outgoing bytes --------------------------------------------------------------------

    def _pump(self) -> None:
        """Move what the sans-I/O protocol wants to send (handshake, pongs, close) to the
        outgoing buffer, in order; an empty chunk means: close the TCP connection."""
        ws = self._ws
        if ws is None:
            return
        chunks = ws.data_to_send()
        if not chunks:
            return
        eof = False
        for chunk in chunks:
            if chunk:
                self._out.append(chunk)
                self._out_bytes += len(chunk)
            else:
                eof = True
        self._flush()
        if eof and self.transport is not None:
            self.transport.close()

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out or self._paused or self.transport is None:
            return
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        self._out_bytes = 0

    def _fail(self, code: int, reason: str) -> None:
        if self._ws is not None:
            self._ws.fail(code, reason)
            self._pump()
        self._closing = True

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def ping(self) -> None:
        """Heartbeat tick: terminate if the last ping went unanswered, then ping again."""
        ws = self._ws
        if ws is None or self._closing:
            return
        if self.awaiting_pong:
            logger.info("terminating connection: heartbeat not answered")
            self._out.clear()
            self._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT / 5, self._abort)
            return
        self.awaiting_pong = True
        ws.send_ping(b"")
        self._pump()


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], blocked_on: Any) -> Generator[Any, Any, None]:
    """Continue a coroutine that was started outside a task and suspended on ``blocked_on``:
    what ``yield from`` would do, so the task running this drives the original coroutine."""
    while True:
        try:
            sent = yield blocked_on
        except BaseException as exc:
            try:
                blocked_on = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                blocked_on = coro.send(sent)
            except StopIteration:
                return


class _Heartbeat:
    """One timer per hub for all its native connections: a ping each ``WS_HEARTBEAT_INTERVAL``;
    a connection that has not answered the previous ping is terminated."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.connections: weakref.WeakSet[HubProtocol] = weakref.WeakSet()
        self._task: asyncio.Task[None] | None = None

    def add(self, conn: HubProtocol) -> None:
        self.connections.add(conn)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.connections:
            await asyncio.sleep(self.interval)
            for conn in list(self.connections):
                conn.ping()


_heartbeats: weakref.WeakKeyDictionary[Hub, _Heartbeat] = weakref.WeakKeyDictionary()


def _heartbeat_for(hub: Hub) -> _Heartbeat:
    beat = _heartbeats.get(hub)
    if beat is None:
        beat = _heartbeats[hub] = _Heartbeat(hub.settings.heartbeat_interval / 1000)
    return beat
