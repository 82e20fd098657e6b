"""Peer: a naive Starlette WebSocket endpoint under uvicorn.

The publisher's handler does `await websocket.send_text()` for each subscriber in turn (the
common first implementation). uvicorn runs with loop=uvloop, http=httptools and
ws=websockets-sansio (what ws=auto picks in uvicorn 0.54 when `websockets` is installed).

    python starlette_naive.py PORT
"""

from __future__ import annotations

from typing import Any

import orjson
from _common import chat_frames, message_frame, pong, reply, run_uvicorn, welcome
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

channels: dict[str, dict[WebSocket, None]] = {}
offsets: dict[str, int] = {}
users: dict[str, dict[WebSocket, None]] = {}  # user id -> its connections (chat)


async def endpoint(ws: WebSocket) -> None:
    await ws.accept()
    user = ws.query_params.get("user")
    if user:
        users.setdefault(user, {})[ws] = None
    await ws.send_text(welcome(user).decode())
    joined: set[str] = set()
    try:
        while True:
            text = await ws.receive_text()
            try:
                msg: Any = orjson.loads(text)
                kind = msg["type"]
                payload = msg.get("payload") or {}
            except Exception:
                await ws.send_text(
                    reply("error", {"code": "invalid_json", "message": "bad"}).decode()
                )
                continue
            mid = msg.get("id")
            if kind == "publish":
                ch = payload["channel"]
                offset = offsets.get(ch, 0) + 1
                offsets[ch] = offset
                out = message_frame(ch, payload.get("data"), offset).decode()
                for sub in list(channels.get(ch, ())):
                    try:
                        await sub.send_text(out)
                    except Exception:
                        channels.get(ch, {}).pop(sub, None)
                await ws.send_text(
                    reply("published", {"channel": ch, "offset": offset}, mid).decode()
                )
            elif kind == "chat" and user:
                conns = users.get(payload.get("recipientId"), {})
                out, ack = chat_frames(user, payload, bool(conns), mid)
                for conn in list(conns):
                    try:
                        await conn.send_text(out.decode())
                    except Exception:
                        conns.pop(conn, None)
                await ws.send_text(ack.decode())
            elif kind == "ping":
                await ws.send_text(pong().decode())
            elif kind == "subscribe":
                ch = payload["channel"]
                channels.setdefault(ch, {})[ws] = None
                joined.add(ch)
                body = {"channel": ch, "offset": offsets.get(ch, 0), "epoch": "bench"}
                await ws.send_text(reply("subscribed", body, mid).decode())
            elif kind == "unsubscribe":
                ch = payload["channel"]
                channels.get(ch, {}).pop(ws, None)
                joined.discard(ch)
                await ws.send_text(reply("unsubscribed", {"channel": ch}, mid).decode())
            else:
                err = {"code": "unknown_type", "message": f"Unknown message type: {kind}"}
                await ws.send_text(reply("error", err, mid).decode())
    except WebSocketDisconnect:
        pass
    finally:
        for ch in joined:
            channels.get(ch, {}).pop(ws, None)
        if user:
            mine = users.get(user, {})
            mine.pop(ws, None)
            if not mine:
                users.pop(user, None)


app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])

if __name__ == "__main__":
    run_uvicorn(app)
