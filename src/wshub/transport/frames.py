"""RFC 6455 frames from a client: the native transport's one frame parser, for a server
without extensions or with permessage-deflate (RFC 7692: RSV1 marks a compressed message).
Standard library and ``websockets``' C masking helper only; no I/O, no state.

:func:`parse_frames` parses every complete frame of a read; :func:`small_text` recognises the
common case (one whole small text frame, nothing else) so that the protocol can skip the
general path for it.
"""

from __future__ import annotations

try:  # the C helper that ships with websockets; the pure-Python one otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

from ..framing import OP_CLOSE
from ..protocol import CloseCode

__all__ = [
    "FRAGMENT_OVERHEAD",
    "OP_CONT",
    "VALID_CLOSE_CODES",
    "ProtocolViolation",
    "parse_frames",
    "small_text",
]

OP_CONT = 0x0
#: Bytes each continuation frame costs against ``WS_MAX_MESSAGE_SIZE`` on top of its payload:
#: a frame header to parse is work even when it carries nothing, so a flood of empty or 1-byte
#: fragments reaches the size limit (1009) after ``max_size / 64`` frames (1,024 at 64 KiB),
#: while a large message in many fragments within the limit passes.
FRAGMENT_OVERHEAD = 64

#: Close codes a peer may send (RFC 6455 7.4 and the IANA registry).
VALID_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)


class ProtocolViolation(Exception):
    """A frame that fails the connection: carries the close code to send, and the frames
    parsed before it (which are still handled)."""

    def __init__(
        self, code: int, reason: str, frames: list[tuple[int, bool, bytes]] | None = None
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.frames = frames or []


def small_text(data: bytes, max_size: int) -> bytes | None:
    """The unmasked payload when ``data`` is exactly one whole text frame, masked, final, with
    a 7-bit length within ``max_size``; ``None`` for anything else (use :func:`parse_frames`)."""
    n = len(data) - 6
    if 0 < n < 126 and data[0] == 0x81 and data[1] == 0x80 | n and n <= max_size:
        return apply_mask(data[6:], data[2:6])
    return None


def parse_frames(
    data: bytes, max_size: int, charged: int = 0, deflate: bool = False
) -> tuple[list[tuple[int, bool, bytes]], int]:
    """Parse the complete client frames at the start of ``data``.

    Returns ``(frames, used)``: each frame as ``(opcode, fin, unmasked payload)``, and how many
    bytes they took; the rest is an incomplete frame to keep for later. A frame's declared length
    is checked against ``max_size`` from its header alone, before its payload is waited for; a
    continuation frame adds ``charged`` (what the message in progress has cost so far: its bytes
    plus :data:`FRAGMENT_OVERHEAD` per continuation frame) and its own overhead. Raises
    :class:`ProtocolViolation` for a frame that must fail the connection, with the frames parsed
    before it in ``args[1]``.

    With ``deflate`` (permessage-deflate negotiated) RSV1 may be set: it stays in the opcode
    returned (``RSV1 | OP_TEXT``...; a frame with it set is compressed); on a control or
    continuation frame it is a protocol error (RFC 7692 6), which the caller raises, finding
    an opcode it does not know (no extra test per frame here). The size limit applies to the
    compressed bytes here; inflating bounds the rest (``deflate.inflate``).
    """
    frames: list[tuple[int, bool, bytes]] = []
    pos = 0
    end = len(data)
    pending = charged
    reserved, opbits = (0x30, 0x4F) if deflate else (0x70, 0x0F)
    while end - pos >= 2:
        b0 = data[pos]
        b1 = data[pos + 1]
        opcode = b0 & opbits
        if b0 & reserved:
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "reserved bits set", frames)
        if not b1 & 0x80:
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "client frame not masked", frames)
        length = b1 & 0x7F
        head = pos + 2
        if length == 126:
            if end - head < 2:
                break
            length = int.from_bytes(data[head : head + 2], "big")
            head += 2
        elif length == 127:
            if end - head < 8:
                break
            length = int.from_bytes(data[head : head + 8], "big")
            head += 8
        if opcode & 0x08:
            if length > 125 or not b0 & 0x80:
                raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "bad control frame", frames)
        elif opcode == OP_CONT:
            if pending + length + FRAGMENT_OVERHEAD > max_size:
                raise ProtocolViolation(CloseCode.MESSAGE_TOO_BIG, "message too big", frames)
        elif length > max_size:
            raise ProtocolViolation(CloseCode.MESSAGE_TOO_BIG, "message too big", frames)
        start = head + 4
        stop = start + length
        if stop > end:
            break
        payload = apply_mask(data[start:stop], data[head:start]) if length else b""
        frames.append((opcode, bool(b0 & 0x80), payload))
        if opcode == OP_CONT:
            pending += length + FRAGMENT_OVERHEAD
        elif not opcode & 0x08:  # the first frame of a message (compressed or not)
            pending = length
        pos = stop
        if opcode == OP_CLOSE:
            break  # nothing after a close frame is read
    return frames, pos
