"""The native transport under its documented name: ``uvicorn --ws wshub.native:HubProtocol``.

The code is the :mod:`wshub.transport` package: the frame parser in
:mod:`wshub.transport.frames`, the connection (:class:`HubProtocol`) in
:mod:`wshub.transport.protocol`, what a hub's connections share in
:mod:`wshub.transport.server`. Read its limits here; change them there.
"""

from __future__ import annotations

from .transport.frames import FRAGMENT_OVERHEAD, OP_CONT, ProtocolViolation, parse_frames
from .transport.protocol import (
    CLOSE_TIMEOUT,
    FRAGMENTS_PER_TOKEN,
    MAX_BACKLOG,
    SLOW_CLOSE_TIMEOUT,
    HubProtocol,
    protocol_for,
    register,
)
from .transport.server import NativeServer

__all__ = [
    "CLOSE_TIMEOUT",
    "FRAGMENTS_PER_TOKEN",
    "FRAGMENT_OVERHEAD",
    "MAX_BACKLOG",
    "OP_CONT",
    "SLOW_CLOSE_TIMEOUT",
    "HubProtocol",
    "NativeServer",
    "ProtocolViolation",
    "parse_frames",
    "protocol_for",
    "register",
]
