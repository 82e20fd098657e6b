"""RFC 6455 frame encoding for frames a server sends (never masked). Standard library only.

A server-to-client frame does not depend on the receiver, so a frame built once can be written
to every subscriber's transport as is.
"""

from __future__ import annotations

import struct

__all__ = ["OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG", "OP_TEXT", "close_frame", "frame"]

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


#: The two header bytes of every final text frame shorter than 126 bytes (the common case).
_TEXT_HEADERS = tuple(bytes((0x80 | OP_TEXT, n)) for n in range(126))


def frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """Return one final, unmasked frame carrying ``payload``."""
    n = len(payload)
    if n < 126 and opcode == OP_TEXT:
        return _TEXT_HEADERS[n] + payload
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _pack_short(first, 126, n) + payload
    return _pack_long(first, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """Return a close frame with ``code`` and a reason cut to fit the 125-byte control limit."""
    body = struct.pack("!H", code) + reason.encode()[:123]
    return frame(body, OP_CLOSE)
