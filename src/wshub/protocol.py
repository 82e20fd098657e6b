"""Protocol v1: the envelope, built-in payload models, encoding, error and close codes.

Everything here is pure: no I/O, no event loop. Decoding validates the envelope only; payloads
are validated by the router against the model registered for their type.
"""

from __future__ import annotations

import enum
import time
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from .errors import InvalidMessage
from .framing import deflate_frame as _ws_deflate_frame
from .framing import frame as _ws_frame
from .types import JSON, JSONObject

__all__ = [
    "CHANNEL_PATTERN",
    "MAX_ID_LENGTH",
    "PROTOCOL_VERSION",
    "RESERVED_TYPES",
    "AuthenticatePayload",
    "ChannelName",
    "ChannelPayload",
    "ChatPayload",
    "CloseCode",
    "ErrorCode",
    "Frame",
    "FrameBatch",
    "Incoming",
    "NotificationPayload",
    "PublishPayload",
    "SubscribePayload",
    "decode",
    "describe_validation_error",
    "encode",
    "now_ms",
    "with_offset",
]

PROTOCOL_VERSION = 1
MAX_ID_LENGTH = 64
CHANNEL_PATTERN = r"^[A-Za-z0-9_\-:.@/]{1,128}$"

#: Types the server itself sends; an application may not send them through ``send_to_user``.
RESERVED_TYPES = frozenset(
    {
        "welcome",
        "pong",
        "authenticated",
        "chat_received",
        "subscribed",
        "unsubscribed",
        "message",
        "published",
        "system_message",
        "presence",
        "presence_join",
        "presence_leave",
        "error",
        "token_expiring",
        "close",
    }
)


class ErrorCode(enum.StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    NOT_AUTHENTICATED = "not_authenticated"
    AUTH_FAILED = "auth_failed"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    NOT_FOUND = "not_found"
    INTERNAL_ERROR = "internal_error"


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    TOKEN_EXPIRED = 4001
    DISCONNECTED = 4002


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch, as every ``timestamp`` field carries."""
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------------------
# Frames


class Frame:
    """One encoded server message, shared by every connection it is sent to.

    ``data`` is the UTF-8 JSON text. ``text`` (for ASGI servers) and ``wire`` (a complete RFC 6455
    frame, for transports written to directly) are computed on first use and cached, so a
    publication to a thousand subscribers is encoded once whichever transports they use.
    :meth:`wire_deflate` is the same for subscribers that negotiated permessage-deflate: it is
    compressed once, and only if one of them asks for it.
    """

    __slots__ = ("_text", "_wire", "_wire_deflate", "data")
    _wire_deflate: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._text: str | None = None
        self._wire: bytes | None = None
        # _wire_deflate stays unset until asked for: nothing more per frame without compression

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.data.decode()
        return self._text

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = _ws_frame(self.data)
        return self._wire

    def wire_deflate(self, min_size: int) -> bytes:
        """The frame for a permessage-deflate receiver (negotiated without context takeover):
        compressed on first use and cached, so every such subscriber gets the same bytes;
        :attr:`wire` itself when ``data`` is shorter than ``min_size``."""
        if len(self.data) < min_size:
            return self.wire
        try:
            return self._wire_deflate
        except AttributeError:
            wire = self._wire_deflate = _ws_deflate_frame(self.data)
            return wire

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"Frame({self.data[:60]!r}{'...' if len(self.data) > 60 else ''})"


class FrameBatch:
    """The frames one channel published during one event-loop turn, delivered together.

    ``wire`` joins their RFC 6455 frames once, so each subscriber on a raw transport gets the
    whole turn's traffic for the channel as one ``bytes`` object: one append per subscriber per
    turn instead of one per frame.
    """

    __slots__ = ("_deflate", "_nbytes", "_wire", "frames")
    _deflate: tuple[int, bytes]

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames
        self._wire: bytes | None = None
        self._nbytes = -1

    @property
    def nbytes(self) -> int:
        """The frames' JSON bytes together (what an outbox counts against its limit)."""
        if self._nbytes < 0:
            self._nbytes = sum(len(f.data) for f in self.frames)
        return self._nbytes

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            frames = self.frames
            self._wire = frames[0].wire if len(frames) == 1 else b"".join(f.wire for f in frames)
        return self._wire

    def wire_deflate(self, min_size: int) -> bytes:
        """:attr:`wire` for a permessage-deflate receiver: each frame's
        :meth:`Frame.wire_deflate`, joined once per batch (cached with ``min_size``)."""
        try:
            size, wire = self._deflate
            if size == min_size:
                return wire
        except AttributeError:
            pass
        frames = self.frames
        if len(frames) == 1:
            wire = frames[0].wire_deflate(min_size)
        else:
            wire = b"".join(f.wire_deflate(min_size) for f in frames)
        self._deflate = (min_size, wire)
        return wire


def encode(
    type_: str, payload: JSONObject, *, id: str | None = None, offset: int | None = None
) -> bytes:
    """Encode one envelope. Keys come out in the order ``type``, ``payload``, ``id``, ``offset``."""
    env: dict[str, Any] = {"type": type_, "payload": payload}
    if id is not None:
        env["id"] = id
    if offset is not None:
        env["offset"] = offset
    return orjson.dumps(env)


def with_offset(envelope: bytes, offset: int) -> bytes:
    """Add ``"offset": N`` to an encoded envelope without decoding it again."""
    return b'%s,"offset":%d}' % (envelope[:-1], offset)


# ---------------------------------------------------------------------------------------------
# Decoding


#: A client envelope whose shape is valid, as ``(type, payload, id)``; ``payload`` is not
#: validated yet. (A plain tuple: one is built per client message, and a NamedTuple costs three
#: times as much to create, a frozen dataclass six.)
Incoming = tuple[str, JSONObject, "str | None"]


def decode(raw: str | bytes) -> Incoming:
    """Parse one client text frame into an :data:`Incoming` ``(type, payload, id)``.

    Raises :class:`InvalidMessage` (code ``invalid_json`` or ``invalid_message``). When the
    envelope carries a usable ``id`` the exception has it as ``.id`` so the error can echo it.
    """
    try:
        obj = _loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidMessage("Message is not valid JSON", code=ErrorCode.INVALID_JSON) from None
    if type(obj) is dict:
        type_ = obj.get("type")
        msg_id = obj.get("id")
        payload = obj.get("payload")
        # The valid envelope in one test (this runs for every client message)...
        if (
            type(type_) is str
            and type_
            and (msg_id is None or (type(msg_id) is str and len(msg_id) <= MAX_ID_LENGTH))
        ):
            if payload is None:
                return type_, {}, msg_id
            if type(payload) is dict:
                return type_, payload, msg_id
    raise _invalid(obj)


def _invalid(obj: Any) -> InvalidMessage:
    """...and which rule an invalid one breaks, checked in the order the protocol lists them."""
    if not isinstance(obj, dict):
        return InvalidMessage("Message must be a JSON object")
    msg_id = obj.get("id")
    if msg_id is not None and (not isinstance(msg_id, str) or len(msg_id) > MAX_ID_LENGTH):
        return InvalidMessage(f"id: must be a string of at most {MAX_ID_LENGTH} characters")
    type_ = obj.get("type")
    if not isinstance(type_, str) or not type_:
        return _with_id(InvalidMessage("type: a non-empty string is required"), msg_id)
    return _with_id(InvalidMessage("payload: must be an object"), msg_id)


_loads = orjson.loads


def _with_id(exc: InvalidMessage, msg_id: str | None) -> InvalidMessage:
    exc.id = msg_id  # type: ignore[attr-defined]
    return exc


def describe_validation_error(exc: ValidationError, prefix: str = "payload") -> str:
    """Name the first failing field and why, e.g. ``payload.channel: Field required``."""
    first = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in (prefix, *first["loc"]))
    return f"{loc}: {first['msg']}"


# ---------------------------------------------------------------------------------------------
# Built-in client payloads

ChannelName = Annotated[StrictStr, Field(pattern=CHANNEL_PATTERN)]
#: Offsets are 64-bit signed integers in every store.
MAX_OFFSET = 2**63 - 1
_Offset = Annotated[StrictInt, Field(ge=0, le=MAX_OFFSET)]


class _Payload(BaseModel):
    # Unknown fields are ignored so that newer clients keep working with older servers.
    model_config = ConfigDict(extra="ignore", frozen=True)


class EmptyPayload(_Payload):
    """No fields."""


class AuthenticatePayload(_Payload):
    token: Annotated[StrictStr, Field(min_length=1, max_length=8192)]
    since: _Offset | None = None
    epoch: StrictStr | None = None


class ChatPayload(_Payload):
    recipientId: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    message: Annotated[StrictStr, Field(min_length=1)]


class ChannelPayload(_Payload):
    channel: ChannelName


class SubscribePayload(ChannelPayload):
    since: _Offset | None = None
    epoch: StrictStr | None = None


class PublishPayload(ChannelPayload):
    data: JSON = None


class NotificationPayload(_Payload):
    """What ``notify_user`` and ``POST /api/users/{id}/notify`` take."""

    model_config = ConfigDict(extra="allow", frozen=True)

    title: StrictStr
    message: StrictStr
    type: Literal["info", "warning", "error", "success"] = "info"


# ---------------------------------------------------------------------------------------------
# Server payloads. The hub encodes these with orjson directly (no model on the hot path); the
# models document the wire format (AsyncAPI) and let tests validate what the server sends.


class _ServerPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WelcomePayload(_ServerPayload):
    connectionId: str
    userId: str | None
    heartbeatInterval: int
    serverTime: int
    protocol: Literal[1]
    features: list[str] = []


class PongPayload(_ServerPayload):
    timestamp: int


class AuthenticatedPayload(_ServerPayload):
    userId: str
    connectionId: str
    offset: int
    epoch: str
    recovered: bool | None = None
    refreshed: bool | None = None


class TokenExpiringPayload(_ServerPayload):
    expiresAt: int


class ChatMessagePayload(_ServerPayload):
    messageId: str
    from_: str | None = Field(alias="from")
    message: str
    timestamp: int


class ChatReceivedPayload(_ServerPayload):
    messageId: str
    recipientId: str
    delivered: bool
    queued: bool
    timestamp: int


class SubscribedPayload(_ServerPayload):
    channel: str
    offset: int
    epoch: str
    recovered: bool | None = None


class UnsubscribedPayload(_ServerPayload):
    channel: str
    server: bool | None = None
    reason: str | None = None


class MessagePayload(_ServerPayload):
    channel: str
    data: JSON
    offset: int
    timestamp: int
    from_: str | None = Field(alias="from")


class PublishedPayload(_ServerPayload):
    channel: str
    offset: int


class SystemMessagePayload(_ServerPayload):
    message: str
    timestamp: int


class PresencePayload(_ServerPayload):
    channel: str
    users: list[str]


class PresenceEventPayload(_ServerPayload):
    channel: str
    userId: str


class ErrorPayload(_ServerPayload):
    code: ErrorCode
    message: str


#: Every type the server sends, with its payload model and when it is sent.
SERVER_MESSAGES: dict[str, tuple[type[BaseModel], str]] = {
    "welcome": (WelcomePayload, "First message on every connection."),
    "pong": (PongPayload, "Reply to ping."),
    "authenticated": (AuthenticatedPayload, "Reply to a valid authenticate (or handshake token)."),
    "chat": (ChatMessagePayload, "A direct message to this user (user stream, has offset)."),
    "chat_received": (ChatReceivedPayload, "Reply to chat."),
    "subscribed": (SubscribedPayload, "Reply to subscribe."),
    "unsubscribed": (UnsubscribedPayload, "Reply to unsubscribe."),
    "message": (MessagePayload, "A publication on a subscribed channel."),
    "published": (PublishedPayload, "Reply to publish."),
    "notification": (NotificationPayload, "Pushed to a user by the server (user stream)."),
    "system_message": (SystemMessagePayload, "Broadcast to every connection."),
    "presence": (PresencePayload, "Reply to presence."),
    "presence_join": (PresenceEventPayload, "A user's first connection joined a channel."),
    "presence_leave": (PresenceEventPayload, "A user's last connection left a channel."),
    "error": (ErrorPayload, "A message could not be processed; carries the request's id."),
    "token_expiring": (
        TokenExpiringPayload,
        "The connection's token expires at expiresAt: send authenticate with a fresh one.",
    ),
}
