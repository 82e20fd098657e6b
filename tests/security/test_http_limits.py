"""Abuse of the HTTP side that needs no credentials (the protocol's HTTP API limits): bodies sent
before the key is checked, bodies over ``WS_API_MAX_BODY``, bodies that never finish arriving
(slowloris after the head), pages that can be framed, and ``/metrics`` behind
``WS_METRICS_KEY``. Every attack goes to a real server on 127.0.0.1 over a raw socket.

The flood tests run against a real ``wshub serve`` process (tests/procs.py), so that its memory
can be measured on its own and a bystander's round trip shows whether its event loop stalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets

from wshub.server.app import create_app
from wshub.testing import TestServer, run_server, serve_asgi

from ..conftest import API_KEY, make_settings
from ..procs import ServerProcess
from .rawhttp import aclose, bystander_ok, read_response, vm_rss_kib

MIB = 1024 * 1024
AUTH = f"Authorization: Bearer {API_KEY}\r\n"


def _head(
    path: str = "/api/publish",
    *,
    length: int | None = None,
    chunked: bool = False,
    extra: str = "",
    method: str = "POST",
) -> bytes:
    lines = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if length is not None:
        lines += f"Content-Length: {length}\r\n"
    if chunked:
        lines += "Transfer-Encoding: chunked\r\n"
    return (lines + extra + "\r\n").encode("latin-1")


def _json_body(size: int, piece: int = 256 * 1024) -> list[bytes]:
    """A valid publish body of about ``size`` bytes, ``{"channel": "news", "data": [[],[],…]}``,
    as pieces that are one object repeated (the client itself holds almost nothing)."""
    start, end = b'{"channel": "news", "data": [', b"[]]}"
    middle = b"[]," * (piece // 3)
    n = max(1, (size - len(start) - len(end)) // len(middle))
    return [start, *([middle] * n), end]


def _chunked(pieces: list[bytes]) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces] + [b"0\r\n\r\n"]


@dataclass
class Upload:
    status: int  #: 0: the server closed without an answer
    total: int  #: bytes the client meant to send, head included
    sent_at_answer: int  #: bytes sent when the answer's head arrived
    sent: int  #: bytes sent before the server stopped taking them (== total: all taken)
    body: bytes  #: what came after the answer's head


async def _upload(port: int, head: bytes, pieces: list[bytes]) -> Upload:
    """Send ``head`` and then ``pieces`` as fast as the server takes them, while reading its
    answer on the same socket. A plain non-blocking socket rather than asyncio streams: a reset
    that ends the sending must not throw away an answer the kernel has already received."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    sent = 0
    answered = asyncio.Event()
    sent_at_answer = -1

    async def send() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            for data in [head, *pieces]:
                await loop.sock_sendall(sock, data)
                sent += len(data)

    async def receive() -> bytes:
        nonlocal sent_at_answer
        received = b""
        with contextlib.suppress(ConnectionError):
            while True:
                data = await loop.sock_recv(sock, 65536)
                if not data:
                    break
                received += data
                if sent_at_answer < 0 and b"\r\n\r\n" in received:
                    sent_at_answer = sent
                    answered.set()
        return received

    try:
        async with asyncio.timeout(60):
            sender = asyncio.create_task(send())
            received = await receive()  # until the server closes
            await sender  # ends when the server stops taking bytes, or when all are sent
    finally:
        sock.close()
    head_bytes, _, rest = received.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ")[1]) if received else 0
    return Upload(status, len(head) + sum(map(len, pieces)), sent_at_answer, sent, rest)


async def _ping_rtts(url: str, stop: asyncio.Event) -> list[float]:
    """A bystander WebSocket client's ``ping`` round trips, ten a second (under the rate limit)
    until ``stop``."""
    rtts: list[float] = []
    async with websockets.connect(url, open_timeout=10) as ws:
        await asyncio.wait_for(ws.recv(), 10)  # welcome
        for i in range(10_000):
            started = time.monotonic()
            await ws.send(f'{{"type":"ping","id":"b{i}"}}')
            await asyncio.wait_for(ws.recv(), 30)
            rtts.append(time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
            if stop.is_set():
                break
    return rtts


@contextlib.asynccontextmanager
async def _process(tmp_path: Path, **settings: str) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(tmp_path, store_url="memory://", **settings)
    await proc.start()
    try:
        yield proc
    finally:
        await proc.stop()


def _rss_mib(proc: ServerProcess) -> float:
    assert proc.proc is not None
    return vm_rss_kib(proc.proc.pid) / 1024


async def _attack_with_bystander(
    proc: ServerProcess, head: bytes, pieces: list[bytes]
) -> tuple[Upload, list[float], float]:
    """The upload, while a bystander pings; (upload, round trips, RSS growth in MiB)."""
    before = _rss_mib(proc)
    stop = asyncio.Event()
    bystander = asyncio.create_task(_ping_rtts(proc.url, stop))
    try:
        upload = await _upload(proc.port, head, pieces)
    finally:
        stop.set()
    rtts = await asyncio.wait_for(bystander, 60)
    return upload, rtts, _rss_mib(proc) - before


# -- the key before the body ---------------------------------------------------------------------


async def test_an_unauthenticated_30_mib_body_is_refused_with_401_before_it_is_sent(
    tmp_path: Path,
) -> None:
    """No key, 30 MiB of ``[],``: 401 at once, the connection closed while the client is still
    sending; the body is never buffered nor parsed, so the server's memory stays flat and a
    bystander's pings keep coming back (they stalled for seconds while 30 MiB were parsed)."""
    async with _process(tmp_path) as proc:
        assert await bystander_ok(proc.url)
        pieces = _json_body(30 * MIB)
        upload, rtts, grown = await _attack_with_bystander(
            proc, _head(length=sum(map(len, pieces))), pieces
        )
        assert upload.status == 401
        assert b"Missing or invalid API key" in upload.body
        assert upload.sent_at_answer < upload.total // 2  # answered long before the end
        assert upload.sent < upload.total  # and the server stopped taking the body
        assert grown < 25, f"RSS grew {grown:.0f} MiB"
        assert rtts and max(rtts) < 1.0, f"bystander round trips up to {max(rtts):.2f} s"
        assert await bystander_ok(proc.url)


async def test_an_unauthenticated_chunked_body_is_refused_with_401_before_it_is_sent(
    tmp_path: Path,
) -> None:
    async with _process(tmp_path) as proc:
        pieces = _json_body(30 * MIB)
        head = _head(chunked=True)
        upload, rtts, grown = await _attack_with_bystander(proc, head, _chunked(pieces))
        assert upload.status == 401
        assert upload.sent < upload.total
        assert grown < 25, f"RSS grew {grown:.0f} MiB"
        assert rtts and max(rtts) < 1.0, f"bystander round trips up to {max(rtts):.2f} s"


# -- bodies over WS_API_MAX_BODY -----------------------------------------------------------------


async def test_a_content_length_over_the_limit_is_refused_with_413_before_the_body(
    tmp_path: Path,
) -> None:
    """With the key, a declared 30 MiB body (the default limit is 1 MiB) is refused from its
    head: 413 before the body is sent, nothing buffered."""
    async with _process(tmp_path) as proc:
        pieces = _json_body(30 * MIB)
        upload, rtts, grown = await _attack_with_bystander(
            proc, _head(length=sum(map(len, pieces)), extra=AUTH), pieces
        )
        assert upload.status == 413
        assert upload.sent_at_answer < upload.total // 2
        assert upload.sent < upload.total
        assert grown < 25, f"RSS grew {grown:.0f} MiB"
        assert rtts and max(rtts) < 1.0, f"bystander round trips up to {max(rtts):.2f} s"


async def test_a_chunked_body_over_the_limit_is_refused_with_413_at_the_limit(
    tmp_path: Path,
) -> None:
    """Chunked, no length to check up front: the server counts while reading and stops at the
    limit (1 MiB by default), long before the 30 MiB are sent."""
    async with _process(tmp_path) as proc:
        pieces = _json_body(30 * MIB)
        upload, rtts, grown = await _attack_with_bystander(
            proc, _head(chunked=True, extra=AUTH), _chunked(pieces)
        )
        assert upload.status == 413
        assert upload.sent_at_answer < upload.total // 2
        assert upload.sent < upload.total
        assert grown < 25, f"RSS grew {grown:.0f} MiB"
        assert rtts and max(rtts) < 1.0, f"bystander round trips up to {max(rtts):.2f} s"


def _exact_body(size: int) -> bytes:
    """A valid publish body of exactly ``size`` bytes (padded with JSON whitespace)."""
    start, end = b'{"channel": "news", "data": ', b"1}"
    return start + b" " * (size - len(start) - len(end)) + end


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_at_the_limit_is_accepted_and_one_byte_more_is_413(chunked: bool) -> None:
    async with run_server(make_settings(api_max_body=4096)) as server:
        for size, status in [(4096, 200), (4097, 413)]:
            body = _exact_body(size)
            extra = AUTH + "Connection: close\r\n"
            head = _head(chunked=chunked, length=None if chunked else size, extra=extra)
            # In pieces of 1000 bytes: a chunked body's size is only known by counting.
            pieces = [body[i : i + 1000] for i in range(0, size, 1000)]
            upload = await _upload(server.port, head, _chunked(pieces) if chunked else pieces)
            assert upload.status == status, (size, upload)
            if status == 413:
                assert b"4096" in upload.body  # the limit is named


# -- bodies that never finish arriving (slowloris after the head) -------------------------------


async def _sends_one_byte_then_waits(server: TestServer, head: bytes) -> tuple[int, float]:
    """Declare a 100000-byte body, send one byte of it; (status, seconds until closed)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        started = time.monotonic()
        writer.write(head + b"{")
        await writer.drain()
        response = await read_response(reader, writer, timeout=8)
        if response.status:
            await asyncio.wait_for(reader.read(), 8)  # then the server closes
        return response.status, time.monotonic() - started
    finally:
        await aclose(writer)


@pytest.mark.parametrize("keyed", [True, False])
async def test_an_api_body_that_stops_arriving_gets_408_and_the_connection_closed(
    keyed: bool,
) -> None:
    """Content-Length 100000, one byte sent, then nothing: 408 within WS_REQUEST_TIMEOUT (1 s
    here) and the connection closed (it stayed open for ever). Without a key: 401 at once."""
    async with run_server(make_settings(request_timeout=1)) as server:
        head = _head(length=100_000, extra=AUTH if keyed else "")
        status, took = await _sends_one_byte_then_waits(server, head)
        assert status == (408 if keyed else 401)
        assert took < 5


async def test_a_body_trickling_to_a_route_that_ignores_it_is_cut_at_the_timeout() -> None:
    """``POST /healthz`` is answered (405) without reading the body; the rest of a declared
    100000-byte body then trickles in a byte at a time, which kept uvicorn's keep-alive timer
    from ever firing. Now the whole request must have arrived within WS_REQUEST_TIMEOUT."""
    async with run_server(make_settings(request_timeout=1)) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            started = time.monotonic()
            writer.write(_head("/healthz", length=100_000))
            await writer.drain()
            response = await read_response(reader, writer, timeout=5)
            assert response.status == 405
            closed = False
            for _ in range(40):  # 40 x 0.2 s: far past the 1 s allowed
                try:
                    writer.write(b" ")
                    await writer.drain()
                    closed = await asyncio.wait_for(reader.read(), 0.2) == b""
                except TimeoutError:
                    continue
                except ConnectionError:
                    closed = True
                if closed:
                    break
            assert closed, "the server kept the connection open"
            assert time.monotonic() - started < 5
        finally:
            await aclose(writer)


async def test_200_stalled_bodies_are_all_closed_and_a_bystander_is_served(
    tmp_path: Path,
) -> None:
    """The issue's attack, scaled down: connections that each declare a 100000-byte body and
    send one byte. A bystander is served meanwhile, and the server closes every one of them
    after WS_REQUEST_TIMEOUT (with 408) instead of holding its descriptor for ever."""
    async with _process(tmp_path, request_timeout="1") as proc:
        conns = [await asyncio.open_connection("127.0.0.1", proc.port) for _ in range(200)]
        try:
            for i, (_, writer) in enumerate(conns):
                path = "/api/publish" if i % 2 else "/healthz"
                writer.write(_head(path, length=100_000, extra=AUTH) + b"{")
            assert await bystander_ok(proc.url)
            async with httpx.AsyncClient(timeout=5) as http:
                assert (await http.get(f"{proc.http}/healthz")).status_code == 200

            async def closed(reader: asyncio.StreamReader) -> bool:
                try:
                    async with asyncio.timeout(8):
                        while await reader.read(65536):
                            pass
                except ConnectionError:
                    pass
                return True

            results = await asyncio.gather(
                *(closed(reader) for reader, _ in conns), return_exceptions=True
            )
            assert results == [True] * len(conns)
        finally:
            for _, writer in conns:
                await aclose(writer)
        assert await bystander_ok(proc.url)


# -- under another server: the limits are the app's own ----------------------------------------


async def test_the_api_limits_hold_under_plain_uvicorn() -> None:
    """Served by uvicorn's own HTTP protocol (no GuardedHttpProtocol, as another ASGI server
    would): the middleware alone answers 401 before a 30 MiB body is sent, 413 for a declared
    body over the limit, and 408 for a body that stops arriving."""
    app = create_app(make_settings(request_timeout=1))
    async with serve_asgi(app, hub=app.state.hub) as port:
        pieces = _json_body(30 * MIB)
        length = sum(map(len, pieces))
        upload = await _upload(port, _head(length=length), pieces)
        assert upload.status == 401 and upload.sent < upload.total
        upload = await _upload(port, _head(length=length, extra=AUTH), pieces)
        assert upload.status == 413 and upload.sent < upload.total

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(_head(length=100_000, extra=AUTH) + b"{")
            response = await read_response(reader, writer, timeout=8)
            assert response.status == 408
            assert b"WS_REQUEST_TIMEOUT" in await asyncio.wait_for(reader.read(), 8)  # then EOF
        finally:
            await aclose(writer)


# -- headers of the pages, /metrics --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/admin", "/ws-test"])
async def test_the_pages_cannot_be_framed_or_sniffed(server: TestServer, path: str) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=5) as http:
        r = await http.get(path)
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["default-src"] == ["'none'"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("auth", "status"),
    [
        (None, 401),
        ("Bearer wrong", 401),
        (f"Bearer {API_KEY}", 401),  # the API key is not the metrics key
        ("Basic bWV0cmljcy1rZXk=", 401),
        ("Bearer metrics-key", 200),
    ],
)
async def test_metrics_need_the_metrics_key_when_one_is_set(auth: str | None, status: int) -> None:
    async with run_server(make_settings(metrics_key="metrics-key")) as server:
        headers = {"Authorization": auth} if auth else {}
        async with httpx.AsyncClient(base_url=server.http, timeout=5) as http:
            r = await http.get("/metrics", headers=headers)
        assert r.status_code == status
        if status == 200:
            assert "wshub_connections" in r.text
        else:
            assert "wshub_" not in r.text and "metrics-key" not in r.text
            assert r.headers["www-authenticate"] == "Bearer"


@pytest.fixture
def transport() -> str:
    """The HTTP side is the same on both endpoints: the native one (what `wshub serve` runs)."""
    return "native"
