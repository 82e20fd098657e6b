"""wshub: a real-time messaging hub for Python web apps.

Mount it into the app you already have::

    from fastapi import FastAPI
    from wshub import WebSocketApp, create_hub

    hub = create_hub()                                   # WS_* environment / .env
    app = FastAPI(lifespan=hub.lifespan)
    app.add_websocket_route("/ws", WebSocketApp(hub))

then call ``await hub.send_to_user(...)``, ``hub.publish(...)``, ``hub.notify_user(...)`` from
your routes, and register your own message types with ``@hub.on("type")``.

``pip install wshub`` is all this needs: importing ``wshub`` never imports uvicorn, FastAPI, redis
or the CLI's libraries. ``wshub[server]`` adds ``wshub serve``, ``wshub[redis]`` the Redis store and
broker, ``wshub[cli]`` ``wshub client`` and ``wshub smoke`` (``wshub[all]``: all of them).
"""

from .asgi import HubMiddleware, WebSocketApp
from .config import Settings
from .core.hub import Delivery, Hub
from .core.session import Context, Session
from .errors import (
    AuthFailed,
    Forbidden,
    InvalidMessage,
    NotAuthenticated,
    NotFound,
    ProtocolError,
    WshubError,
)
from .factory import create_hub
from .types import Principal, StreamPosition, UserId

__all__ = [
    "AuthFailed",
    "Context",
    "Delivery",
    "Forbidden",
    "Hub",
    "HubMiddleware",
    "InvalidMessage",
    "NotAuthenticated",
    "NotFound",
    "Principal",
    "ProtocolError",
    "Session",
    "Settings",
    "StreamPosition",
    "UserId",
    "WebSocketApp",
    "WshubError",
    "create_hub",
]

__version__ = "0.1.0"
