"""Peer: python-socketio (ASGI) under uvicorn; the same messages as Socket.IO events.

Events: `welcome` on connect, `subscribe` -> `subscribed` (joins a room), `publish` ->
`message` to the room + `published` to the sender, `ping` -> `pong`, `chat` -> `chat` to the
recipient's room (`user:<id>`, joined on connect by a connection whose handshake has `?user=`)
+ `chat_received` to the sender. Load it with
`loadgen --sio` (engine.io v4 over the WebSocket transport, no long-polling).

    python socketio_server.py PORT
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
import socketio
from _common import chat_frames, run_uvicorn, user_of

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*", transports=["websocket"])
app = socketio.ASGIApp(sio, socketio_path="socket.io")
offsets: dict[str, int] = {}
online: dict[str, int] = {}  # user id -> connections
sid_user: dict[str, str] = {}
_ids = itertools.count(1)


def _ms() -> int:
    return int(time.time() * 1000)


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    user = user_of(environ.get("QUERY_STRING", ""))
    if user:
        sid_user[sid] = user
        online[user] = online.get(user, 0) + 1
        await sio.enter_room(sid, f"user:{user}")
    welcome = {
        "connectionId": f"c{next(_ids)}",
        "userId": user,
        "heartbeatInterval": 25000,
        "serverTime": _ms(),
        "protocol": 1,
    }
    await sio.emit("welcome", welcome, to=sid)


@sio.event
async def subscribe(sid: str, payload: dict[str, Any]) -> None:
    ch = payload["channel"]
    await sio.enter_room(sid, ch)
    await sio.emit(
        "subscribed", {"channel": ch, "offset": offsets.get(ch, 0), "epoch": "bench"}, to=sid
    )


@sio.event
async def publish(sid: str, payload: dict[str, Any]) -> None:
    ch = payload["channel"]
    offset = offsets.get(ch, 0) + 1
    offsets[ch] = offset
    msg = {
        "channel": ch,
        "data": payload.get("data"),
        "offset": offset,
        "timestamp": _ms(),
        "from": None,
    }
    await sio.emit("message", msg, room=ch)
    await sio.emit("published", {"channel": ch, "offset": offset}, to=sid)


@sio.event
async def disconnect(sid: str, *_args: Any) -> None:
    user = sid_user.pop(sid, None)
    if user:
        online[user] -= 1
        if not online[user]:
            del online[user]


@sio.event
async def chat(sid: str, payload: dict[str, Any]) -> None:
    user = sid_user.get(sid)
    if not user:
        return
    to = payload.get("recipientId")
    delivered = to in online
    out, ack = chat_frames(user, payload, delivered)
    if delivered:
        await sio.emit("chat", orjson.loads(out)["payload"], room=f"user:{to}")
    await sio.emit("chat_received", orjson.loads(ack)["payload"], to=sid)


@sio.event
async def ping(sid: str, *_args: Any) -> None:
    await sio.emit("pong", {"timestamp": _ms()}, to=sid)


if __name__ == "__main__":
    run_uvicorn(app)
