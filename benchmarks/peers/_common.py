"""What the Python peers share: the port argument, the wshub-shaped JSON messages, a quiet exit.

Each peer is a small server speaking the same messages as wshub (shared/PROTOCOL.md): `welcome` on
connect, `subscribe` -> `subscribed`, `publish` -> `message` to every subscriber of the channel
plus `published` to the publisher, `ping` -> `pong`, `chat` -> `chat` to every connection of the
recipient plus `chat_received` to the sender. They ignore authentication, history and rate
limits: they are the yardstick, not a product. A connection's user (for chat) is the `user`
query parameter of its handshake, the benchmark's stand-in for a JWT's `sub`.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

__all__ = [
    "chat_frames",
    "message_frame",
    "pong",
    "port_from_argv",
    "quiet_sigterm",
    "reply",
    "run_uvicorn",
    "user_of",
    "welcome",
]

_ids = itertools.count(1)
_messages = itertools.count(1)


def port_from_argv() -> int:
    """Port from argv[1], else $PORT, else 8000."""
    if len(sys.argv) > 1:
        return int(sys.argv[1])
    return int(os.environ.get("PORT", "8000"))


def quiet_sigterm() -> None:
    """Exit at once and silently on SIGTERM (the runner stops servers that way), and mute the
    per-write warnings transports log when the load generator hangs up mid-stream."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    for name in ("asyncio", "aiofastnet", "picows", "engineio", "socketio"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _ms() -> int:
    return int(time.time() * 1000)


def user_of(target: str | bytes) -> str | None:
    """The `user` query parameter of a request target (`/ws?user=u3`) or of a query string."""
    text = target.decode() if isinstance(target, bytes) else target
    query = urlsplit(text).query if "?" in text or "/" in text else text
    users = parse_qs(query).get("user")
    return users[0] if users else None


def welcome(user: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "type": "welcome",
            "payload": {
                "connectionId": f"c{next(_ids)}",
                "userId": user,
                "heartbeatInterval": 30000,
                "serverTime": _ms(),
                "protocol": 1,
            },
        }
    )


def reply(type_: str, payload: dict[str, Any], msg_id: Any = None) -> bytes:
    env: dict[str, Any] = {"type": type_, "payload": payload}
    if msg_id is not None:
        env["id"] = msg_id
    return orjson.dumps(env)


def message_frame(channel: str, data: Any, offset: int) -> bytes:
    """The `message` every subscriber gets, encoded once per publication."""
    return orjson.dumps(
        {
            "type": "message",
            "payload": {
                "channel": channel,
                "data": data,
                "offset": offset,
                "timestamp": _ms(),
                "from": None,
            },
        }
    )


def chat_frames(
    sender: str, payload: dict[str, Any], delivered: bool, msg_id: Any = None
) -> tuple[bytes, bytes]:
    """`chat` for the recipient's connections and `chat_received` for the sender."""
    message_id, timestamp = f"m{next(_messages)}", _ms()
    to = payload.get("recipientId")
    body = {"messageId": message_id, "from": sender, "message": payload.get("message")}
    out = orjson.dumps({"type": "chat", "payload": {**body, "timestamp": timestamp}})
    ack = {"messageId": message_id, "recipientId": to, "delivered": delivered, "queued": False}
    return out, reply("chat_received", {**ack, "timestamp": timestamp}, msg_id)


def pong() -> bytes:
    return orjson.dumps({"type": "pong", "payload": {"timestamp": _ms()}})


def run_uvicorn(app: Any) -> None:
    """Serve an ASGI peer as every uvicorn peer is served (PERF-NOTES): 127.0.0.1, the port from
    argv, uvloop, httptools, ws=websockets-sansio (what ws=auto picks in uvicorn 0.54), quiet,
    a deep accept backlog; SIGTERM exits at once."""
    import uvicorn

    quiet_sigterm()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port_from_argv(),
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
