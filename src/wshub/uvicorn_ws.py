"""uvicorn's ``websockets-sansio`` WebSocket protocol with two holes closed.

wshub runs it for the ASGI transport (``WS_TRANSPORT=asgi``) and hands it every non-hub path
under the native transport. Found by ``tests/security``:

- a handshake the sans-I/O layer refuses (too many headers, a header line over 8 KiB) got no
  answer and stayed open: now the prepared error response is written and the connection closed
  (CVE-2024-37890-style header floods);
- a fragmented message kept one list entry per fragment with no count limit, so floods of empty
  continuation frames grew memory without bound: now fragments are capped (CVE-2026-48779-style
  fragment floods), closing with 1009 like the native transport.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame

__all__ = ["MAX_FRAGMENTS", "SafeWebSocketsProtocol"]

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
