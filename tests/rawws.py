"""A deliberately minimal WebSocket client over asyncio streams, for tests that must misbehave:
not answering pings, sending odd frames, stopping reading."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Iterable

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def handshake_request(
    host: str,
    port: int,
    path: str = "/ws",
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A valid WebSocket upgrade request, with ``headers`` added after the required ones."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def vm_rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def client_frame(
    payload: bytes, opcode: int = OP_TEXT, *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """One client frame, masked (as RFC 6455 requires) unless told otherwise."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, mbit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, mbit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mbit | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawWS:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str = "/ws",
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
    ) -> RawWS:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        if rcvbuf is not None:  # a small receive buffer makes a stalled reader stall sooner
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(handshake_request(host, port, path, (headers or {}).items()))
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            writer.close()
            raise ConnectionError(status.decode())
        return cls(reader, writer)

    def send_frame(
        self, opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
    ) -> None:
        self.writer.write(client_frame(payload, opcode, fin=fin, rsv=rsv, mask=mask))

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode())

    async def recv_frame(self) -> tuple[int, bytes]:
        """The next frame (opcode, payload); raises IncompleteReadError at EOF."""
        b1, b2 = await self.reader.readexactly(2)
        n = b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return b1 & 0x0F, await self.reader.readexactly(n)

    async def recv_until(self, opcode: int) -> bytes:
        while True:
            op, payload = await self.recv_frame()
            if op == opcode:
                return payload

    async def eof(self) -> None:
        """Read (and discard) until the server drops the TCP connection."""
        while await self.reader.read(65536):
            pass

    def close(self) -> None:
        self.writer.close()
