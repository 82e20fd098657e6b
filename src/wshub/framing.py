"""RFC 6455 frame encoding for frames a server sends (never masked). Standard library only.

A server-to-client frame does not depend on the receiver, so a frame built once can be written
to every subscriber's transport as is. With permessage-deflate negotiated without context
takeover (RFC 7692, ``server_no_context_takeover``), a compressed frame does not depend on the
receiver either: :func:`deflate_frame` builds one that every such subscriber can be sent.
"""

from __future__ import annotations

import struct
import zlib

__all__ = [
    "DEFLATE_TAIL",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "RSV1",
    "close_frame",
    "deflate_frame",
    "frame",
]

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
#: The first header byte's bit that marks a compressed message (permessage-deflate).
RSV1 = 0x40
#: What a sync flush ends with; RFC 7692 7.2.1: removed by the sender, added by the receiver.
DEFLATE_TAIL = b"\x00\x00\xff\xff"
#: zlib's default level; memLevel 5 (uvicorn's choice too) compresses small JSON messages to
#: the same size as the default 8 with a smaller, quicker-to-set-up compressor.
_DEFLATE_LEVEL = -1
_DEFLATE_MEMLEVEL = 5

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


def deflate_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final frame carrying ``payload`` compressed (RSV1 set) with a fresh compressor and
    the full 32 KiB window, as permessage-deflate without context takeover expects. Always
    compressed, even data that does not shrink (a few bytes more: deflate stores it), since
    some clients mishandle an uncompressed message on a compressed connection (the Autobahn
    runner kosoku does); what is too small to gain is left to the caller's minimum size."""
    deflate = zlib.compressobj(_DEFLATE_LEVEL, zlib.DEFLATED, -15, _DEFLATE_MEMLEVEL)
    body = deflate.compress(payload) + deflate.flush(zlib.Z_SYNC_FLUSH)
    body = body[:-4]  # the sync flush's 00 00 ff ff (RFC 7692 7.2.1)
    n = len(body)
    first = 0x80 | RSV1 | opcode
    if n < 126:
        return bytes((first, n)) + body
    if n < 65536:
        return _pack_short(first, 126, n) + body
    return _pack_long(first, 127, n) + body
