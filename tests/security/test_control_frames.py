"""Frames that are not messages: pings, pongs and continuation frames cost the rate limit too.

One unauthenticated connection sending empty pings (6 bytes each) used to hold the server at
100% CPU and a bystander's round trip at seconds, and was never disconnected: every ping got its
pong and counted nothing. Now every control frame costs a token of the connection's rate limit
(``Session.charge``): past it a ping is not answered, and persistent abuse closes with 1008.
Pongs for a client that never reads count against its outbound limit (1013), and continuation
frames cost bytes against the size limit and tokens against the rate limit, so a large message
in many fragments passes while floods of tiny fragments are closed.

Every test runs on both endpoints (``transport`` fixture): the native protocol and plain ASGI
(on ``wshub.uvicorn_protocols.SafeWebSocketsProtocol``).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time

import pytest

from wshub.testing import TestClient, TestServer

from ..conftest import ServerFactory
from ..rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWS
from .rawhttp import open_raw

OP_CONT = 0x0
#: An all-zero masking key: the payload goes on the wire as is, so floods cost nothing to build.
ZERO_MASK = b"\x00\x00\x00\x00"
#: A bystander's ping round trip during an attack: far above normal (under 10 ms), far below
#: what the floods caused (seconds).
BYSTANDER_BOUND = 1.0


def _frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    return head + ZERO_MASK + payload


async def _close_code(ws: RawWS, timeout: float) -> int | None:
    """Read (pongs, errors...) until the server's close frame; its code, or None at EOF."""
    try:
        async with asyncio.timeout(timeout):
            payload = await ws.recv_until(OP_CLOSE)
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        return None
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


async def _flood(ws: RawWS, chunk: bytes, times: int, stop: asyncio.Future[object]) -> None:
    """Send ``chunk`` up to ``times`` times, until ``stop`` is done or the server hangs up."""
    with contextlib.suppress(ConnectionError):
        for _ in range(times):
            if stop.done():
                return
            ws.writer.write(chunk)
            await ws.writer.drain()


async def _worst_round_trip(bystander: TestClient, attack: asyncio.Future[object]) -> float:
    """The bystander's slowest ``ping`` round trip while ``attack`` runs (at least one)."""
    worst = 0.0
    for i in range(10_000):
        started = time.perf_counter()
        reply = await bystander.request("ping", id=f"b{i}")
        assert reply["type"] == "pong"
        worst = max(worst, time.perf_counter() - started)
        if attack.done():
            break
    return worst


async def _attack(server: TestServer, chunk: bytes, times: int) -> tuple[int | None, float]:
    """Flood one raw connection with ``chunk`` while a bystander pings: the attacker's close
    code and the bystander's worst round trip."""
    async with server.connect() as bystander, open_raw(server.host, server.port) as attacker:
        await bystander.expect("welcome")
        opcode, _ = await attacker.recv_frame()
        assert opcode == OP_TEXT  # welcome
        closed = asyncio.ensure_future(_close_code(attacker, timeout=20))
        flooding = asyncio.ensure_future(_flood(attacker, chunk, times, closed))
        try:
            worst = await _worst_round_trip(bystander, flooding)
            code = await closed
        finally:
            flooding.cancel()
            closed.cancel()
        assert (await bystander.request("ping", id="after"))["type"] == "pong"
    return code, worst


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG], ids=["ping", "pong"])
async def test_a_flood_of_empty_control_frames_is_closed_with_1008(
    server: TestServer, opcode: int
) -> None:
    """Up to 6 MB of empty pings (or unsolicited pongs) from an unauthenticated connection: the
    rate limit (20/s, burst 40) applies to them as to messages."""
    code, worst = await _attack(server, _frame(opcode) * 10_000, 100)
    assert code == 1008
    assert worst < BYSTANDER_BOUND, f"bystander round trip {worst:.3f} s"
    assert await server.hub.wait_idle(5)


async def test_pings_within_the_rate_limit_are_answered_and_over_it_are_not(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(rate_limit=1, rate_burst=5) as server:
        async with open_raw(server.host, server.port) as ws:
            await ws.recv_frame()  # welcome
            for i in range(8):  # 5 in the burst, 3 over it (not yet abuse: 3 < 5 strikes)
                ws.writer.write(_frame(OP_PING, b"p%d" % i))
            ws.send_text('{"type":"ping","id":"barrier"}')  # over the limit too: an error
            pongs = []
            while True:
                opcode, payload = await asyncio.wait_for(ws.recv_frame(), 5)
                if opcode == OP_PONG:
                    pongs.append(payload)
                elif opcode == OP_TEXT:
                    assert b"rate_limited" in payload
                    break
            assert pongs == [b"p%d" % i for i in range(5)]


async def test_pongs_for_a_client_that_never_reads_count_against_its_outbound_limit(
    server_factory: ServerFactory,
) -> None:
    """Pings with 125-byte payloads and no reading: their pongs fill the outbound queue like
    any frame, and the client is closed as a slow consumer instead of growing it."""
    settings = {"outbox_max_bytes": 64 * 1024, "rate_limit": 1e9, "rate_burst": 10**9}
    async with server_factory(**settings) as server:
        hub = server.hub
        stalled = await RawWS.connect(server.host, server.port, rcvbuf=4096)
        try:
            chunk = _frame(OP_PING, b"x" * 125) * 1000  # 131 KB of pings, 127 KB of pongs
            for _ in range(300):  # the kernel may buffer a few MB on loopback
                stalled.writer.write(chunk)
                await stalled.writer.drain()
                if hub.stats.overflows:
                    break
            assert hub.stats.overflows == 1
            assert await _close_code(stalled, timeout=10) == 1013  # once it reads, at the end
        finally:
            stalled.close()


# -- fragments ----------------------------------------------------------------------------


async def test_a_message_in_thousands_of_fragments_within_the_size_limit_is_delivered(
    server_factory: ServerFactory,
) -> None:
    """4,096 fragments of 64 bytes (256 KiB) under a 1 MiB limit: the old cap of 1,024
    fragments closed it with 1009. Charged 64 bytes a fragment, it costs 512 KiB."""
    async with server_factory(max_message_size=1 << 20) as server:
        async with open_raw(server.host, server.port) as ws:
            await ws.recv_frame()  # welcome
            text = b'{"type":"ping","id":"big","payload":{"pad":"' + b"x" * (4096 * 64 - 47)
            text += b'"}}'
            assert len(text) == 4096 * 64
            parts = [text[i : i + 64] for i in range(0, len(text), 64)]
            data = _frame(OP_TEXT, parts[0], fin=False)
            data += b"".join(_frame(OP_CONT, p, fin=False) for p in parts[1:-1])
            data += _frame(OP_CONT, parts[-1])
            ws.writer.write(data)
            opcode, payload = await asyncio.wait_for(ws.recv_frame(), 10)
            assert (opcode, b'"pong"' in payload, b'"big"' in payload) == (OP_TEXT, True, True)


async def test_empty_fragments_reach_the_size_limit_and_close_with_1009(
    server: TestServer,
) -> None:
    """Empty continuation frames add no bytes but cost 64 each: under the 64 KiB default, a
    message ends after 1,024 of them."""
    async with open_raw(server.host, server.port) as ws:
        await ws.recv_frame()  # welcome
        ws.writer.write(_frame(OP_TEXT, b"{", fin=False) + _frame(OP_CONT, fin=False) * 1100)
        assert await _close_code(ws, timeout=5) == 1009


async def test_a_flood_of_many_fragment_messages_is_closed_with_1008(
    server: TestServer,
) -> None:
    """30 messages of 1,000 empty fragments each: 30 messages are within the burst (40), but
    every 256 fragments cost a token too, so the flood is persistent abuse."""
    message = (
        _frame(OP_TEXT, b'{"type":"ping"', fin=False)
        + _frame(OP_CONT, fin=False) * 1000
        + _frame(OP_CONT, b"}")
    )
    code, worst = await _attack(server, message, 30)
    assert code == 1008
    assert worst < BYSTANDER_BOUND, f"bystander round trip {worst:.3f} s"
