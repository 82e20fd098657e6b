"""Raw HTTP/WebSocket helpers for attack tests: handshakes with odd headers, half-sent requests,
connection floods, and a look at a server process's memory. Extends tests/rawws.py (which stays
as it is) with what the attacks need."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import websockets

from ..rawws import RawWS, handshake_request, vm_rss_kib

__all__ = [
    "Response",
    "aclose",
    "bystander_ok",
    "handshake_request",
    "open_raw",
    "raw_handshake",
    "read_response",
    "vm_rss_kib",
]


@dataclass
class Response:
    """The head of an HTTP response; ``status`` 0 when the server closed without one."""

    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def aclose(self) -> None:
        await aclose(self.writer)


async def read_response(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float = 5.0
) -> Response:
    """Read a response head; status 0 if the server closed (or reset) the connection first."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except (asyncio.IncompleteReadError, ConnectionError):
        return Response(0, {}, reader, writer)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Response(status, headers, reader, writer)


async def raw_handshake(host: str, port: int, request: bytes, timeout: float = 5.0) -> Response:
    """Send ``request`` as is on a new connection and read the response head."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return await read_response(reader, writer, timeout)
    except BaseException:
        await aclose(writer)
        raise


@contextlib.asynccontextmanager
async def open_raw(host: str, port: int, path: str = "/ws") -> AsyncIterator[RawWS]:
    """A raw WebSocket connection (tests/rawws.py), closed afterwards."""
    ws = await RawWS.connect(host, port, path)
    try:
        yield ws
    finally:
        await aclose(ws.writer)


async def bystander_ok(url: str, timeout: float = 5.0) -> bool:
    """A normal client can connect, gets ``welcome``, and its ``ping`` gets ``pong``."""
    async with asyncio.timeout(timeout):
        async with websockets.connect(url, open_timeout=timeout) as ws:
            welcome = await ws.recv()
            await ws.send('{"type":"ping","id":"bystander"}')
            pong = await ws.recv()
    return '"welcome"' in str(welcome) and '"pong"' in str(pong)


async def aclose(writer: asyncio.StreamWriter) -> None:
    """Close a connection and wait until its socket is closed (no ResourceWarning later)."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
