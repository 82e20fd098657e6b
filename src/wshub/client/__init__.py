"""The Python client SDK (asyncio) and the command-line tools built on it.

::

    from wshub.client import Client

    async with Client("ws://localhost:5000/ws", token=token) as client:
        client.on("chat", lambda env: print(env.payload["from"], env.payload["message"]))
        async for msg in await client.subscribe("news"):
            print(msg.data)

See docs/client.md.
"""

from ..types import StreamPosition
from .backoff import ReconnectPolicy
from .client import Client, TokenProvider
from .errors import (
    AuthenticationError,
    ClientClosedError,
    ClientError,
    ConnectionLostError,
    ForbiddenError,
    InternalServerError,
    InvalidMessageError,
    NotAuthenticatedError,
    NotFoundError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    UnknownTypeError,
)
from .models import ChannelMessage, ConnectionState, Envelope, Gap, StateChange
from .subscription import MessageStream, Subscription

__all__ = [
    "AuthenticationError",
    "ChannelMessage",
    "Client",
    "ClientClosedError",
    "ClientError",
    "ConnectionLostError",
    "ConnectionState",
    "Envelope",
    "ForbiddenError",
    "Gap",
    "InternalServerError",
    "InvalidMessageError",
    "MessageStream",
    "NotAuthenticatedError",
    "NotFoundError",
    "RateLimitedError",
    "ReconnectPolicy",
    "RequestTimeoutError",
    "ServerError",
    "StateChange",
    "StreamPosition",
    "Subscription",
    "TokenProvider",
    "UnknownTypeError",
]
