"""The hub's endpoint on the raw transport: a uvicorn WebSocket protocol class.

ASGI hands a server one frame per awaited ``send``. This protocol sits where uvicorn's own
WebSocket implementation would, takes the connections for the hub's path, and writes each
connection **once per event-loop turn**: every frame queued for a socket during a turn is joined
into one ``transport.write`` (flushed by ``call_soon``, so no timer and no added latency).
Frames are built once per message (:attr:`Frame.wire`) and shared by every subscriber.

Every other WebSocket path is handed, untouched, to uvicorn's ``websockets-sansio``
implementation, so the rest of an app keeps plain ASGI. Use it::

    wshub serve                                         # the standalone server does
    uvicorn app:app --ws wshub.native:HubProtocol       # an app with WebSocketApp(hub) mounted

The opening handshake is parsed and answered by the ``websockets`` sans-I/O protocol. After it,
frames are parsed by :mod:`wshub.transport.frames`: RFC 6455, with the message size checked from
the frame header, before the payload is buffered. With ``WS_COMPRESSION=deflate`` a client that
offers permessage-deflate gets it without context takeover (:mod:`wshub.transport.deflate`): its
connection is sent each frame's :meth:`Frame.wire_deflate`, compressed once for every such
subscriber, and its compressed messages are inflated within the size limit. What the
connections of a hub share (one flush per loop turn, the heartbeat) is their
:class:`~wshub.transport.server.NativeServer`. A client's
messages are handled one at a time and in order; a message whose handler completes without
suspending (``ping``, ``publish`` on the memory store...) is handled inside ``data_received``
itself, without creating a task.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, ClassVar, cast

from websockets.http11 import Request
from websockets.server import ServerProtocol

from ..core.hub import Hub
from ..core.session import Session
from ..errors import AuthFailed, BackendUnavailable
from ..framing import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RSV1, close_frame, frame
from ..handshake import handshake_token, origin_allowed
from ..protocol import CloseCode, Frame, FrameBatch
from ..types import Principal
from .deflate import inflate, negotiate
from .frames import (
    FRAGMENT_OVERHEAD,
    OP_CONT,
    VALID_CLOSE_CODES,
    ProtocolViolation,
    parse_frames,
    small_text,
)
from .server import NativeServer

__all__ = [
    "CLOSE_TIMEOUT",
    "FRAGMENTS_PER_TOKEN",
    "MAX_BACKLOG",
    "SLOW_CLOSE_TIMEOUT",
    "HubProtocol",
    "protocol_for",
    "register",
]

logger = logging.getLogger("wshub.native")

#: Servers by WebSocket path, for ``--ws wshub.native:HubProtocol`` (filled by ``WebSocketApp``):
#: uvicorn creates that class itself, with nothing that leads to the app's hub.
_servers: dict[str, NativeServer] = {}

#: Messages waiting behind a suspended handler before the socket stops being read.
MAX_BACKLOG = 64
#: Continuation frames that cost one token of the connection's rate limit (``Session.charge``):
#: many-fragment messages cost more than one token each, so flooding them ends in 1008.
FRAGMENTS_PER_TOKEN = 256
#: Seconds to wait for the client's close frame (or for a dead peer) before aborting.
CLOSE_TIMEOUT = 5.0
#: Seconds a connection closed without draining (a slow consumer, 1013) keeps what the transport
#: still holds, its close frame last, for a client that resumes reading; then it is aborted.
SLOW_CLOSE_TIMEOUT = 30.0

_CONNECTING, _OPEN, _CLOSING, _CLOSED = range(4)
#: The opcodes ``parse_frames`` returns for the first frame of a compressed message.
_DEFLATED_TEXT = RSV1 | OP_TEXT
_DEFLATED_BINARY = RSV1 | OP_BINARY


def register(hub: Hub, path: str | None = None) -> NativeServer:
    """Serve ``hub`` at ``path`` (default ``WS_PATH``) when uvicorn runs with ``HubProtocol``."""
    path = path or hub.settings.path
    server = _servers.get(path)
    if server is None or server.hub is not hub:
        server = _servers[path] = NativeServer(hub)
    return server


def protocol_for(hub: Hub) -> type[HubProtocol]:
    """A ``HubProtocol`` bound to one hub (what ``wshub serve`` passes to uvicorn as ``ws``)."""
    return type(
        "BoundHubProtocol",
        (HubProtocol,),
        {"__slots__": (), "hub": hub, "server": NativeServer(hub)},
    )


def _deflating(cls: type[HubProtocol]) -> type[HubProtocol]:
    """``cls`` with ``send``/``send_batch`` that write the compressed forms: a connection that
    negotiated permessage-deflate becomes one (so the plain path checks nothing per frame)."""
    sub = HubProtocol._deflating_classes.get(cls)
    if sub is None:
        namespace = {
            "__slots__": (),
            "send": HubProtocol._send_deflate,
            "send_batch": HubProtocol._send_batch_deflate,
        }
        sub = HubProtocol._deflating_classes[cls] = type(
            f"{cls.__name__}Deflating", (cls,), namespace
        )
    return sub


class HubProtocol(asyncio.Protocol):
    """One WebSocket connection, created by uvicorn's HTTP protocol on upgrade."""

    #: The hub of a bound class (``protocol_for``), and what its connections share.
    hub: ClassVar[Hub | None] = None
    server: ClassVar[NativeServer | None] = None
    #: Per class, its variant for connections that negotiated permessage-deflate (see
    #: ``_deflating``): the same slots, ``send`` and ``send_batch`` compressing.
    _deflating_classes: ClassVar[dict[type[HubProtocol], type[HubProtocol]]] = {}

    # Slots: an idle connection is mostly this object (a __dict__ of ~35 entries cost more).
    __slots__ = (
        "__weakref__",
        "_app_state",
        "_backlog",
        "_buf",
        "_busy",
        "_charged",
        "_close_timer",
        "_config",
        "_deflate",
        "_drain_waiters",
        "_eof_sent",
        "_fallback",
        "_flush_scheduled",
        "_fragment_count",
        "_fragment_deflated",
        "_fragment_opcode",
        "_fragments",
        "_handshake_ws",
        "_hub",
        "_loop",
        "_max_bytes",
        "_max_frames",
        "_max_size",
        "_min_size",
        "_nowait",
        "_out",
        "_out_bytes",
        "_paused",
        "_reading_paused",
        "_server",
        "_server_state",
        "_session",
        "_state",
        "awaiting_pong",
        "transport",
    )

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
        self._server: NativeServer | None = None
        self._handshake_ws: ServerProtocol | None = None
        self._session: Session | None = None
        self.transport: asyncio.Transport | None = None
        self._state = _CONNECTING
        # incoming
        self._buf = bytearray()
        self._max_size = 0
        self._fragments: bytearray | None = None
        self._fragment_opcode = 0
        self._fragment_count = 0
        self._fragment_deflated = False  # the message in progress is compressed
        self._charged = 0  # the message in progress: its bytes + FRAGMENT_OVERHEAD a fragment
        self._busy: asyncio.Future[None] | None = None
        self._nowait: Callable[[str], Coroutine[Any, Any, None] | None] = _nothing
        self._backlog: deque[str] | None = None  # made when a handler is busy
        self._reading_paused = False
        # outgoing: frames of this loop turn, joined on flush
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self._paused = False
        self._max_bytes = 0
        self._max_frames = 0
        self._close_timer: asyncio.TimerHandle | None = None
        # (bytes, future): who waits for the pending bytes to drop to that (see drained)
        self._drain_waiters: list[tuple[int, asyncio.Future[None]]] | None = None
        self._eof_sent = False
        self.awaiting_pong = False
        # permessage-deflate: negotiated, and the size under which frames go uncompressed
        self._deflate = False
        self._min_size = 0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _OPEN:
            # The common case first: one whole small text frame and nothing buffered, in
            # progress or waiting: straight to the session.
            if not self._buf and self._fragments is None and self._busy is None:
                payload = small_text(data, self._max_size)
                if payload is not None:
                    try:
                        text = payload.decode()
                    except UnicodeDecodeError:
                        self._fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                        return
                    self._run(text)
                    return
            self._receive(data)
        elif self._fallback is not None:
            self._fallback.data_received(data)
        elif state == _CLOSING:
            self._receive(data)
        elif state == _CONNECTING:
            if self._hub is None:
                self._start(data)
            else:  # frames that arrive while the handshake is being decided
                self._buf += data

    def eof_received(self) -> bool | None:
        if self._fallback is not None:
            return self._fallback.eof_received()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._fallback is not None:
            self._fallback.connection_lost(exc)
            return
        self._state = _CLOSED
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._server is not None:
            self._server.discard(self)
        self._out.clear()
        self._wake_drained(force=True)
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
            self._wake_drained()

    # -- wshub Connection --------------------------------------------------------------------

    def send(self, frame: Frame) -> bool:
        if self._state != _OPEN:
            return True
        return self._queue(frame.wire)

    def send_batch(self, batch: FrameBatch) -> bool:
        if self._state != _OPEN:
            return True
        wire = batch.wire
        if not self._out and not self._paused and self.transport is not None:
            # Called at the end of a loop turn with nothing else queued: write it now.
            if len(wire) > self._max_bytes:
                return False
            self.transport.write(wire)
            return True
        return self._queue(wire)

    def _send_deflate(self, frame: Frame) -> bool:
        """``send`` of a connection that negotiated permessage-deflate."""
        if self._state != _OPEN:
            return True
        return self._queue(frame.wire_deflate(self._min_size))

    def _send_batch_deflate(self, batch: FrameBatch) -> bool:
        """``send_batch`` of a connection that negotiated permessage-deflate."""
        if self._state != _OPEN:
            return True
        wire = batch.wire_deflate(self._min_size)
        if not self._out and not self._paused and self.transport is not None:
            if len(wire) > self._max_bytes:
                return False
            self.transport.write(wire)
            return True
        return self._queue(wire)

    @property
    def pending_bytes(self) -> int:
        """Bytes queued for this client: not yet flushed, plus the transport's own buffer."""
        buffered = self.transport.get_write_buffer_size() if self.transport else 0
        return self._out_bytes + buffered

    def drained(self, below: int) -> asyncio.Future[None]:
        """Resolves once at most ``below`` bytes wait for this client (or it is gone)."""
        future: asyncio.Future[None] = self._loop.create_future()
        if self._state != _OPEN or (not self._out and self.pending_bytes <= below):
            future.set_result(None)
        else:
            if self._drain_waiters is None:
                self._drain_waiters = []
            self._drain_waiters.append((below, future))
        return future

    def _wake_drained(self, *, force: bool = False) -> None:
        waiters = self._drain_waiters
        if not waiters:
            return
        pending = self.pending_bytes
        keep = []
        for below, future in waiters:
            if force or pending <= below or self._state != _OPEN:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((below, future))
        self._drain_waiters = keep

    def close(self, code: int = 1000, reason: str = "", *, drain: bool = True) -> None:
        """Start the closing handshake (queued frames first with ``drain``).

        Without ``drain`` (a slow consumer, abuse) the frames wshub still queues are dropped and
        the close frame goes right behind what the transport already holds (whole frames), even
        while writing is paused, followed by a half-close: a client that resumes reading reads
        the rest and then the close code, not a bare EOF. It has ``SLOW_CLOSE_TIMEOUT`` for it.
        """
        if self._state != _OPEN:
            return
        self._state = _CLOSING
        transport = self.transport
        if drain or transport is None:
            self._write_now(close_frame(code, reason))
            self._arm_close_timer(CLOSE_TIMEOUT)
            return
        self._out.clear()
        self._out_bytes = 0
        transport.write(close_frame(code, reason))
        if transport.can_write_eof():  # not on TLS: there the peer's close reply ends it
            self._eof_sent = True
            transport.write_eof()
        self._arm_close_timer(SLOW_CLOSE_TIMEOUT)

    # -- handshake ---------------------------------------------------------------------------

    def _start(self, data: bytes) -> None:
        """Take the connection if its path is a hub's, else hand it to uvicorn's protocol."""
        line = data.split(b"\r\n", 1)[0].split(b" ")
        target = line[1].decode("latin-1") if len(line) > 1 else ""
        path = target.split("?", 1)[0]
        cls = type(self)
        server = cls.server
        if server is None and cls.hub is not None:  # a class bound to a hub by hand
            server = cls.server = NativeServer(cls.hub)
        if server is None or path != server.hub.settings.path:
            server = _servers.get(path)
        if server is None:
            self._hand_over(data)
            return
        self._server = server
        hub = self._hub = server.hub
        settings = hub.settings
        self._max_size = settings.max_message_size
        self._max_bytes = settings.outbox_max_bytes
        self._max_frames = settings.outbox_max_messages
        ws = self._handshake_ws = ServerProtocol(max_size=settings.max_message_size)
        ws.receive_data(data)  # uvicorn passes the whole request, rebuilt, in one call
        events = ws.events_received()
        if events and isinstance(events[0], Request):
            task = self._loop.create_task(self._handshake(events[0]))
            tasks: set[asyncio.Task[Any]] = self._server_state.tasks
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        else:  # not a request the sans-I/O protocol accepts: it has a 400 ready
            self._write_handshake_output(close=True)

    def _hand_over(self, data: bytes) -> None:
        from ..uvicorn_protocols import SafeWebSocketsProtocol

        fallback = SafeWebSocketsProtocol(
            config=self._config,
            server_state=self._server_state,
            app_state=self._app_state,
            _loop=self._loop,
        )
        assert self.transport is not None
        fallback.connection_made(self.transport)
        self._fallback = fallback
        fallback.data_received(data)

    async def _handshake(self, request: Request) -> None:
        hub, ws, transport = self._hub, self._handshake_ws, self.transport
        assert hub is not None and ws is not None and transport is not None
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        principal: Principal | None = None
        status, reason = 0, ""
        peer = transport.get_extra_info("peername")
        if not origin_allowed(hub.settings, headers):
            status, reason = 403, "origin not allowed"
        else:
            token = handshake_token(request.path.partition("?")[2], headers)
            if token:
                try:
                    principal = await hub.verify_token(token)
                except AuthFailed as exc:
                    status, reason = 401, exc.message
                except BackendUnavailable as exc:  # revocations unreadable, or not started
                    logger.warning("refusing a handshake: %s", exc)
                    status, reason = 503, "service temporarily unavailable"
            if not status:
                refused = await hub.admit(peer[0] if peer else None, principal)
                if refused is not None:
                    status, reason = refused
        if transport.is_closing():
            return
        response = ws.reject(status, reason) if status else ws.accept(request)
        if status:
            response.headers["Content-Type"] = "text/plain; charset=utf-8"
        elif hub.settings.compression == "deflate":
            accepted = negotiate(request.headers.get_all("Sec-WebSocket-Extensions"))
            if accepted is not None:
                response.headers["Sec-WebSocket-Extensions"] = accepted
                self._use_deflate(hub.settings.compression_min_size)
        ws.send_response(response)
        if ws.handshake_exc is not None or status:
            self._write_handshake_output(close=True)
            return
        self._write_handshake_output(close=False)
        # Bytes the client sent right behind its request belong to the frame stream.
        early = bytes(ws.reader.buffer) + bytes(self._buf)
        self._buf = bytearray()
        self._handshake_ws = None
        session = hub.open_session(
            self,
            remote=f"{peer[0]}:{peer[1]}" if peer else None,
            ip=peer[0] if peer else None,
            headers=headers,
        )
        self._session = session
        self._nowait = session.receive_nowait
        self._state = _OPEN
        assert self._server is not None
        self._server.add(self)
        await hub.start_session(session, principal)
        if early and self._state != _CLOSED:
            self._receive(early)

    def _use_deflate(self, min_size: int) -> None:
        """permessage-deflate from now on: RSV1 is read, and frames of ``min_size`` bytes and
        more are sent compressed. The methods are swapped on this connection alone, so one
        without compression does no extra work per frame."""
        self._deflate = True
        self._min_size = min_size
        self.__class__ = _deflating(type(self))

    def _write_handshake_output(self, *, close: bool) -> None:
        ws, transport = self._handshake_ws, self.transport
        assert ws is not None and transport is not None
        data = b"".join(ws.data_to_send())
        if data:
            transport.write(data)
        if close:
            self._state = _CLOSED
            transport.close()

    # -- incoming frames ---------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
        try:
            charged = self._charged if self._fragments is not None else 0
            frames, used = parse_frames(data, self._max_size, charged, self._deflate)
        except ProtocolViolation as exc:
            self._buf = bytearray()
            self._dispatch_frames(exc.frames)
            self._fail(exc.code, exc.reason)
            return
        if used < len(data):
            self._buf = bytearray(data[used:])
        elif self._buf:
            self._buf = bytearray()
        if frames:
            self._dispatch_frames(frames)

    def _dispatch_frames(self, frames: list[tuple[int, bool, bytes]]) -> None:
        for opcode, fin, payload in frames:
            if self._state == _CLOSED:
                return
            try:
                self._frame(opcode, fin, payload)
            except ProtocolViolation as exc:
                self._fail(exc.code, exc.reason)
                return

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> None:
        if self._state == _CLOSING and opcode != OP_CLOSE:
            # After the server's close frame only the client's close matters; what else it
            # sends still costs a token, and past the limit the connection ends without it.
            session = self._session
            if session is None or not session.charge():
                self._discard()
            return
        if opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "expected a continuation frame")
            if fin:
                self._message(opcode, payload)
            else:
                self._fragments = bytearray(payload)
                self._fragment_opcode = opcode
                self._fragment_count = 1
                self._charged = len(payload)
        elif opcode == OP_CONT:
            fragments = self._fragments
            if fragments is None:
                raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
            fragments += payload
            self._charged += len(payload) + FRAGMENT_OVERHEAD
            if self._charged > self._max_size:
                raise ProtocolViolation(CloseCode.MESSAGE_TOO_BIG, "message too big")
            count = self._fragment_count = self._fragment_count + 1
            if count % FRAGMENTS_PER_TOKEN == 0:
                self._charge()  # over the limit the message still completes, unless abusive
                if self._state != _OPEN:
                    return
            if fin:
                self._fragments = None
                data = bytes(fragments)
                if self._fragment_deflated:
                    self._fragment_deflated = False
                    data = inflate(data, self._max_size)
                self._message(self._fragment_opcode, data)
        elif opcode == OP_PING:
            # Queued like any frame: a client that pings but never reads overflows its outbound
            # limit (1013) instead of growing a queue of pongs.
            if self._charge() and not self._queue(frame(payload, OP_PONG)):
                assert self._hub is not None and self._session is not None
                self._hub.overflowed(self._session)
        elif opcode == OP_PONG:
            # The answer to the heartbeat counts even past the limit (else a client at its
            # limit would be terminated for not answering); unsolicited floods still cost.
            self.awaiting_pong = False
            self._charge()
        elif opcode == OP_CLOSE:
            self._peer_closed(payload)
        elif opcode in (_DEFLATED_TEXT, _DEFLATED_BINARY):
            # RSV1 (only ever parsed with permessage-deflate negotiated): a compressed message,
            # inflated once complete, within the size limit.
            if self._fragments is not None:
                raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "expected a continuation frame")
            opcode &= 0x0F
            if fin:
                self._message(opcode, inflate(payload, self._max_size))
            else:
                self._fragments = bytearray(payload)
                self._fragment_opcode = opcode
                self._fragment_count = 1
                self._fragment_deflated = True
                self._charged = len(payload)
        elif opcode & RSV1:
            raise ProtocolViolation(
                CloseCode.PROTOCOL_ERROR, "RSV1 set on a control or continuation frame"
            )
        else:
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode}")

    def _charge(self) -> bool:
        """One token of the rate limit for a control frame or ``FRAGMENTS_PER_TOKEN``
        fragments. ``False`` past the limit (the frame is ignored); when that closed the
        session for persistent abuse, the rest of what the client sends is ignored unread."""
        session = self._session
        if session is None:
            return False
        if session.charge():
            return True
        if self._state != _OPEN:
            self._discard()
        return False

    def _discard(self) -> None:
        """End an abusive connection whose close frame is written or queued: no further frame
        is parsed (bytes that still arrive are dropped as they come, which costs next to
        nothing and lets the close frame reach the client instead of a reset), the rest is
        written, then a half-close; aborted ``CLOSE_TIMEOUT`` later if the client stays."""
        self._state = _CLOSED
        transport = self.transport
        if transport is not None:
            if self._out:
                transport.write(b"".join(self._out))
                self._out.clear()
                self._out_bytes = 0
            if not transport.can_write_eof():
                transport.close()
            elif not self._eof_sent:
                self._eof_sent = True
                transport.write_eof()
        self._arm_close_timer(CLOSE_TIMEOUT)

    def _peer_closed(self, payload: bytes) -> None:
        if len(payload) == 1:
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "close frame too short")
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if code not in VALID_CLOSE_CODES and not 3000 <= code <= 4999:
                raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                payload[2:].decode()
            except UnicodeDecodeError:
                raise ProtocolViolation(CloseCode.INVALID_DATA, "invalid UTF-8") from None
        if self._state == _OPEN:  # echo the close, then the server ends the TCP connection
            self._state = _CLOSING
            self._write_now(frame(payload[:2], OP_CLOSE))
        self._end()

    def _message(self, opcode: int, data: bytes) -> None:
        session = self._session
        if session is None or self._state != _OPEN:
            return
        if opcode == OP_BINARY:
            self._binary(data)
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ProtocolViolation(CloseCode.INVALID_DATA, "invalid UTF-8") from None
        if self._busy is not None:
            backlog = self._backlog
            if backlog is None:
                backlog = self._backlog = deque()
            backlog.append(text)
            if len(backlog) >= MAX_BACKLOG and not self._reading_paused:
                assert self.transport is not None
                self._reading_paused = True
                self.transport.pause_reading()
            return
        self._run(text)

    def _binary(self, data: bytes) -> None:
        """Binary messages are not part of protocol v1: the session answers with an error."""
        assert self._session is not None
        self._session.receive_binary()

    def _run(self, text: str) -> None:
        coro = self._nowait(text)  # the session's synchronous part
        if coro is None:  # answered already (ping, an error): nothing to run
            return
        assert self._hub is not None
        if not self._hub.eager:
            # A backend (redis-py) needs to run inside a task (asyncio.timeout): no eager start.
            task: asyncio.Future[None] = self._loop.create_task(coro)
            self._busy = task
            task.add_done_callback(self._next_message)
            return
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
            self._run(self._backlog.popleft())
        if self._busy is None and self._reading_paused and self.transport is not None:
            self._reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    # -- outgoing bytes ----------------------------------------------------------------------

    def _queue(self, wire: bytes) -> bool:
        size = self._out_bytes + len(wire)
        if size > self._max_bytes or len(self._out) >= self._max_frames:
            return False
        self._out.append(wire)
        self._out_bytes = size
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._server is not None
            self._server.flush_soon(self, self._loop)
        return True

    def _write_now(self, wire: bytes) -> None:
        """Queue a control frame behind what is pending, bypassing the limits, and flush."""
        self._out.append(wire)
        self._out_bytes += len(wire)
        self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out or self._paused or self.transport is None:
            return
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        self._out_bytes = 0
        if self._drain_waiters:
            self._wake_drained()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): send a close frame, then end the TCP stream."""
        logger.debug("failing connection: %d %s", code, reason)
        if self._state == _OPEN:
            self._state = _CLOSING
            self._write_now(close_frame(code, reason))
        self._end()

    def _end(self) -> None:
        """Close the TCP connection once what is queued is written (the server closes first)."""
        self._state = _CLOSED
        self._flush()
        if self.transport is not None:
            self.transport.close()
        self._arm_close_timer(CLOSE_TIMEOUT)

    def _arm_close_timer(self, delay: float) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = self._loop.call_later(delay, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def ping(self) -> None:
        """Heartbeat tick: terminate if the last ping went unanswered, then ping again."""
        if self._state != _OPEN:
            return
        if self.awaiting_pong:
            logger.info("terminating connection: heartbeat not answered")
            self._out.clear()
            self._out_bytes = 0
            self._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            return
        self.awaiting_pong = True
        self._write_now(frame(b"", OP_PING))


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


def _nothing(text: str) -> None:
    """``_nowait`` until a session is open: nothing to run."""
