"""Peer: picows (Cython WebSocket) on uvloop, `transport.send()` once per subscriber.

use_aiofastnet=False: picows 2.3.1 would otherwise pick aiofastnet's transport when installed;
the uvloop transport is what PERF-NOTES measured (and costs 23 KiB per idle connection, not 28).

    python picows_server.py PORT
"""

from __future__ import annotations

from typing import Any

import orjson
import uvloop
from _common import (
    chat_frames,
    message_frame,
    pong,
    port_from_argv,
    quiet_sigterm,
    reply,
    user_of,
    welcome,
)
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

TEXT = WSMsgType.TEXT
channels: dict[str, dict[WSTransport, None]] = {}  # insertion-ordered sets
offsets: dict[str, int] = {}
users: dict[str, dict[WSTransport, None]] = {}  # user id -> its connections


class Conn(WSListener):
    def __init__(self, user: str | None) -> None:
        self.transport: WSTransport | None = None
        self.joined: set[str] = set()
        self.user = user

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.user:
            users.setdefault(self.user, {})[transport] = None
        transport.send(TEXT, welcome(self.user))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for ch in self.joined:
            channels.get(ch, {}).pop(transport, None)
        self.joined.clear()
        if self.user:
            mine = users.get(self.user, {})
            mine.pop(transport, None)
            if not mine:
                users.pop(self.user, None)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type != TEXT:
            return
        try:
            msg: Any = orjson.loads(frame.get_payload_as_bytes())
            kind = msg["type"]
            payload = msg.get("payload") or {}
        except Exception:
            transport.send(TEXT, reply("error", {"code": "invalid_json", "message": "bad"}))
            return
        mid = msg.get("id")
        if kind == "publish":
            ch = payload["channel"]
            offset = offsets.get(ch, 0) + 1
            offsets[ch] = offset
            frame_bytes = message_frame(ch, payload.get("data"), offset)
            for sub in channels.get(ch, ()):
                sub.send(TEXT, frame_bytes)
            transport.send(TEXT, reply("published", {"channel": ch, "offset": offset}, mid))
        elif kind == "chat" and self.user:
            conns = users.get(payload.get("recipientId"), {})
            out, ack = chat_frames(self.user, payload, bool(conns), mid)
            for conn in conns:
                conn.send(TEXT, out)
            transport.send(TEXT, ack)
        elif kind == "ping":
            transport.send(TEXT, pong())
        elif kind == "subscribe":
            ch = payload["channel"]
            channels.setdefault(ch, {})[transport] = None
            self.joined.add(ch)
            body = {"channel": ch, "offset": offsets.get(ch, 0), "epoch": "bench"}
            transport.send(TEXT, reply("subscribed", body, mid))
        elif kind == "unsubscribe":
            ch = payload["channel"]
            channels.get(ch, {}).pop(transport, None)
            self.joined.discard(ch)
            transport.send(TEXT, reply("unsubscribed", {"channel": ch}, mid))
        else:
            err = {"code": "unknown_type", "message": f"Unknown message type: {kind}"}
            transport.send(TEXT, reply("error", err, mid))


def listener_factory(request: WSUpgradeRequest) -> Conn:
    return Conn(user_of(request.path))


async def main() -> None:
    server = await ws_create_server(
        listener_factory, "127.0.0.1", port_from_argv(), backlog=4096, use_aiofastnet=False
    )
    await server.serve_forever()


if __name__ == "__main__":
    quiet_sigterm()
    uvloop.run(main())
