"""A small Server-Sent Events client for the tests of the HTTP fallback (httpx streaming), and
an HTTP proxy that refuses WebSocket upgrades, as some corporate proxies do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

__all__ = ["Event", "EventStream", "NoUpgradeProxy", "open_stream"]

TIMEOUT = 5.0


@dataclass
class Event:
    """One event as a browser's EventSource would see it (``comments`` it would not)."""

    data: Any = None
    id: str | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def type(self) -> str | None:
        return self.data.get("type") if isinstance(self.data, dict) else None


class EventStream:
    """The events of one ``text/event-stream`` response, read with a deadline each."""

    def __init__(self, response: httpx.Response, http: httpx.AsyncClient, post_url: str) -> None:
        self.response = response
        self.http = http
        self._post_url = post_url
        self._lines = response.aiter_lines()
        self.last_id: str | None = None
        self.welcome: dict[str, Any] = {}

    @property
    def connection_id(self) -> str:
        return str(self.welcome["payload"]["connectionId"])

    @property
    def session_key(self) -> str:
        return str(self.welcome["payload"]["sessionKey"])

    async def _read_event(self) -> Event | None:
        event = Event()
        data: list[str] = []
        seen = False
        async for line in self._lines:
            if line == "":
                if seen:
                    if data:
                        event.data = orjson.loads("\n".join(data))
                    return event
                continue
            seen = True
            if line.startswith(":"):
                event.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "id":
                event.id = value
                self.last_id = value
        return None  # the response ended

    async def next(self, *, timeout: float = TIMEOUT, comments: bool = False) -> Event | None:
        """The next event with data (or also comment-only ones); None when the stream ended."""
        while True:
            event = await asyncio.wait_for(self._read_event(), timeout)
            if event is None or event.data is not None or comments:
                return event

    async def expect(self, type_: str, *, timeout: float = TIMEOUT) -> dict[str, Any]:
        event = await self.next(timeout=timeout)
        if event is None or event.type != type_:
            raise AssertionError(f"expected {type_!r}, got {event!r}")
        envelope: dict[str, Any] = event.data
        return envelope

    async def until(self, type_: str, *, limit: int = 1000) -> Event:
        """Read events until one of ``type_`` (at most ``limit``)."""
        for _ in range(limit):
            event = await self.next()
            if event is None:
                raise AssertionError(f"the stream ended before {type_!r}")
            if event.type == type_:
                return event
        raise AssertionError(f"no {type_!r} in {limit} events")

    async def reply(self, msg_id: str) -> dict[str, Any]:
        """Read events until the one answering ``msg_id``."""
        for _ in range(1000):
            event = await self.next()
            assert event is not None, f"the stream ended before the reply to {msg_id!r}"
            if isinstance(event.data, dict) and event.data.get("id") == msg_id:
                envelope: dict[str, Any] = event.data
                return envelope
        raise AssertionError(f"no reply to {msg_id!r}")

    async def post(
        self, body: Any, *, key: str | None = None, url: str | None = None
    ) -> httpx.Response:
        """POST envelope(s) to this stream (through ``url`` instead: another node)."""
        target = url or self._post_url
        return await self.http.post(
            f"{target}/{self.connection_id}",
            content=orjson.dumps(body),
            headers={"x-wshub-session": key if key is not None else self.session_key},
        )

    async def request(
        self, type_: str, payload: Any, *, msg_id: str = "r", url: str | None = None
    ) -> dict[str, Any]:
        response = await self.post({"type": type_, "payload": payload, "id": msg_id}, url=url)
        assert response.status_code == 202, response.text
        return await self.reply(msg_id)


@contextlib.asynccontextmanager
async def open_stream(
    http: httpx.AsyncClient,
    url: str,
    *,
    token: str | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[EventStream]:
    """Open ``GET <url>`` (the hub's ``.../sse``) and read its ``welcome``."""
    query = dict(params or {})
    if token is not None:
        query["token"] = token
    async with http.stream("GET", url, params=query, headers=headers) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = EventStream(response, http, url)
        stream.welcome = await stream.expect("welcome")
        yield stream


class NoUpgradeProxy:
    """A forwarding HTTP proxy on loopback that answers 403 to a connection whose request asks
    for ``Upgrade: websocket`` and passes every other connection on, byte for byte, as it
    arrives (a WebSocket client always opens a connection of its own for the handshake)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.refused = 0
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> NoUpgradeProxy:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").lower().split("\r\n")
            if any(line.replace(" ", "") == "upgrade:websocket" for line in lines):
                self.refused += 1
                writer.write(
                    b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up_writer.write(head)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()
