"""uvicorn's HTTP and ``websockets-sansio`` protocols with the holes ``tests/security`` found
closed. ``wshub serve`` runs them (the WebSocket one for ``WS_TRANSPORT=asgi`` and for every
non-hub path under the native transport):

- a request whose head never completes (slowloris) held its connection forever: uvicorn arms
  no timer before the head is complete; now it gets ``timeout_keep_alive`` seconds too;
- so did a request whose body never completes (a ``Content-Length: 100000`` and one byte, or a
  body trickling in after the app had answered, each byte putting uvicorn's keep-alive timer
  off again): now the whole request must have arrived within ``WS_REQUEST_TIMEOUT`` seconds of
  its head, or it is answered 408 (when the app has not answered yet) and the connection closed;

- a handshake the sans-I/O layer refuses (too many headers, a header line over 8 KiB) got no
  answer and stayed open: now the prepared error response is written and the connection closed
  (CVE-2024-37890-style header floods);
- a fragmented message kept one list entry per fragment with no limit but the size, so floods of
  empty continuation frames grew memory without bound: now each continuation frame costs
  ``FRAGMENT_OVERHEAD`` bytes against the size limit too (1009, CVE-2026-48779-style fragment
  floods), like the native transport;
- pings were answered and pongs taken without limit (a ping flood held the server at 100% CPU,
  and pongs queued without bound for a client that does not read): wshub's ``WebSocketApp``
  attaches its session through the ``wshub.frames`` scope extension, and then every control
  frame costs a token of the connection's rate limit (``Session.charge``: past it a ping is not
  answered, persistent abuse closes with 1008), and a pong that would take the transport's
  buffer past ``WS_OUTBOX_MAX_BYTES`` closes the connection as a slow consumer (1013);
- a close sent while the client was not reading waited for it to drain (forever, for a client
  that never reads): now it goes right behind what the transport holds, followed by a
  half-close, and the connection is aborted ``SLOW_CLOSE_TIMEOUT`` seconds later.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "FRAGMENT_OVERHEAD",
    "FRAMES_EXTENSION",
    "GuardedHttpProtocol",
    "SafeWebSocketsProtocol",
]

#: Seconds for a request body when the app served is not a wshub app (``WS_REQUEST_TIMEOUT``).
DEFAULT_REQUEST_TIMEOUT = 10.0
#: The same accounting as the native transport's (see wshub.native).
FRAGMENT_OVERHEAD = 64
FRAGMENTS_PER_TOKEN = 256
SLOW_CLOSE_TIMEOUT = 30.0
#: The ASGI scope extension through which ``WebSocketApp`` attaches its session's limits:
#: ``scope["extensions"][FRAMES_EXTENSION]["attach"](charge, max_pending, overflow)``.
FRAMES_EXTENSION = "wshub.frames"


class _GuardedServerProtocol(ServerProtocol):
    """websockets' sans-I/O server protocol that asks ``guard`` about each frame first, and
    charges ``FRAGMENT_OVERHEAD`` per continuation frame against the message size limit."""

    guard: SafeWebSocketsProtocol | None = None

    def recv_frame(self, frame: Frame) -> None:
        guard = self.guard
        if guard is not None and not guard.frame_allowed(frame):
            return  # a ping over the limit: no pong; a pong: ignored
        super().recv_frame(frame)
        if frame.opcode is Opcode.CONT and self.current_size is not None:
            self.current_size += FRAGMENT_OVERHEAD  # websockets checks the next frame with it


class SafeWebSocketsProtocol(WebSocketsSansIOProtocol):
    _charge: Callable[[], bool] | None = None
    _max_pending = 0
    _overflow: Callable[[], None] | None = None
    _overflowed = False
    _fragment_count = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.__class__ = _GuardedServerProtocol  # adds behaviour only, no state
        self.conn.guard = self  # type: ignore[attr-defined]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and not self.close_sent:
            scope["extensions"][FRAMES_EXTENSION] = {"attach": self._attach}

    def _attach(
        self, charge: Callable[[], bool], max_pending: int, overflow: Callable[[], None]
    ) -> None:
        self._charge = charge
        self._max_pending = max_pending
        self._overflow = overflow

    def frame_allowed(self, frame: Frame) -> bool:
        """Account for one incoming frame before websockets handles it; ``False`` drops it."""
        opcode = frame.opcode
        charge = self._charge
        if opcode is Opcode.CONT:
            self._fragment_count += 1
            if charge is not None and self._fragment_count % FRAGMENTS_PER_TOKEN == 0:
                self._charged(charge)
            return True
        if opcode is not Opcode.PING and opcode is not Opcode.PONG:
            return True
        if charge is None:
            return True
        if not self._charged(charge):
            return False
        if opcode is Opcode.PING and self._overflow is not None:
            if self._overflowed or self.close_sent:
                return False  # closing: no more pongs
            pending = self.transport.get_write_buffer_size() + len(frame.data) + 2
            if pending > self._max_pending:  # the client does not read: no pile of pongs
                self._overflowed = True
                self._overflow()
                return False
        return True

    def _charged(self, charge: Callable[[], bool]) -> bool:
        if charge():
            return True
        if self.close_sent and not self.transport.is_closing():
            # Closed already (abuse, slow consumer...) and still flooding: stop reading.
            self.transport.close()
        return False

    async def send(self, message: ASGISendEvent) -> None:
        if (
            message["type"] == "websocket.close"
            and self.handshake_complete
            and not self.close_sent
            and self.initial_response is None
            and not self.writable.is_set()
            and not self.transport.is_closing()
        ):
            self._close_now(message.get("code", 1000), message.get("reason") or "")
            return
        await super().send(message)

    def _close_now(self, code: int, reason: str) -> None:
        """The close frame for a client that is not reading (uvicorn would wait for it to
        drain): behind what the transport holds, then a half-close; aborted after
        ``SLOW_CLOSE_TIMEOUT`` unless the client reads it all and answers."""
        transport = self.transport
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self.close_timer = self.loop.call_later(SLOW_CLOSE_TIMEOUT, transport.abort)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        conn = self.conn
        if (
            not self.handshake_complete
            and conn.handshake_exc is not None
            and not self.transport.is_closing()
        ):
            # uvicorn ignores a refused request; send the 4xx websockets prepared, then close.
            output = conn.data_to_send()
            self.transport.write(b"".join(output))
            self.transport.close()


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline for each request head
    (``timeout_keep_alive``) and one for its body (``WS_REQUEST_TIMEOUT``, read from the hub at
    ``app.state.hub`` of the app served, else :data:`DEFAULT_REQUEST_TIMEOUT`)."""

    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _request_timeout: float | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            # Disarmed by on_message_complete, at once for a request without a body.
            self._body_timer = self.loop.call_later(self._body_timeout(), self._body_too_slow)

    def on_message_complete(self) -> None:
        self._disarm_body()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _body_timeout(self) -> float:
        if self._request_timeout is None:
            self._request_timeout = _request_timeout(self.app)
        return self._request_timeout

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            # The app waits for the rest of the body: it gets http.disconnect (and whatever it
            # sends is dropped); the client gets the 408.
            detail = f"Request body not received within {self._body_timeout():g} s"
            body = json.dumps({"detail": detail}).encode()
            head = [b"HTTP/1.1 408 Request Timeout\r\n"]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(
                b"content-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % len(body)
            )
            self.transport.write(b"".join(head) + body)
            cycle.response_started = True
            cycle.disconnected = True
            cycle.message_event.set()
        # Else the answer is (being) sent and the rest of the body is not wanted: close.
        self.transport.close()


def _request_timeout(app: Any) -> float:
    """``WS_REQUEST_TIMEOUT`` of the wshub app served (through any middleware wrapping it)."""
    for _ in range(32):
        state = getattr(app, "state", None)
        settings = getattr(getattr(state, "hub", None), "settings", None)
        timeout = getattr(settings, "request_timeout", None)
        if isinstance(timeout, int | float) and timeout > 0:
            return float(timeout)
        app = getattr(app, "app", None)
        if app is None:
            break
    return DEFAULT_REQUEST_TIMEOUT
