"""Plain value types shared by every layer of wshub. Standard library only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NewType, TypeAlias

__all__ = [
    "JSON",
    "ConnectionId",
    "JSONObject",
    "Principal",
    "StoredMessage",
    "StreamPosition",
    "UserId",
]

#: Any JSON value as decoded by orjson.
JSON: TypeAlias = Any
#: A JSON object.
JSONObject: TypeAlias = dict[str, Any]

UserId = NewType("UserId", str)
ConnectionId = NewType("ConnectionId", str)


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a stream stands: the offset of its latest message and the stream's epoch.

    ``offset`` is 0 for an empty stream. ``epoch`` changes whenever the store loses the stream,
    so a client position from another epoch cannot be resumed exactly.
    """

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message of a stream as the store keeps it: its offset and its encoded body."""

    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a connection is, once authenticated.

    ``channels`` lists the private channels the credential grants; ``claims`` keeps the full
    verified claim set for application hooks.
    """

    user_id: UserId
    channels: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)
    #: When the credential stops being valid (unix seconds; ``None``: never): the connection
    #: is told ``token_expiring`` ahead of it and closed with 4001 at it, unless refreshed.
    expires_at: float | None = None
    #: When it was issued (unix seconds; ``None``: unknown), for revocation.
    issued_at: float | None = None
