"""Peer: a raw ASGI app (no framework) under uvicorn, queued publish.

A publication is encoded once (orjson) and `put_nowait` into each subscriber's bounded
asyncio.Queue: the publisher's handler never awaits a subscriber. One writer task per connection
drains its queue with one ASGI `websocket.send` per frame; every frame a connection gets
(replies too) goes through its queue, so the writer is its only sender. A subscriber whose queue
is full is dropped and closed. uvicorn runs as for the naive Starlette peer: loop=uvloop,
http=httptools, ws=websockets-sansio.

    python asgi_queued.py PORT
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from _common import message_frame, pong, reply, run_uvicorn, welcome

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

QUEUE_MAX = 1024  # frames a connection may have pending before it is dropped
CLOSE = object()  # queue sentinel: close the connection

channels: dict[str, dict[Conn, None]] = {}  # insertion-ordered sets
offsets: dict[str, int] = {}


class Conn:
    __slots__ = ("joined", "queue", "writer")

    def __init__(self, send: Send) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_MAX)
        self.joined: set[str] = set()
        self.writer = asyncio.create_task(self._write(send))

    async def _write(self, send: Send) -> None:
        queue = self.queue
        with contextlib.suppress(Exception):  # the client hung up: nothing more to send
            while True:
                text = await queue.get()
                if text is CLOSE:
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send({"type": "websocket.send", "text": text})

    def put(self, text: str) -> None:
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.drop()

    def drop(self) -> None:
        """Too slow: leave every channel, discard what is pending, close."""
        self.leave_all()
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(CLOSE)

    def leave_all(self) -> None:
        for ch in self.joined:
            channels.get(ch, {}).pop(self, None)
        self.joined.clear()


def handle(conn: Conn, msg: dict[str, Any]) -> None:
    raw = msg.get("text")
    if raw is None:
        raw = msg.get("bytes")
    try:
        data: Any = orjson.loads(raw)
        kind = data["type"]
        payload = data.get("payload") or {}
    except Exception:
        conn.put(reply("error", {"code": "invalid_json", "message": "bad"}).decode())
        return
    mid = data.get("id")
    if kind == "publish":
        ch = payload["channel"]
        offset = offsets.get(ch, 0) + 1
        offsets[ch] = offset
        out = message_frame(ch, payload.get("data"), offset).decode()
        for sub in list(channels.get(ch, ())):  # a full queue drops its subscriber meanwhile
            sub.put(out)
        conn.put(reply("published", {"channel": ch, "offset": offset}, mid).decode())
    elif kind == "ping":
        conn.put(pong().decode())
    elif kind == "subscribe":
        ch = payload["channel"]
        channels.setdefault(ch, {})[conn] = None
        conn.joined.add(ch)
        body = {"channel": ch, "offset": offsets.get(ch, 0), "epoch": "bench"}
        conn.put(reply("subscribed", body, mid).decode())
    elif kind == "unsubscribe":
        ch = payload["channel"]
        channels.get(ch, {}).pop(conn, None)
        conn.joined.discard(ch)
        conn.put(reply("unsubscribed", {"channel": ch}, mid).decode())
    else:
        err = {"code": "unknown_type", "message": f"Unknown message type: {kind}"}
        conn.put(reply("error", err, mid).decode())


async def websocket(scope: Scope, receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    if scope["path"] != "/ws":
        await send({"type": "websocket.close", "code": 1008})  # uvicorn answers 403
        return
    await send({"type": "websocket.accept"})
    conn = Conn(send)
    conn.put(welcome().decode())
    try:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.receive":
                handle(conn, msg)
            elif msg["type"] == "websocket.disconnect":
                return
    finally:
        conn.leave_all()
        conn.writer.cancel()


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        event = (await receive())["type"]
        if event == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    run_uvicorn(app)
