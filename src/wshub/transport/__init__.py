"""wshub's native WebSocket transport: a uvicorn WebSocket protocol with its own frame parser.

- :mod:`~wshub.transport.frames`: the frame parser (pure functions);
- :mod:`~wshub.transport.protocol`: :class:`HubProtocol`, one connection;
- :mod:`~wshub.transport.server`: :class:`NativeServer`, what a hub's connections share (one
  flush per loop turn, the heartbeat).

``wshub.native`` re-exports it (``uvicorn --ws wshub.native:HubProtocol``).
"""

from __future__ import annotations

from .frames import FRAGMENT_OVERHEAD, ProtocolViolation, parse_frames
from .protocol import HubProtocol, protocol_for, register
from .server import NativeServer

__all__ = [
    "FRAGMENT_OVERHEAD",
    "HubProtocol",
    "NativeServer",
    "ProtocolViolation",
    "parse_frames",
    "protocol_for",
    "register",
]
