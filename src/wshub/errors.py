"""The wshub exception tree.

::

    WshubError
     ├── ProtocolError            a client message the hub answers with an ``error`` frame
     │    ├── InvalidMessage      code ``invalid_message`` / ``invalid_json``
     │    │    └── MessageTooLarge  also a ValueError: more than a connection can carry
     │    ├── UnknownType         code ``unknown_type``
     │    ├── NotAuthenticated    code ``not_authenticated``
     │    ├── AuthFailed          code ``auth_failed``
     │    ├── Forbidden           code ``forbidden``
     │    ├── NotFound            code ``not_found``
     │    └── RateLimited         code ``rate_limited``
     ├── ConfigError              settings that cannot work, found at start-up
     └── BackendUnavailable       a store or broker cannot be reached right now
          └── HubNotStarted       the hub was used before start (no lifespan, no ``async with``)

A handler may raise any :class:`ProtocolError` to answer the client; anything else raised by a
handler is logged with its traceback and the client gets ``internal_error`` without details.
Standard library only.
"""

from __future__ import annotations

__all__ = [
    "AuthFailed",
    "BackendUnavailable",
    "ConfigError",
    "Forbidden",
    "HubNotStarted",
    "InvalidMessage",
    "MessageTooLarge",
    "NotAuthenticated",
    "NotFound",
    "ProtocolError",
    "RateLimited",
    "UnknownType",
    "WshubError",
]


class WshubError(Exception):
    """Base of every exception wshub raises on purpose."""


class ProtocolError(WshubError):
    """Answered to the client as ``{"type": "error", "payload": {"code", "message"}}``."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidMessage(ProtocolError):
    code = "invalid_message"


class MessageTooLarge(InvalidMessage, ValueError):
    """A message larger than any connection can be sent (``WS_OUTBOX_MAX_BYTES``): refused
    before it is stored (HTTP 413), so it can never block a user's stream."""


class UnknownType(ProtocolError):
    code = "unknown_type"

    def __init__(self, type_: str) -> None:
        super().__init__(f"Unknown message type: {type_}")


class NotAuthenticated(ProtocolError):
    code = "not_authenticated"


class AuthFailed(ProtocolError):
    code = "auth_failed"


class Forbidden(ProtocolError):
    code = "forbidden"


class NotFound(ProtocolError):
    code = "not_found"


class RateLimited(ProtocolError):
    code = "rate_limited"


class ConfigError(WshubError):
    """Settings that cannot work; raised at start-up with a message naming the setting."""


class BackendUnavailable(WshubError):
    """A store or broker is unreachable; the HTTP API answers 503 with this message."""


class HubNotStarted(BackendUnavailable):
    """The hub was used before it was started: an app that mounts it must start it with its own
    start-up (``FastAPI(lifespan=hub.lifespan)``, ``Starlette(lifespan=hub.lifespan)``, or
    ``async with hub:`` inside an existing lifespan)."""

    def __init__(self) -> None:
        super().__init__(NOT_STARTED)


NOT_STARTED = (
    "hub not started: pass lifespan=hub.lifespan to FastAPI/Starlette, or use `async with hub` "
    "in your own lifespan"
)
