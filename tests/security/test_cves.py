"""Regression tests named after published WebSocket CVEs: each sends the published attack to a
real wshub server and checks that it survives and that a bystander connection does not notice.

The memory checks run against a real ``wshub serve`` process (tests/procs.py) and read its
resident size from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wshub.testing import TestServer

from ..conftest import ServerFactory
from ..procs import ServerProcess
from ..rawws import OP_CLOSE, OP_PONG, OP_TEXT, RawWS
from .rawhttp import aclose, bystander_ok, handshake_request, open_raw, raw_handshake, vm_rss_kib

OP_CONT, OP_PING = 0x0, 0x9
#: A frame with an all-zero masking key: the payload goes on the wire as is (allowed: the key
#: only has to be there), so large floods cost nothing to build.
ZERO_MASK = b"\x00\x00\x00\x00"


def _frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    return head + ZERO_MASK + payload


async def _close_code(ws: RawWS, timeout: float = 5.0) -> int | None:
    """Read until the server's close frame; its code (None if the TCP connection just ended)."""
    try:
        async with asyncio.timeout(timeout):
            payload = await ws.recv_until(OP_CLOSE)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


async def _pong(ws: RawWS, timeout: float = 30.0) -> bool:
    """Send a ping and wait for its pong: once it comes, the server has parsed everything sent
    before. False if the server closed the connection instead."""
    try:
        ws.writer.write(_frame(OP_PING, b"barrier"))
        await ws.writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                opcode, payload = await ws.recv_frame()
                if opcode == OP_PONG and payload == b"barrier":
                    return True
                if opcode == OP_CLOSE:
                    return False
    except (asyncio.IncompleteReadError, ConnectionError):
        return False


# -- CVE-2024-37890 (ws): a handshake with more headers than the server's limit crashed it -------


#: uvicorn's websockets-sansio protocol (the ASGI transport, and the native endpoint's fallback
#: for other paths) never answers a handshake that websockets refuses while parsing it (431 for
#: too many or too long headers): it does not look at ``handshake_exc``. The connection hangs, and
#: at shutdown uvicorn's ``send_500_response`` trips ``assert not self.eof_sent`` in websockets,
#: so ``Server.shutdown`` raises and the server does not shut down cleanly.
TRANSPORTS = [
    "native",
    "asgi",  # wshub.uvicorn_protocols.SafeWebSocketsProtocol answers refused handshakes
]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cve_2024_37890_ws_header_count_crash(server_factory: ServerFactory) -> None:
    """ws < 8.17.1 crashed (null dereference) on an upgrade request with more headers than
    ``server.maxHeadersCount`` (2000). wshub must refuse it, go on serving, and still shut
    down cleanly (leaving the ``async with``)."""
    async with server_factory() as server:
        async with server.connect() as bystander:
            await bystander.expect("welcome")
            request = handshake_request(
                server.host, server.port, headers=[(f"X-Flood-{i}", "v") for i in range(2500)]
            )
            attack = await raw_handshake(server.host, server.port, request, timeout=2)
            try:
                assert attack.status == 431
                # read() returns at EOF: the server closed the connection after the 431
                assert b"headers" in await asyncio.wait_for(attack.reader.read(), 3)
            finally:
                await attack.aclose()
            assert (await bystander.request("ping"))["type"] == "pong"
            assert await bystander_ok(server.url)
            assert len(server.hub.sessions) == 1  # the bystander; the attack never became one


# -- CVE-2018-1000518 (websockets): no limit on the size of a decompressed message -----------


def _deflate_bomb(inflated: int) -> bytes:
    """A raw-deflate (permessage-deflate) payload that inflates to ``inflated`` zero bytes,
    built a MiB at a time so the test itself stays small."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 20)
    parts = [squeeze.compress(block) for _ in range(inflated >> 20)]
    parts.append(squeeze.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]  # RFC 7692: without the trailing 00 00 ff ff


async def test_cve_2018_1000518_websockets_decompression_bomb(
    server_factory: ServerFactory,
) -> None:
    """websockets < 5.0 inflated compressed messages without a size limit. With compression off
    (``WS_COMPRESSION=off``, the default; ``wshub serve`` never compresses on the ASGI endpoint)
    permessage-deflate is not negotiated: the offer is ignored, and a compressed (RSV1) frame is
    a protocol error (1002), never inflated. With it negotiated, the bound on inflating is
    tests/test_compression.py's bomb test."""
    bomb = _deflate_bomb(60 << 20)  # 60 MiB of zeros in under 64 KiB
    assert len(bomb) < 65_536 - 1024
    async with server_factory(compression="off") as server:
        offer = [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]
        request = handshake_request(server.host, server.port, headers=offer)
        response = await raw_handshake(server.host, server.port, request)
        try:
            assert response.status == 101
            assert "sec-websocket-extensions" not in response.headers  # compression refused
            ws = RawWS(response.reader, response.writer)
            opcode, _ = await ws.recv_frame()
            assert opcode == OP_TEXT  # welcome
            before = vm_rss_kib(os.getpid())
            ws.writer.write(_frame(OP_TEXT, bomb, rsv1=True))
            assert await _close_code(ws) == 1002
            assert vm_rss_kib(os.getpid()) - before < 30 * 1024  # nothing near 60 MiB inflated
        finally:
            await response.aclose()
        assert await bystander_ok(server.url)
        assert await server.hub.wait_idle(5)


# -- CVE-2026-48779 (ws): tiny fragments pin far more memory than the message size limit ------
#
# Measured on a real ``wshub serve`` process. One read of tiny frames costs the server a few MiB
# for a moment (the sans-I/O parser returns every frame of the read as an object), and RSS does
# not shrink afterwards; the bounds below leave room for that and catch what is *kept*.


@pytest.fixture
async def server_process(transport: str, tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """A real ``wshub serve`` (memory store) whose memory can be measured on its own."""
    proc = ServerProcess(tmp_path, transport=transport, store_url="memory://")
    await proc.start()
    try:
        yield proc
    finally:
        await proc.stop()


@contextlib.asynccontextmanager
async def _attackers(proc: ServerProcess, n: int) -> AsyncIterator[list[RawWS]]:
    conns = [await RawWS.connect("127.0.0.1", proc.port) for _ in range(n)]
    try:
        for ws in conns:
            opcode, _ = await ws.recv_frame()
            assert opcode == OP_TEXT  # welcome
        yield conns
    finally:
        for ws in conns:
            await aclose(ws.writer)


def _rss(proc: ServerProcess) -> int:
    assert proc.proc is not None
    return vm_rss_kib(proc.proc.pid)


async def _send(ws: RawWS, data: bytes, times: int) -> None:
    for _ in range(times):
        ws.writer.write(data)
        await ws.writer.drain()


async def test_cve_2026_48779_ws_fragment_flood_past_the_size_limit_closes_with_1009(
    server_process: ServerProcess,
) -> None:
    """One-byte fragments of a message that never ends count against ``WS_MAX_MESSAGE_SIZE``
    (64 KiB): the connection is closed with 1009 once they pass it."""
    proc = server_process
    async with _attackers(proc, 1) as (ws,):
        assert await bystander_ok(proc.url)
        before = _rss(proc)
        ws.writer.write(_frame(OP_TEXT, b"x", fin=False))
        ws.writer.write(_frame(OP_CONT, b"y", fin=False) * 70_000)
        assert await _close_code(ws, timeout=30) == 1009
        assert _rss(proc) - before < 16 * 1024
    assert await bystander_ok(proc.url)


# The two attacks of the advisory that the size limit alone does not stop: empty fragments never
# reach it, and 2-byte fragments up to it cost far more than their bytes if each is kept as an
# object. The native endpoint collects fragments in one bytearray and allows MAX_FRAGMENTS per
# message (1009 past it). uvicorn's websockets-sansio protocol, which the ASGI transport runs on,
# keeps a list with one bytes object per fragment and no count limit.
FLOOD_TRANSPORTS = [
    "native",
    "asgi",  # wshub.uvicorn_protocols.SafeWebSocketsProtocol caps fragments
]


@pytest.mark.parametrize("transport", FLOOD_TRANSPORTS)
async def test_cve_2026_48779_ws_fragment_flood_of_empty_fragments_is_bounded(
    server_process: ServerProcess,
) -> None:
    """An endless message of empty continuation frames (6 bytes each on the wire) must be
    closed, or cost no memory: after a first 300k frames, 600k more may not add 2.5 MiB (as list
    entries they add ~6.5 MiB)."""
    proc = server_process
    empty = _frame(OP_CONT, fin=False) * 10_000
    async with _attackers(proc, 1) as (ws,):
        ws.writer.write(_frame(OP_TEXT, b"x", fin=False))
        with contextlib.suppress(ConnectionError):  # closed by the server: what a fix may do
            await _send(ws, empty, 30)
        warm = _rss(proc) if await _pong(ws) else None
        with contextlib.suppress(ConnectionError):
            await _send(ws, empty, 60)
        still_open = await _pong(ws)
        grown = _rss(proc) - warm if warm is not None else 0
        assert await bystander_ok(proc.url)
    assert not still_open or grown < 2.5 * 1024, f"+{grown} KiB for one unfinished message"


@pytest.mark.parametrize("transport", FLOOD_TRANSPORTS)
async def test_cve_2026_48779_ws_fragment_flood_under_the_size_limit_is_bounded(
    server_process: ServerProcess,
) -> None:
    """20 connections each send 64 KiB as 2-byte fragments of a message they never finish
    (closing them for too many fragments is fine). What the server holds for them must stay
    near 20 x 64 KiB (1.25 MiB), not 20 times that (~35 MiB)."""
    proc = server_process
    flood = _frame(OP_TEXT, b"xx", fin=False) + _frame(OP_CONT, b"yy", fin=False) * 32_000
    async with _attackers(proc, 20) as conns:
        assert await bystander_ok(proc.url)
        before = _rss(proc)
        for ws in conns:
            ws.writer.write(flood)
        for ws in conns:
            await _pong(ws)  # answered, or the connection was closed: either way, parsed
        grown = _rss(proc) - before
        assert await bystander_ok(proc.url)
    assert grown < 8 * 1024, f"+{grown} KiB for 20 unfinished 64 KiB messages"


@pytest.mark.parametrize("transport", ["native"])  # MAX_FRAGMENTS is the native endpoint's
async def test_more_fragments_than_the_native_endpoint_allows_close_with_1009(
    server_process: ServerProcess,
) -> None:
    async with _attackers(server_process, 1) as (ws,):
        ws.writer.write(_frame(OP_TEXT, b"x", fin=False) + _frame(OP_CONT, fin=False) * 1100)
        assert await _close_code(ws) == 1009
    assert await bystander_ok(server_process.url)


async def test_a_bystander_is_served_while_a_fragment_flood_goes_on(server: TestServer) -> None:
    async with server.connect() as bystander, open_raw(server.host, server.port) as ws:
        await bystander.expect("welcome")
        await ws.recv_frame()
        ws.writer.write(_frame(OP_TEXT, b"x", fin=False))
        for _ in range(20):
            ws.writer.write(_frame(OP_CONT, fin=False) * 5_000)
            assert (await bystander.request("ping"))["type"] == "pong"
