"""The exceptions the client SDK raises.

::

    ClientError                      (a wshub.errors.WshubError)
     ├── ServerError                 an ``error`` reply; ``.code``, ``.message``, ``.id``
     │    ├── InvalidMessageError    ``invalid_message``, ``invalid_json``
     │    ├── UnknownTypeError       ``unknown_type``
     │    ├── NotAuthenticatedError  ``not_authenticated``
     │    ├── AuthenticationError    ``auth_failed``; also a handshake refused with HTTP 401
     │    ├── ForbiddenError         ``forbidden``; also a handshake refused with HTTP 403
     │    ├── NotFoundError          ``not_found``
     │    ├── RateLimitedError       ``rate_limited``
     │    └── InternalServerError    ``internal_error`` and codes this SDK does not know
     ├── ConnectionLostError         the connection dropped while a request awaited its reply
     ├── ClientClosedError           the client is closed (by ``close()``, or it gave up)
     └── RequestTimeoutError         no reply in time (also a :class:`TimeoutError`)

A request that fails with :class:`ConnectionLostError` may or may not have reached the server:
a ``publish`` or ``chat`` interrupted that way is not retried automatically.
"""

from __future__ import annotations

from ..errors import WshubError
from ..types import JSONObject

__all__ = [
    "AuthenticationError",
    "ClientClosedError",
    "ClientError",
    "ConnectionLostError",
    "ForbiddenError",
    "InternalServerError",
    "InvalidMessageError",
    "NotAuthenticatedError",
    "NotFoundError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ServerError",
    "UnknownTypeError",
    "server_error",
]


class ClientError(WshubError):
    """Base of every exception the client SDK raises."""


class ServerError(ClientError):
    """The server answered a request with ``{"type": "error", "payload": {code, message}}``."""

    def __init__(self, code: str, message: str, *, id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.id = id


class InvalidMessageError(ServerError):
    """``invalid_message`` or ``invalid_json``: ``message`` names the field at fault."""


class UnknownTypeError(ServerError):
    """``unknown_type``: the server has no handler for the message type."""


class NotAuthenticatedError(ServerError):
    """``not_authenticated``: the operation needs an authenticated connection."""


class AuthenticationError(ServerError):
    """``auth_failed``: the token was refused (at ``authenticate`` or at the handshake)."""


class ForbiddenError(ServerError):
    """``forbidden``: authenticated, but not allowed (private channel, publish policy, limits)."""


class NotFoundError(ServerError):
    """``not_found``."""


class RateLimitedError(ServerError):
    """``rate_limited``: the connection sends faster than ``WS_RATE_LIMIT`` allows."""


class InternalServerError(ServerError):
    """``internal_error``, or an error code this version of the SDK does not know."""


class ConnectionLostError(ClientError):
    """The connection dropped before the reply arrived. The request may have been handled."""


class ClientClosedError(ClientError):
    """The client is closed: :meth:`Client.close` was called, the server closed with a code that
    forbids reconnecting, or reconnecting gave up. ``code``/``reason`` are the last close's."""

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class RequestTimeoutError(ClientError, TimeoutError):
    """No reply within the request timeout."""


_BY_CODE: dict[str, type[ServerError]] = {
    "invalid_message": InvalidMessageError,
    "invalid_json": InvalidMessageError,
    "unknown_type": UnknownTypeError,
    "not_authenticated": NotAuthenticatedError,
    "auth_failed": AuthenticationError,
    "forbidden": ForbiddenError,
    "not_found": NotFoundError,
    "rate_limited": RateLimitedError,
    "internal_error": InternalServerError,
}


def server_error(payload: JSONObject, *, id: str | None = None) -> ServerError:
    """The typed exception for an ``error`` payload (unknown codes: ``InternalServerError``)."""
    code = payload.get("code")
    message = payload.get("message")
    code = code if isinstance(code, str) else "internal_error"
    message = message if isinstance(message, str) else ""
    return _BY_CODE.get(code, InternalServerError)(code, message, id=id)
