"""Peer: the `websockets` library's asyncio server on uvloop, publications sent with
`websockets.broadcast()` (one write per subscriber, no await; the message encoded once, by
orjson, and sent as the text frame it is with `text=True`).

No permessage-deflate (as node-ws); websockets' own keepalive pings stay on (the load generator
answers them).

    python websockets_server.py PORT
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import uvloop
from _common import message_frame, pong, port_from_argv, quiet_sigterm, reply, welcome
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

channels: dict[str, dict[ServerConnection, None]] = {}  # insertion-ordered sets
offsets: dict[str, int] = {}


async def handler(ws: ServerConnection) -> None:
    joined: set[str] = set()
    try:
        await ws.send(welcome(), text=True)
        async for text in ws:
            try:
                msg: Any = orjson.loads(text)
                kind = msg["type"]
                payload = msg.get("payload") or {}
            except Exception:
                await ws.send(reply("error", {"code": "invalid_json", "message": "bad"}), text=True)
                continue
            mid = msg.get("id")
            if kind == "publish":
                ch = payload["channel"]
                offset = offsets.get(ch, 0) + 1
                offsets[ch] = offset
                broadcast(
                    channels.get(ch, {}), message_frame(ch, payload.get("data"), offset), text=True
                )
                await ws.send(reply("published", {"channel": ch, "offset": offset}, mid), text=True)
            elif kind == "ping":
                await ws.send(pong(), text=True)
            elif kind == "subscribe":
                ch = payload["channel"]
                channels.setdefault(ch, {})[ws] = None
                joined.add(ch)
                body = {"channel": ch, "offset": offsets.get(ch, 0), "epoch": "bench"}
                await ws.send(reply("subscribed", body, mid), text=True)
            elif kind == "unsubscribe":
                ch = payload["channel"]
                channels.get(ch, {}).pop(ws, None)
                joined.discard(ch)
                await ws.send(reply("unsubscribed", {"channel": ch}, mid), text=True)
            else:
                err = {"code": "unknown_type", "message": f"Unknown message type: {kind}"}
                await ws.send(reply("error", err, mid), text=True)
    except ConnectionClosed:
        pass
    finally:
        for ch in joined:
            channels.get(ch, {}).pop(ws, None)


async def main() -> None:
    async with serve(
        handler, "127.0.0.1", port_from_argv(), compression=None, backlog=4096
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    quiet_sigterm()
    # broadcast() logs a warning per subscriber it skips (closing, or mid-fragment); the
    # server logs failed handshakes: neither is wanted on the benchmark's log
    logging.getLogger("websockets").setLevel(logging.ERROR)
    uvloop.run(main())
