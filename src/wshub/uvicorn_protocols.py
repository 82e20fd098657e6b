"""uvicorn's HTTP and ``websockets-sansio`` protocols with the holes ``tests/security`` found
closed. ``wshub serve`` runs them (the WebSocket one for ``WS_TRANSPORT=asgi`` and for every
non-hub path under the native transport):

- a request whose head never completes (slowloris) held its connection forever: uvicorn arms
  no timer before the head is complete; now it gets ``timeout_keep_alive`` seconds too;

- a handshake the sans-I/O layer refuses (too many headers, a header line over 8 KiB) got no
  answer and stayed open: now the prepared error response is written and the connection closed
  (CVE-2024-37890-style header floods);
- a fragmented message kept one list entry per fragment with no count limit, so floods of empty
  continuation frames grew memory without bound: now fragments are capped (CVE-2026-48779-style
  fragment floods), closing with 1009 like the native transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame

__all__ = ["MAX_FRAGMENTS", "GuardedHttpProtocol", "SafeWebSocketsProtocol"]

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
    """uvicorn's httptools protocol, with a deadline for each request head."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()
