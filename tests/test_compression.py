"""permessage-deflate on the native transport (``WS_COMPRESSION=deflate``), against real servers
on loopback: negotiation (always without context takeover), one compressed form per publication
shared by every compressed subscriber, plain frames for the others and for small messages,
bounded inflation of what clients send (decompression bombs end in 1009), and nothing of it with
``WS_COMPRESSION=off``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

import wshub.protocol
from wshub.testing import TestServer, run_server

from .conftest import make_settings
from .rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWS, client_frame, handshake_request
from .security.rawhttp import aclose, bystander_ok, read_response, vm_rss_kib

OFFER = "permessage-deflate; client_max_window_bits"
ACCEPTED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
OP_CONT = 0x0
TIMEOUT = 5.0


@dataclass
class WireFrame:
    """A server frame as it came off the wire."""

    raw: bytes  # header and payload, exactly as sent
    first: int  # the first header byte: FIN, RSV1-3, opcode
    payload: bytes

    @property
    def opcode(self) -> int:
        return self.first & 0x0F

    @property
    def compressed(self) -> bool:
        return bool(self.first & 0x40)

    def text(self) -> bytes:
        """The message, inflated when compressed (RFC 7692 7.2.2)."""
        if not self.compressed:
            return self.payload
        return zlib.decompressobj(-15).decompress(self.payload + b"\x00\x00\xff\xff")


class Client:
    """A raw client that keeps the server's frames byte for byte."""

    def __init__(self, ws: RawWS, extensions: str | None) -> None:
        self.ws = ws
        self.extensions = extensions

    async def frame(self) -> WireFrame:
        async with asyncio.timeout(TIMEOUT):
            reader = self.ws.reader
            head = await reader.readexactly(2)
            n = head[1] & 0x7F
            if n == 126:
                ext = await reader.readexactly(2)
                (n,) = struct.unpack("!H", ext)
                head += ext
            elif n == 127:
                ext = await reader.readexactly(8)
                (n,) = struct.unpack("!Q", ext)
                head += ext
            payload = await reader.readexactly(n)
        return WireFrame(head + payload, head[0], payload)

    async def message(self, type_: str) -> tuple[WireFrame, dict[str, Any]]:
        """The next text frame carrying a message of ``type_`` (others are skipped)."""
        while True:
            f = await self.frame()
            if f.opcode == OP_TEXT:
                msg = orjson.loads(f.text())
                if msg["type"] == type_:
                    return f, msg

    async def close_code(self) -> int | None:
        """Read until the server's close frame: its code (None if the connection just ended)."""
        try:
            while True:
                f = await self.frame()
                if f.opcode == OP_CLOSE:
                    code: int = struct.unpack("!H", f.payload[:2])[0]
                    return code
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    def send(self, data: bytes, *, compress: bool = False) -> None:
        if compress:
            self.ws.writer.write(client_frame(deflate(data), OP_TEXT, rsv=4))
        else:
            self.ws.writer.write(client_frame(data, OP_TEXT))

    async def pong(self) -> None:
        """A ping answered: the server has handled everything sent before it."""
        self.ws.send_frame(OP_PING, b"barrier")
        while (await self.frame()).opcode != OP_PONG:
            pass


def deflate(data: bytes) -> bytes:
    squeeze = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (squeeze.compress(data) + squeeze.flush(zlib.Z_SYNC_FLUSH))[:-4]


@contextlib.asynccontextmanager
async def raw_client(
    server: TestServer, offer: str | None = OFFER, user: str = "alice"
) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        headers = [("Sec-WebSocket-Extensions", offer)] if offer else []
        path = f"{server.settings.path}?token={server.token(user)}"
        writer.write(handshake_request(server.host, server.port, path, headers))
        response = await read_response(reader, writer, TIMEOUT)
        assert response.status == 101
        yield Client(RawWS(reader, writer), response.headers.get("sec-websocket-extensions"))
    finally:
        await aclose(writer)


@contextlib.asynccontextmanager
async def deflate_server(**overrides: Any) -> AsyncIterator[TestServer]:
    settings = make_settings(transport="native", compression="deflate", **overrides)
    async with run_server(settings) as server:
        yield server


async def subscribe(client: Client, channel: str) -> None:
    client.send(orjson.dumps({"type": "subscribe", "payload": {"channel": channel}}))
    await client.message("subscribed")


@pytest.fixture
def deflate_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many times (and how many bytes) a frame was compressed."""
    calls: list[int] = []
    real = wshub.protocol._ws_deflate_frame

    def counting(payload: bytes, opcode: int = OP_TEXT) -> bytes:
        calls.append(len(payload))
        return real(payload, opcode)

    monkeypatch.setattr(wshub.protocol, "_ws_deflate_frame", counting)
    yield calls


# -- negotiation --------------------------------------------------------------------------------


async def test_an_offer_gets_deflate_without_context_takeover() -> None:
    async with deflate_server() as server, raw_client(server) as client:
        assert client.extensions == ACCEPTED
        frame, welcome = await client.message("welcome")
        assert "deflate" in welcome["payload"]["features"]
        assert not frame.compressed  # under WS_COMPRESSION_MIN_SIZE


@pytest.mark.parametrize(
    ("offer", "accepted"),
    [
        ("permessage-deflate", ACCEPTED),
        ("permessage-deflate; client_no_context_takeover; server_no_context_takeover", ACCEPTED),
        ("permessage-deflate; client_max_window_bits=10", ACCEPTED),
        ("permessage-deflate; server_max_window_bits=15", f"{ACCEPTED}; server_max_window_bits=15"),
        # the server compresses once, with the full window, for everyone: a smaller one is
        # declined, and the next offer taken
        ("permessage-deflate; server_max_window_bits=10", None),
        ("permessage-deflate; server_max_window_bits=10, permessage-deflate", ACCEPTED),
        ("permessage-deflate; server_max_window_bits=16", None),
        ("permessage-deflate; server_max_window_bits", None),
        ("permessage-deflate; client_max_window_bits=7", None),
        ("permessage-deflate; server_no_context_takeover=1", None),
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
        ("permessage-deflate; x_unknown", None),
        ("x-webkit-deflate-frame", None),
        ("permessage-deflate; ;;", None),  # malformed: no compression, the handshake still works
    ],
)
async def test_offers_are_accepted_or_declined_as_rfc_7692_says(
    offer: str, accepted: str | None
) -> None:
    async with deflate_server() as server, raw_client(server, offer) as client:
        assert client.extensions == accepted
        await client.message("welcome")


async def test_with_compression_off_nothing_is_negotiated_and_rsv1_is_a_protocol_error() -> None:
    async with run_server(make_settings(transport="native")) as server:
        assert server.settings.compression == "off"
        async with raw_client(server) as client:
            assert client.extensions is None
            _, welcome = await client.message("welcome")
            assert "deflate" not in welcome["payload"]["features"]
            await subscribe(client, "news")
            await server.hub.publish("news", {"text": "x" * 4096})
            frame, _ = await client.message("message")
            assert not frame.compressed
            client.send(b'{"type": "ping"}', compress=True)
            assert await client.close_code() == 1002


# -- compressed once ------------------------------------------------------------------------------


async def test_a_publication_is_compressed_once_for_every_compressed_subscriber(
    deflate_calls: list[int],
) -> None:
    data = {"items": [{"id": i, "name": f"item-{i}", "tags": ["a", "b"]} for i in range(60)]}
    async with (
        deflate_server() as server,
        raw_client(server, user="a") as a,
        raw_client(server, user="b") as b,
        raw_client(server, offer=None, user="c") as plain,
    ):
        assert (a.extensions, b.extensions, plain.extensions) == (ACCEPTED, ACCEPTED, None)
        for client in (a, b, plain):
            await subscribe(client, "news")
        deflate_calls.clear()
        await server.hub.publish("news", data)
        (fa, ma), (fb, _), (fp, mp) = [await c.message("message") for c in (a, b, plain)]

        assert fa.compressed and fb.compressed and not fp.compressed
        assert fa.raw == fb.raw  # the very same bytes on both sockets
        assert fa.text() == fp.payload  # inflated: the plain subscriber's JSON, byte for byte
        assert ma["payload"]["data"] == mp["payload"]["data"] == data
        assert len(fa.raw) < len(fp.raw) / 4
        assert deflate_calls == [len(fp.payload)]  # compressed once, for both


async def test_frames_under_the_minimum_size_go_uncompressed(deflate_calls: list[int]) -> None:
    async with deflate_server(compression_min_size=1024) as server, raw_client(server) as client:
        await subscribe(client, "news")
        deflate_calls.clear()
        await server.hub.publish("news", {"text": "small " * 10})
        small, _ = await client.message("message")
        await server.hub.publish("news", {"text": "large " * 400})
        large, _ = await client.message("message")
        assert not small.compressed and small.first == 0x81
        assert large.compressed and large.first == 0xC1
        assert len(deflate_calls) == 1 and deflate_calls[0] >= 1024


async def test_a_batch_of_publications_in_one_turn_arrives_compressed_and_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches: list[int] = []
    real = wshub.protocol.FrameBatch.wire_deflate

    def recorded(batch: wshub.protocol.FrameBatch, min_size: int) -> bytes:
        batches.append(len(batch.frames))
        return real(batch, min_size)

    monkeypatch.setattr(wshub.protocol.FrameBatch, "wire_deflate", recorded)
    async with deflate_server(compression_min_size=300) as server, raw_client(server) as client:
        await subscribe(client, "feed")
        published = [{"n": n, "text": ("x" if n % 2 else "y" * 300)} for n in range(6)]
        # published together: delivered in one FrameBatch (or a few) for the channel
        await asyncio.gather(*(server.hub.publish("feed", data) for data in published))
        got = [await client.message("message") for _ in published]
        assert sorted((m["payload"]["data"] for _, m in got), key=lambda d: d["n"]) == published
        assert [f.compressed for f, _ in got] == [len(f.text()) >= 300 for f, _ in got]
        assert {f.compressed for f, _ in got} == {True, False}
        assert max(batches) > 1  # several frames in one batch, each in its own form


# -- incoming -------------------------------------------------------------------------------------


async def test_compressed_client_messages_are_inflated_whole_or_fragmented() -> None:
    async with deflate_server() as server, raw_client(server) as client:
        await client.message("welcome")
        client.send(b'{"type": "ping", "id": "one"}', compress=True)
        _, pong = await client.message("pong")
        assert pong.get("id") == "one"
        # a compressed message in three frames: RSV1 on the first only
        body = deflate(b'{"type": "ping", "id": "' + b"f" * 60 + b'"}')
        third = len(body) // 3
        client.ws.writer.write(client_frame(body[:third], OP_TEXT, fin=False, rsv=4))
        client.ws.writer.write(client_frame(body[third : 2 * third], OP_CONT, fin=False))
        client.ws.writer.write(client_frame(body[2 * third :], OP_CONT))
        _, pong = await client.message("pong")
        assert pong.get("id") == "f" * 60
        client.send(b'{"type": "ping", "id": "plain"}')  # uncompressed messages still work
        _, pong = await client.message("pong")
        assert pong.get("id") == "plain"


@pytest.mark.parametrize(
    "frames",
    [
        [client_frame(b"", OP_PING, rsv=4)],  # RSV1 on a control frame
        [  # RSV1 on a continuation frame
            client_frame(deflate(b'{"type"')[:2], OP_TEXT, fin=False, rsv=4),
            client_frame(b"x", OP_CONT, rsv=4),
        ],
        [client_frame(b"x", OP_TEXT, rsv=2)],  # RSV2: no extension uses it
    ],
)
async def test_rsv_bits_where_permessage_deflate_allows_none_fail_with_1002(
    frames: list[bytes],
) -> None:
    async with deflate_server() as server, raw_client(server) as client:
        await client.message("welcome")
        client.ws.writer.write(b"".join(frames))
        assert await client.close_code() == 1002


async def test_data_that_is_not_deflate_fails_with_1007() -> None:
    async with deflate_server() as server, raw_client(server) as client:
        await client.message("welcome")
        client.ws.writer.write(client_frame(b"\xff\xff\xff\xff", OP_TEXT, rsv=4))
        assert await client.close_code() == 1007


def _bomb(inflated: int) -> bytes:
    """Raw deflate of ``inflated`` zero bytes, a MiB at a time (what CVE-2018-1000518 sent)."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 20)
    parts = [squeeze.compress(block) for _ in range(inflated >> 20)]
    parts.append(squeeze.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]


@pytest.mark.parametrize("fragmented", [False, True])
async def test_a_decompression_bomb_closes_with_1009_having_inflated_no_more_than_the_limit(
    fragmented: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CVE-2018-1000518 class: 200 MiB of zeros in 200 KiB... here in under WS_MAX_MESSAGE_SIZE
    (64 KiB) compressed: at most the limit (+1 byte) is ever inflated, then 1009."""
    bomb = _bomb(60 << 20)  # 60 MiB in ~60 KiB
    assert len(bomb) < 65_536 - 1024
    inflated: list[int] = []
    real = zlib.decompressobj

    class Measured:
        def __init__(self, wbits: int) -> None:
            self._d = real(wbits)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self._d.decompress(data, max_length)
            inflated.append(len(out))
            return out

    monkeypatch.setattr("wshub.transport.deflate.zlib.decompressobj", Measured)
    async with deflate_server() as server, raw_client(server) as client:
        await client.message("welcome")
        before = vm_rss_kib(os.getpid())
        if fragmented:
            half = len(bomb) // 2
            client.ws.writer.write(client_frame(bomb[:half], OP_TEXT, fin=False, rsv=4))
            client.ws.writer.write(client_frame(bomb[half:], OP_CONT))
        else:
            client.ws.writer.write(client_frame(bomb, OP_TEXT, rsv=4))
        assert await client.close_code() == 1009
        assert inflated and max(inflated) <= server.settings.max_message_size + 1
        assert vm_rss_kib(os.getpid()) - before < 30 * 1024  # nothing near 60 MiB
        assert await bystander_ok(server.url)


# -- a real client library ------------------------------------------------------------------------


async def test_the_websockets_client_negotiates_it_and_round_trips_large_messages() -> None:
    """python-websockets offers permessage-deflate by default: a library client interoperates
    (it inflates what the server compressed once, and compresses what it sends)."""
    async with deflate_server() as server, server.connect(user="alice") as client:
        extensions = client.ws.protocol.extensions
        assert [type(e).__name__ for e in extensions] == ["PerMessageDeflate"]
        assert extensions[0].remote_no_context_takeover  # type: ignore[attr-defined]
        assert extensions[0].local_no_context_takeover  # type: ignore[attr-defined]
        await client.request("subscribe", {"channel": "news"})
        data = {"text": "hello " * 1000}
        await client.send("publish", {"channel": "news", "data": data}, id="p")
        received = {}
        while len(received) < 2:  # the echo of the publication, and the reply to it
            msg = await client.recv()
            received[msg["type"]] = msg
        assert received.keys() == {"message", "published"}
        assert received["message"]["payload"]["data"] == data


# -- the plain ASGI endpoint ----------------------------------------------------------------------


async def test_wshub_serve_on_the_asgi_endpoint_never_compresses() -> None:
    """WS_COMPRESSION is the native transport's: ``wshub serve`` runs the ASGI endpoint with
    uvicorn's ``ws_per_message_deflate=False``."""
    async with (
        run_server(make_settings(transport="asgi", compression="deflate")) as server,
        raw_client(server) as client,
    ):
        assert client.extensions is None
        await client.message("welcome")


async def test_uvicorns_own_protocol_compresses_per_socket_when_its_flag_is_on() -> None:
    """An app that mounts WebSocketApp under uvicorn's websockets-sansio (its default
    ``--ws-per-message-deflate`` true) gets uvicorn's permessage-deflate: with context takeover,
    a compressor per socket (what docs/deployment.md says)."""
    settings = make_settings(transport="asgi")
    async with run_server(settings, ws_per_message_deflate=True) as server:
        async with raw_client(server) as client:
            assert client.extensions is not None
            assert client.extensions.startswith("permessage-deflate")
            assert "server_no_context_takeover" not in client.extensions
            _, welcome = await client.message("welcome")
            assert "deflate" not in welcome["payload"]["features"]
