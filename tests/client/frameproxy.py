"""A TCP proxy in front of a real server that can drop chosen server→client WebSocket frames:
the way to make the hub skip an offset for one connection, as a lost frame would.

The server's frames are not masked and (without ``WS_COMPRESSION``) not compressed, so each
text frame is one JSON envelope that ``drop(envelope)`` may refuse; everything else (the HTTP
handshake, client frames, control frames) passes through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["FrameDroppingProxy"]

Envelope = dict[str, Any]


class FrameDroppingProxy:
    """``async with FrameDroppingProxy(port, drop) as proxy``: listens on ``proxy.port``;
    ``proxy.dropped`` lists the envelopes it did not forward."""

    def __init__(self, target_port: int, drop: Callable[[Envelope], bool]) -> None:
        self.target_port = target_port
        self.drop = drop
        self.dropped: list[Envelope] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> FrameDroppingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((writer, up_writer))
        for coro in (self._pipe(reader, up_writer), self._frames(up_reader, writer)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def _frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server → client: the handshake response as it is, then frame by frame."""
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            writer.write(await reader.readuntil(b"\r\n\r\n"))
            while True:
                head = await reader.readexactly(2)
                length = head[1] & 0x7F
                ext = b""
                if length == 126:
                    ext = await reader.readexactly(2)
                    length = int.from_bytes(ext, "big")
                elif length == 127:
                    ext = await reader.readexactly(8)
                    length = int.from_bytes(ext, "big")
                mask = await reader.readexactly(4) if head[1] & 0x80 else b""
                body = await reader.readexactly(length)
                if head[0] == 0x81 and not mask and self._refused(body):
                    continue
                writer.write(head + ext + mask + body)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    def _refused(self, body: bytes) -> bool:
        try:
            envelope = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        if isinstance(envelope, dict) and self.drop(envelope):
            self.dropped.append(envelope)
            return True
        return False


def drop_once(predicate: Callable[[Envelope], bool]) -> Callable[[Envelope], bool]:
    """A ``drop`` that refuses the first envelope matching ``predicate`` only."""
    done = False

    def drop(envelope: Envelope) -> bool:
        nonlocal done
        if not done and predicate(envelope):
            done = True
            return True
        return False

    return drop
