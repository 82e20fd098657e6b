"""Self-test of the load generator's WebSocket framing, against a deliberately awkward server.

    python loadgen/selftest.py [path/to/loadgen]      (make -C benchmarks check)

The server here (stdlib asyncio only) speaks the benchmark protocol but:
- checks that every client frame is masked, and unmasks it (a bare frame fails the test);
- sends `message` frames of 7-bit, 16-bit and 64-bit payload lengths (up to 70,000 bytes);
- coalesces several frames into one write, and splits others into 1..7-byte writes with
  pauses, so frames and even frame headers arrive across reads;
- interleaves protocol pings and checks that each comes back as a masked pong with its payload.
It then checks the load generator's counts: deliveries = publications x subscribers.
The same for --sio framing (engine.io open packet, `40`, `42[...]` events, engine.io pings).
Also: chat (users named by `?user=` or by a `?token=` from a --tokens file, then `authenticated`
after `welcome`; `chat` to the recipient, `chat_received` to the sender, every chat to a user
that is online, the sender never its own recipient), rooms (many channels, publishers subscribed
to their own share of them), and the idle scenario's set-up rate.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import struct
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SIZES = (40, 300, 70_000)  # data padding: 7-bit, 16-bit and 64-bit lengths


class Failure(Exception):
    pass


def frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    if not b1 & 0x80:
        raise Failure("client frame not masked")
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4)
    data = bytearray(await reader.readexactly(n))
    for i in range(n):
        data[i] ^= mask[i & 3]
    return b0 & 0x0F, bytes(data)


class AwkwardServer:
    def __init__(self, sio: bool) -> None:
        self.sio = sio
        self.channels: dict[str, list[asyncio.StreamWriter]] = {}
        self.users: dict[str, asyncio.StreamWriter] = {}
        self.joined: dict[str, int] = {}
        self.locks: dict[
            asyncio.StreamWriter, asyncio.Lock
        ] = {}  # channel -> subscriptions it ever had
        self.chats = 0  # chat frames delivered
        self.publishers_channels: dict[asyncio.StreamWriter, set[str]] = {}
        self.writes = 0
        self.pings_sent = 0
        self.pongs_ok = 0
        self.expected_pongs: dict[asyncio.StreamWriter, deque[bytes]] = {}
        self.errors: list[str] = []

    def encode(self, kind: str, payload: dict[str, object]) -> bytes:
        if self.sio:
            return b"42" + json.dumps([kind, payload]).encode()
        return json.dumps({"type": kind, "payload": payload}).encode()

    async def send(self, w: asyncio.StreamWriter, data: bytes) -> None:
        """Alternate between whole writes and writes cut into tiny pieces; one sender at a time
        per connection (chat: every connection's handler writes to the others)."""
        lock = self.locks.setdefault(w, asyncio.Lock())
        async with lock:
            await self._send(w, data)

    async def _send(self, w: asyncio.StreamWriter, data: bytes) -> None:
        if w.is_closing():
            raise ConnectionError("client gone")
        self.writes += 1
        if self.writes % 3:
            w.write(data)
        else:
            step = 1 + self.writes % 7
            for i in range(0, len(data), step):
                w.write(data[i : i + step])
                if i < 64:
                    await w.drain()
                    await asyncio.sleep(0)
        await w.drain()

    async def handle(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, w)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Failure as exc:
            self.errors.append(str(exc))
        except Exception as exc:  # a bug here, not the loadgen's: say so rather than hang up
            self.errors.append(f"server error {exc!r}")
        finally:
            for subs in self.channels.values():
                if w in subs:
                    subs.remove(w)
            w.close()

    async def _handle(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1].decode()
        query = dict(
            part.split("=", 1) for part in target.partition("?")[2].split("&") if "=" in part
        )
        # chat users: `?user=u3`, or a token `tok-u3` (the loadgen's --tokens file here)
        user = query.get("user") or (query["token"][4:] if "token" in query else None)
        if user:
            if user in self.users:
                raise Failure(f"two connections for user {user}")
            self.users[user] = w
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        w.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        welcome = self.encode("welcome", {"connectionId": "x", "protocol": 1})
        if self.sio:
            w.write(frame(1, b'0{"sid":"s","pingInterval":25000,"pingTimeout":20000}'))
        else:
            # welcome in the same write as the 101: the client must parse frames after the head
            w.write(frame(1, welcome))
        if "token" in query and not self.sio:
            authed = self.encode("authenticated", {"userId": user, "connectionId": "x"})
            await self.send(w, frame(1, authed))
        await w.drain()
        offset = 0
        while True:
            op, data = await read_frame(reader)
            if op == 0xA:
                expected = self.expected_pongs[w].popleft()
                if data != expected:
                    raise Failure(f"pong payload {data!r}, expected {expected!r}")
                self.pongs_ok += 1
                continue
            if op != 1:
                continue
            if self.sio:
                if data == b"40":
                    await self.send(w, frame(1, b'40{"sid":"x"}') + frame(1, welcome))
                    continue
                if data == b"3":
                    self.pongs_ok += 1
                    continue
                kind, payload = json.loads(data[2:])[0], (json.loads(data[2:]) + [{}])[1]
            else:
                msg = json.loads(data)
                kind, payload = msg["type"], msg.get("payload") or {}
            if kind == "subscribe":
                ch = payload["channel"]
                self.channels.setdefault(ch, []).append(w)
                self.joined[ch] = self.joined.get(ch, 0) + 1
                self.publishers_channels.setdefault(w, set()).add(ch)
                await self.send(w, frame(1, self.encode("subscribed", {"channel": ch})))
            elif kind == "chat":
                to, sender = payload["recipientId"], user
                if to == sender or to not in self.users or not payload.get("message"):
                    raise Failure(f"chat from {sender} to {to}: {payload}")
                self.chats += 1
                body = {"messageId": "m", "from": sender, "message": payload["message"]}
                await self.send(self.users[to], frame(1, self.encode("chat", body)))
                ack = {"messageId": "m", "recipientId": to, "delivered": True, "queued": False}
                await self.send(w, frame(1, self.encode("chat_received", ack)))
            elif kind == "publish":
                ch = payload["channel"]
                if ch not in self.publishers_channels.get(w, ()):
                    raise Failure(f"publish to {ch}, a channel the publisher is not in")
                offset += 1
                pad = "x" * SIZES[offset % len(SIZES)]
                body = {"channel": ch, "data": payload["data"], "pad": pad, "offset": offset}
                out = frame(1, self.encode("message", body))
                for sub in list(self.channels.get(ch, ())):
                    extra = b""
                    if offset % 5 == 0:  # a protocol ping (or engine.io ping) between two frames
                        token = b"p%d" % self.pings_sent
                        extra = frame(1, b"2") if self.sio else frame(9, token)
                        self.expected_pongs.setdefault(sub, deque()).append(token)
                        self.pings_sent += 1
                    await self.send(sub, extra + out)
                ack = self.encode("published", {"channel": ch, "offset": offset})
                await self.send(w, frame(1, ack))
            elif kind == "ping":
                await self.send(w, frame(1, self.encode("pong", {"timestamp": 1})))


async def run_case(
    loadgen: Path, sio: bool, kind: str, extra: list[str]
) -> tuple[dict[str, Any], AwkwardServer]:
    srv = AwkwardServer(sio)
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    args = [str(loadgen), kind, "--port", str(port), "--warmup", "0.2", "--duration", "1", *extra]
    if kind == "idle":
        args = [str(loadgen), kind, "--port", str(port), "--hold", "0.3", *extra]
    if sio:
        args.append("--sio")
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    server.close()
    if srv.errors:
        raise Failure(f"server saw: {srv.errors[0]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    if not result.get("ok") or result.get("errors") or result.get("closed"):
        raise Failure(f"loadgen result: {result}")
    result["pings_sent"], result["pongs_ok"] = srv.pings_sent, srv.pongs_ok
    return result, srv


def main() -> int:
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    here = Path(__file__).resolve().parent
    loadgen = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent / "build" / "loadgen"
    if not os.access(loadgen, os.X_OK):
        print(f"{loadgen}: not built", file=sys.stderr)
        return 2
    return asyncio.run(run_all(loadgen))


async def run_all(loadgen: Path) -> int:
    failed = passed = 0
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens"
        tokens.write_text("".join(f"tok-u{i}\n" for i in range(6)))
        for sio in (False, True):
            name = "sio" if sio else "ws"
            cases = [
                ("fanout", ["--subs", "3", "--window", "4", "--batch-ms", "2"]),
                ("fanout", ["--subs", "3", "--window", "4", "--batch-ms", "0"]),
                ("pingpong", ["--conns", "4"]),
                ("latency", ["--subs", "3", "--rate", "50"]),
                ("chat", ["--conns", "6", "--window", "3"]),
                (
                    "rooms",
                    ["--channels", "6", "--per-channel", "3", "--pubs", "2", "--window", "4"],
                ),
                ("idle", ["--conns", "20"]),
            ]
            if not sio:  # handshake tokens, then `authenticated` (wshub; the peers take none)
                cases.append(("chat", ["--conns", "6", "--window", "3", "--tokens", str(tokens)]))
            for kind, extra in cases:
                label = f"{name} {kind} {' '.join(extra)}"
                try:
                    r, srv = await run_case(loadgen, sio, kind, extra)
                    check(kind, r, srv)
                    print(f"ok    {label}")
                    passed += 1
                except (TimeoutError, Failure, ValueError, KeyError) as exc:
                    failed += 1
                    print(f"FAIL  {label}: {exc}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def check(kind: str, r: dict[str, Any], srv: AwkwardServer) -> None:
    """What the load generator's result must say after a case against the awkward server."""
    if kind in ("fanout", "rooms"):
        # every delivery parsed: on average, each acked publication reached all 3 subscribers
        per_pub = float(r["deliveries_per_s"]) / max(float(r["pubs_per_s"]), 1e-9)
        if not 2.5 <= per_pub <= 3.5 or not r["deliveries"]:
            raise Failure(f"{per_pub:.2f} deliveries per publication: {r}")
    if kind == "fanout" and r["pongs_ok"] < r["pings_sent"] - 3:
        # pings sent just before the loadgen left may go unanswered: one per subscriber
        raise Failure(f"pings {r['pings_sent']} answered {r['pongs_ok']}")
    if kind == "rooms":
        # 6 channels of 3 subscribers, each also joined by the one publisher that owns it
        sizes = sorted(srv.joined.values())
        if sizes != [4] * 6:
            raise Failure(f"channel sizes {sizes}")
    if kind == "latency" and not r["samples"]:
        raise Failure(f"no latency samples: {r}")
    if kind == "pingpong" and not r["round_trips"]:
        raise Failure(f"no round trips: {r}")
    if kind == "chat":
        acks, deliveries = float(r["chat_acks_per_s"]), float(r["deliveries_per_s"])
        if not r["deliveries"] or not 0.8 <= deliveries / max(acks, 1e-9) <= 1.2:
            raise Failure(f"{deliveries:.0f} deliveries/s for {acks:.0f} acks/s: {r}")
        if r["undelivered"] or len(srv.users) != 6 or srv.chats < int(r["deliveries"]):
            raise Failure(f"users {sorted(srv.users)}, {srv.chats} chats relayed: {r}")
    if kind == "idle" and (r["conns"] != 20 or not float(r["handshakes_per_s"]) > 0):
        raise Failure(f"idle: {r}")


if __name__ == "__main__":
    sys.exit(main())
