"""Abuse of the opening handshake: oversized headers, half-sent requests (slowloris), and floods
of connections, against a real server on both transports, each with a bystander client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from wshub.testing import run_server

from ..conftest import ServerFactory, make_settings
from .rawhttp import aclose, bystander_ok, handshake_request, raw_handshake

TRANSPORTS = [
    "native",
    "asgi",  # wshub.uvicorn_protocols.SafeWebSocketsProtocol answers refused handshakes
]
BIG_HEADER = [("X-Big", "a" * (64 * 1024 + 1))]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_64_kib_header_is_refused_with_431_and_the_connection_closed(
    server_factory: ServerFactory,
) -> None:
    async with server_factory() as server:
        request = handshake_request(server.host, server.port, headers=BIG_HEADER)
        response = await raw_handshake(server.host, server.port, request, timeout=2)
        try:
            assert response.status == 431
            assert b"8192 bytes" in await asyncio.wait_for(response.reader.read(), 3)  # then EOF
        finally:
            await response.aclose()
        assert await bystander_ok(server.url)
        assert server.hub.sessions == {}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_handshake_still_open_at_shutdown_does_not_break_the_shutdown(
    server_factory: ServerFactory,
) -> None:
    """The attacker keeps its connection open while the server shuts down: leaving the
    ``async with`` (uvicorn's shutdown and the hub's drain) must not raise."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with server_factory() as server:
            _, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(handshake_request(server.host, server.port, headers=BIG_HEADER))
            assert await bystander_ok(server.url)  # the attack was read meanwhile
    finally:
        if writer is not None:
            await aclose(writer)


async def test_a_single_8_kib_header_is_accepted(server_factory: ServerFactory) -> None:
    """Below websockets' line limit (8 KiB): big cookies and tokens still work."""
    async with server_factory() as server:
        request = handshake_request(server.host, server.port, headers=[("Cookie", "c" * 8000)])
        response = await raw_handshake(server.host, server.port, request)
        await response.aclose()
        assert response.status == 101


# -- slowloris ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _half_open(
    host: str, port: int, n: int
) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    conns = [await asyncio.open_connection(host, port) for _ in range(n)]
    try:
        yield conns
    finally:
        for _, writer in conns:
            await aclose(writer)


async def test_slowloris_half_handshakes_do_not_stop_a_normal_client(
    server_factory: ServerFactory,
) -> None:
    """200 connections send a request line and then one header byte at a time; between two
    bytes a normal client connects, is welcomed and gets its pong each time."""
    async with server_factory() as server:
        async with _half_open(server.host, server.port, 200) as conns:
            for _, writer in conns:
                writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            for _ in range(5):
                for _, writer in conns:
                    writer.write(b"a")
                started = time.monotonic()
                assert await bystander_ok(server.url, timeout=5)
                assert time.monotonic() - started < 2
            assert all(not reader.at_eof() for reader, _ in conns)
        assert await server.hub.wait_idle(5)


async def test_a_half_sent_handshake_is_closed_by_the_server() -> None:
    """With uvicorn's idle timeout at 1 s, a connection that sent half a request line and then
    nothing must be closed within a few seconds."""
    async with run_server(make_settings(), timeout_keep_alive=1) as server:
        async with _half_open(server.host, server.port, 1) as [(reader, writer)]:
            writer.write(b"GET /ws HTT")
            assert await asyncio.wait_for(reader.read(), 2.5) == b""


# -- connection flood --------------------------------------------------------------------------


async def test_a_flood_of_500_connections_leaves_the_server_responsive(
    server_factory: ServerFactory,
) -> None:
    async with server_factory() as server:
        host, port = server.host, server.port

        async def connect() -> int:
            response = await raw_handshake(host, port, handshake_request(host, port), timeout=20)
            responses.append(response)
            return response.status

        responses: list = []
        try:
            statuses = await asyncio.gather(*(connect() for _ in range(500)))
            assert statuses == [101] * 500
            assert await bystander_ok(server.url)
            assert len(server.hub.sessions) == 500
        finally:
            for response in responses:
                await response.aclose()
        assert await server.hub.wait_idle(10)
        assert await bystander_ok(server.url)
