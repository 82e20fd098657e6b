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
- a fragmented message kept one list entry per fragment with no count limit, so floods of empty
  continuation frames grew memory without bound: now fragments are capped (CVE-2026-48779-style
  fragment floods), closing with 1009 like the native transport.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "MAX_FRAGMENTS",
    "GuardedHttpProtocol",
    "SafeWebSocketsProtocol",
]

#: Seconds for a request body when the app served is not a wshub app (``WS_REQUEST_TIMEOUT``).
DEFAULT_REQUEST_TIMEOUT = 10.0
#: The same cap as the native transport's (wshub.native.MAX_FRAGMENTS).
MAX_FRAGMENTS = 1024


class SafeWebSocketsProtocol(WebSocketsSansIOProtocol):
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

    def handle_cont(self, event: Frame) -> None:
        if len(self.frames) >= MAX_FRAGMENTS:
            self.frames = []
            self.conn.fail(1009, "too many fragments")
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()
            return
        super().handle_cont(event)


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
