"""A consumer that stopped reading gets its close code (issue "Nothing lost", item 5).

When the hub closes a slow consumer (1013, without draining), the close frame used to wait
behind the paused transport, and the socket was aborted ``CLOSE_TIMEOUT`` (5 s) later: a client
that resumed reading after that found the data the kernel held, then EOF (1006), never 1013.
Now wshub's own queued frames are dropped, the close frame goes right behind what the transport
holds, then a half-close, and the connection waits ``SLOW_CLOSE_TIMEOUT`` for the client.
"""

from __future__ import annotations

import asyncio

import pytest

from wshub import uvicorn_protocols
from wshub.testing import TestServer
from wshub.transport import protocol as native

from ..conftest import ServerFactory
from ..rawws import OP_CLOSE, RawWS

#: The native closing-handshake timeout, shortened so that the test can outwait it quickly.
SHORT_CLOSE_TIMEOUT = 0.2
SETTINGS = {"outbox_max_bytes": 64 * 1024, "outbox_max_messages": 100_000}


async def _stall(server: TestServer) -> RawWS:
    """A raw client that subscribes and stops reading, published to until the hub closes it
    as a slow consumer."""
    hub = server.hub
    stalled = await RawWS.connect(server.host, server.port, rcvbuf=4096)
    try:
        stalled.send_text('{"type":"subscribe","id":"s","payload":{"channel":"firehose"}}')
        async with server.connect() as reader:  # subscribed after the stalled client
            await reader.expect("welcome")
            await reader.request("subscribe", {"channel": "firehose"})
            blob = "x" * 8000
            for i in range(5000):  # up to 40 MB: the kernel may buffer a few MB
                await hub.publish("firehose", {"i": i, "blob": blob})
                await reader.expect("message")
                if hub.stats.overflows:
                    break
            assert hub.stats.overflows == 1
    except BaseException:
        stalled.close()
        raise
    return stalled


async def test_a_client_that_resumes_reading_after_being_closed_as_slow_finds_1013(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native, "CLOSE_TIMEOUT", SHORT_CLOSE_TIMEOUT)
    async with server_factory(**SETTINGS) as server:
        hub = server.hub
        stalled = await _stall(server)
        try:
            # The client pauses longer than the closing handshake's timeout before it reads
            # again (what it does, not an event the test could wait for).
            await asyncio.sleep(4 * SHORT_CLOSE_TIMEOUT)
            code = None
            for _ in range(10_000):
                try:
                    opcode, payload = await asyncio.wait_for(stalled.recv_frame(), 5)
                except asyncio.IncompleteReadError:
                    break  # EOF without a close frame: the bug
                if opcode == OP_CLOSE:
                    code = int.from_bytes(payload[:2], "big")
                    break
            assert code == 1013
            stalled.writer.write(b"\x88\x82\x00\x00\x00\x00\x03\xf5")  # the client's close reply
            await asyncio.wait_for(stalled.eof(), 5)  # then the server ends the connection
            assert await hub.wait_idle(5)
        finally:
            stalled.close()


async def test_a_slow_consumer_that_never_reads_again_is_disconnected_in_bounded_time(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for the client to read its close frame is bounded: on the ASGI transport the
    close used to wait for the client to drain, so a client that never did held its connection
    (and its place in the per-IP count) forever."""
    monkeypatch.setattr(native, "SLOW_CLOSE_TIMEOUT", SHORT_CLOSE_TIMEOUT, raising=False)
    monkeypatch.setattr(uvicorn_protocols, "SLOW_CLOSE_TIMEOUT", SHORT_CLOSE_TIMEOUT, raising=False)
    async with server_factory(**SETTINGS) as server:
        stalled = await _stall(server)
        try:
            assert await server.hub.wait_idle(5)
        finally:
            stalled.close()
