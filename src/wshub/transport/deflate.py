"""permessage-deflate (RFC 7692) for the native transport, compressed once per publication.

The server only ever agrees to ``server_no_context_takeover`` and ``client_no_context_takeover``:

- each message the server sends is compressed on its own, with a fresh compressor, so the same
  compressed frame (:meth:`wshub.protocol.Frame.wire_deflate`) is valid for every subscriber
  that negotiated the extension: a publication is compressed once, not once per socket, and a
  connection keeps no compressor (no 32 KiB window and 64+ KiB of zlib state per socket);
- each message a client sends is inflated on its own (:func:`inflate`) with a bound: at most
  ``WS_MAX_MESSAGE_SIZE`` bytes come out of it, whatever its compressed size (a decompression
  bomb ends in 1009 after that much, not after gigabytes).

Offers the server cannot honour with one shared compressed form are declined: one that limits
the server's window (``server_max_window_bits`` under 15) or carries an unknown or malformed
parameter. The next offer is then tried; with none left the connection is not compressed.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from websockets.exceptions import InvalidHeader
from websockets.headers import parse_extension

from ..framing import DEFLATE_TAIL
from ..protocol import CloseCode
from .frames import ProtocolViolation

__all__ = ["EXTENSION", "RESPONSE", "inflate", "negotiate"]

EXTENSION = "permessage-deflate"
#: What the server answers to an offer it accepts.
RESPONSE = f"{EXTENSION}; server_no_context_takeover; client_no_context_takeover"
#: Values a ``*_max_window_bits`` parameter may have (RFC 7692 7.1.2: "8" to "15").
_WINDOW_BITS = frozenset(str(n) for n in range(8, 16))
_NO_VALUE = frozenset({"server_no_context_takeover", "client_no_context_takeover"})


def negotiate(offers: list[str]) -> str | None:
    """The ``Sec-WebSocket-Extensions`` response for the request's header values ``offers``, or
    ``None`` when no permessage-deflate offer is acceptable (or the header is malformed)."""
    try:
        extensions = [ext for header in offers for ext in parse_extension(header)]
    except InvalidHeader:
        return None
    for name, params in extensions:
        if name.lower() != EXTENSION:
            continue
        response = _accept(params)
        if response is not None:
            return response
    return None


def _accept(params: Sequence[tuple[str, str | None]]) -> str | None:
    """The response accepting one offer, or ``None`` to decline it (RFC 7692 7.1)."""
    seen: set[str] = set()
    server_window = None
    for key, value in params:
        key = key.lower()
        if key in seen:
            return None  # a parameter given twice: decline (RFC 7692 7)
        seen.add(key)
        if key in _NO_VALUE:
            if value is not None:
                return None
        elif key == "server_max_window_bits":
            if value not in _WINDOW_BITS:
                return None
            server_window = value
        elif key == "client_max_window_bits":
            # A hint that the client can use a smaller window; inflating with the largest one
            # (wbits -15) reads any, so the response does not need to mention it.
            if value is not None and value not in _WINDOW_BITS:
                return None
        else:
            return None  # an unknown parameter
    if server_window is None:
        return RESPONSE
    if server_window != "15":
        # One compressed form serves every subscriber; it is made with the 32 KiB window.
        return None
    return f"{RESPONSE}; server_max_window_bits=15"


def inflate(payload: bytes, max_size: int) -> bytes:
    """The message a client compressed into ``payload`` (RFC 7692 7.2.2), inflated with a fresh
    decompressor (client_no_context_takeover). Never more than ``max_size + 1`` bytes are
    produced: past ``max_size`` it raises :class:`ProtocolViolation` with 1009 (the
    CVE-2018-1000518 class of decompression bombs), and 1007 for data that is not deflate."""
    decompressor = zlib.decompressobj(-15)
    try:
        data = decompressor.decompress(payload + DEFLATE_TAIL, max_size + 1)
    except zlib.error:
        raise ProtocolViolation(CloseCode.INVALID_DATA, "invalid compressed data") from None
    if len(data) > max_size:
        raise ProtocolViolation(CloseCode.MESSAGE_TOO_BIG, "message too big")
    return data
