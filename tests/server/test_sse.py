"""The HTTP fallback (protocol 1.1): an event stream for server->client envelopes and POSTs for
the other way, through real servers on loopback and httpx streaming clients."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import websockets

from wshub.auth.jwt import issue_token
from wshub.testing import TestServer, run_server

from ..conftest import SECRET, make_settings
from ..sse_client import NoUpgradeProxy, open_stream


def _sse(server: TestServer, port: int | None = None) -> str:
    return f"http://127.0.0.1:{port or server.port}{server.settings.path}/sse"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    timeout = httpx.Timeout(5.0, read=None)  # the tests put their own deadline on each event
    async with httpx.AsyncClient(timeout=timeout) as client:
        yield client


async def test_welcome_has_a_session_key_and_post_replies_come_on_the_stream(
    http: httpx.AsyncClient,
) -> None:
    async with run_server(make_settings()) as server:
        async with open_stream(http, _sse(server), token=server.token("alice")) as alice:
            welcome = alice.welcome["payload"]
            assert welcome["userId"] == "alice"
            assert "sse" in welcome["features"]
            assert len(welcome["sessionKey"]) >= 24
            assert welcome["connectionId"].startswith(server.hub.node_id + "-")
            assert (await alice.expect("authenticated"))["payload"]["userId"] == "alice"

            subscribed = await alice.request("subscribe", {"channel": "news"}, msg_id="s")
            assert subscribed["type"] == "subscribed"
            # An array of envelopes: handled in order, each answered on the stream.
            response = await alice.post(
                [
                    {"type": "publish", "payload": {"channel": "news", "data": 1}, "id": "p1"},
                    {"type": "ping", "id": "p2"},
                ]
            )
            assert response.status_code == 202
            message = await alice.until("message")
            assert message.data["payload"]["data"] == 1
            assert message.id is None  # a channel offset is not the user stream's
            assert (await alice.reply("p1"))["type"] == "published"
            assert (await alice.reply("p2"))["type"] == "pong"

            # A WebSocket client and the stream see each other's traffic: one hub.
            async with server.connect(user="bob") as bob:
                await bob.expect("welcome")
                await bob.expect("authenticated")
                await bob.request("subscribe", {"channel": "news"})
                await bob.request("publish", {"channel": "news", "data": "from ws"})
                assert (await alice.until("message")).data["payload"]["data"] == "from ws"
                await alice.request("chat", {"recipientId": "bob", "message": "hi"}, msg_id="c")
                chat = await bob.expect("chat")
                assert chat["payload"]["message"] == "hi"

            metrics = (await http.get(f"{server.http}/metrics")).text
            assert 'wshub_connections_by_transport{transport="sse"} 1.0' in metrics
            assert 'wshub_connections_opened_by_transport_total{transport="sse"} 1.0' in metrics


async def test_last_event_id_resumes_the_user_stream_without_a_gap(
    http: httpx.AsyncClient,
) -> None:
    async with run_server(make_settings()) as server:
        hub = server.hub
        token = server.token("alice")
        async with open_stream(http, _sse(server), token=token) as first:
            epoch = (await first.expect("authenticated"))["payload"]["epoch"]
            await hub.send_to_user("alice", "note", {"n": 1})
            await hub.send_to_user("alice", "note", {"n": 2})
            one = await first.next()
            two = await first.next()
            assert one is not None and two is not None
            assert (one.id, one.data["payload"]["n"]) == ("1", 1)
            assert (two.id, two.data["payload"]["n"]) == ("2", 2)
        # The client only took message 1 in before the connection dropped; 3 came meanwhile.
        await hub.send_to_user("alice", "note", {"n": 3})
        # Last-Event-ID wins over ?since=0; the epoch is the stream's current one.
        async with open_stream(
            http,
            _sse(server),
            token=token,
            params={"since": "0"},
            headers={"Last-Event-ID": "1"},
        ) as again:
            authenticated = await again.expect("authenticated")
            assert authenticated["payload"]["recovered"] is True
            assert authenticated["payload"]["epoch"] == epoch
            replayed = [await again.next() for _ in range(2)]
            assert [(e.id, e.data["payload"]["n"]) for e in replayed if e] == [("2", 2), ("3", 3)]
        # ?since= alone (an explicit epoch) works the same.
        async with open_stream(
            http, _sse(server), token=token, params={"since": "2", "epoch": epoch}
        ) as third:
            assert (await third.expect("authenticated"))["payload"]["recovered"] is True
            event = await third.next()
            assert event is not None and event.id == "3"


async def test_posts_with_a_bad_key_an_unknown_connection_or_no_json_are_refused(
    http: httpx.AsyncClient,
) -> None:
    async with run_server(make_settings()) as server:
        url = _sse(server)
        async with open_stream(http, url, token=server.token("alice")) as alice:
            await alice.expect("authenticated")
            ping = {"type": "ping", "id": "x"}
            assert (await alice.post(ping, key="")).status_code == 403
            assert (await alice.post(ping, key="wrong")).status_code == 403
            no_key = await http.post(f"{url}/{alice.connection_id}", content=orjson.dumps(ping))
            assert no_key.status_code == 403
            unknown = await http.post(
                f"{url}/{server.hub.node_id}-999999",
                content=b"{}",
                headers={"x-wshub-session": alice.session_key},
            )
            assert unknown.status_code == 404
            elsewhere = await http.post(f"{url}/0123456789ab-1", content=b"{}")
            assert elsewhere.status_code == 404  # a node that is not in the cluster
            garbage = await http.post(
                f"{url}/{alice.connection_id}",
                content=b"{not json",
                headers={"x-wshub-session": alice.session_key},
            )
            assert garbage.status_code == 400
            # Nothing of the refused requests reached the session; it still answers.
            assert (await alice.request("ping", {}, msg_id="ok"))["type"] == "pong"
        # A refused token is refused like a WebSocket handshake's: HTTP 401.
        refused = await http.get(url, params={"token": "not-a-token"})
        assert refused.status_code == 401
        bearer = await http.get(url, headers={"Authorization": "Bearer nope"})
        assert bearer.status_code == 401


async def test_the_stream_sends_a_heartbeat_comment(http: httpx.AsyncClient) -> None:
    async with run_server(make_settings(heartbeat_interval=200)) as server:
        async with open_stream(http, _sse(server)) as anon:
            assert anon.welcome["payload"]["userId"] is None
            event = await anon.next(comments=True, timeout=3)
            assert event is not None and event.comments == ["ping"]


async def test_token_expiry_ends_the_stream_with_a_4001_close_event(
    http: httpx.AsyncClient,
) -> None:
    async with run_server(make_settings(token_refresh_window=1)) as server:
        token = issue_token("alice", SECRET, ttl=2)
        async with open_stream(http, _sse(server), token=token) as alice:
            await alice.expect("authenticated")
            warning = await alice.expect("token_expiring", timeout=3)
            assert warning["payload"]["expiresAt"] > time.time() * 1000
            closing = await alice.expect("close", timeout=3)
            assert closing["payload"] == {"code": 4001, "reason": "token expired"}
            assert await alice.next() is None  # and the response ends
        assert not server.hub.sessions


async def _raw_stream(server: TestServer) -> tuple[socket.socket, bytes]:
    """An event stream on a socket with a tiny receive buffer, read up to its welcome."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    request = f"GET {server.settings.path}/sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    await loop.sock_sendall(sock, request.encode())
    received = b""
    async with asyncio.timeout(5):
        while b'"sessionKey"' not in received or not received.endswith(b"\n\n\r\n"):
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, "the stream ended before welcome"
            received += chunk
    return sock, received


async def test_a_stream_that_is_not_read_is_closed_with_a_1013_close_event(
    http: httpx.AsyncClient,
) -> None:
    settings = make_settings(outbox_max_bytes=64 * 1024, outbox_max_messages=100_000)
    async with run_server(settings) as server:
        hub = server.hub
        sock, head = await _raw_stream(server)
        welcome = orjson.loads(head[head.index(b'{"type":"welcome"') :].split(b"\n")[0])
        conn_id = welcome["payload"]["connectionId"]
        response = await http.post(
            f"{_sse(server)}/{conn_id}",
            content=b'{"type":"subscribe","payload":{"channel":"firehose"}}',
            headers={"x-wshub-session": welcome["payload"]["sessionKey"]},
        )
        assert response.status_code == 202
        async with open_stream(http, _sse(server)) as reader:
            await reader.request("subscribe", {"channel": "firehose"})
            blob = "x" * 8000
            overflows = hub.stats.overflows
            # The stalled stream is never read: socket buffers fill, then its outbox. Loopback
            # may buffer a few MB: allow up to 40 MB before giving up.
            for i in range(5000):
                await hub.publish("firehose", {"i": i, "blob": blob})
                message = await reader.until("message")
                assert message.data["payload"]["data"]["i"] == i
                if hub.stats.overflows > overflows:
                    break
            assert hub.stats.overflows == overflows + 1
            assert (await reader.request("ping", {}, msg_id="alive"))["type"] == "pong"
        # What the stalled client finally reads ends with the close event, then the response.
        loop = asyncio.get_running_loop()
        tail = b""
        async with asyncio.timeout(10):
            while chunk := await loop.sock_recv(sock, 1 << 20):
                tail = (tail + chunk)[-4096:]
                if tail.endswith(b"0\r\n\r\n"):
                    break
        sock.close()
        close = b'data: {"type":"close","payload":{"code":1013,'
        assert close in tail, tail[-300:]


async def test_websockets_fail_through_a_proxy_that_refuses_upgrade_and_sse_works(
    http: httpx.AsyncClient,
) -> None:
    async with run_server(make_settings()) as server, NoUpgradeProxy(server.port) as proxy:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"ws://127.0.0.1:{proxy.port}{server.settings.path}"):
                pass
        assert refused.value.response.status_code == 403
        assert proxy.refused == 1
        url = _sse(server, proxy.port)
        async with open_stream(http, url, token=server.token("alice")) as alice:
            await alice.expect("authenticated")
            await alice.request("subscribe", {"channel": "news"})
            published = await alice.request("publish", {"channel": "news", "data": 1}, msg_id="p")
            assert published["type"] == "published"
            await server.hub.publish("news", "live")
            assert (await alice.until("message")).data["payload"]["data"] == "live"
        assert proxy.refused == 1


async def test_the_event_stream_and_posts_refuse_a_foreign_origin(
    http: httpx.AsyncClient,
) -> None:
    settings = make_settings(allowed_origins=["https://app.example"])
    async with run_server(settings) as server:
        url = _sse(server)
        foreign = await http.get(url, headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403
        async with open_stream(http, url, headers={"Origin": "https://app.example"}) as ok:
            assert ok.response.headers["access-control-allow-origin"] == "https://app.example"
            post = await http.post(
                f"{url}/{ok.connection_id}",
                content=b'{"type":"ping"}',
                headers={"x-wshub-session": ok.session_key, "Origin": "https://evil.example"},
            )
            assert post.status_code == 403
            preflight = await http.options(
                f"{url}/{ok.connection_id}", headers={"Origin": "https://app.example"}
            )
            assert preflight.status_code == 204
            assert "x-wshub-session" in preflight.headers["access-control-allow-headers"]


async def test_the_per_ip_cap_counts_event_streams(http: httpx.AsyncClient) -> None:
    async with run_server(make_settings(max_connections_per_ip=1)) as server:
        async with open_stream(http, _sse(server)) as first:
            assert first.welcome["type"] == "welcome"
            second = await http.get(_sse(server))
            assert second.status_code == 429


async def test_shutdown_ends_streams_with_a_1001_close_event(http: httpx.AsyncClient) -> None:
    async with run_server(make_settings()) as server:
        async with open_stream(http, _sse(server)) as anon:
            drained = asyncio.create_task(server.hub.drain())
            closing = await anon.expect("close")
            assert closing["payload"]["code"] == 1001
            assert await anon.next() is None
            await asyncio.wait_for(drained, 5)


async def test_sse_app_mounted_next_to_the_websocket_app_in_a_starlette_app(
    http: httpx.AsyncClient,
) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route, WebSocketRoute

    from wshub import WebSocketApp, create_hub
    from wshub.testing import serve_asgi
    from wshub.transport.sse import SSEApp

    hub = create_hub(make_settings())
    sse = SSEApp(hub)
    app = Starlette(routes=[WebSocketRoute("/ws", WebSocketApp(hub))], lifespan=hub.lifespan)
    app.router.routes += [  # as docs/guide.md has it
        Route("/ws/sse", sse, methods=["GET", "OPTIONS"]),
        Route("/ws/sse/{connection_id}", sse, methods=["POST", "OPTIONS"]),
    ]
    async with serve_asgi(app, hub=hub) as port:
        token = issue_token("alice", SECRET)
        async with open_stream(http, f"http://127.0.0.1:{port}/ws/sse", token=token) as alice:
            await alice.expect("authenticated")
            assert (await alice.request("ping", {}, msg_id="p"))["type"] == "pong"
            await hub.send_to_user("alice", "note", {"n": 1})
            event = await alice.next()
            assert event is not None and event.id == "1"


async def test_authenticate_rate_limit_and_disconnect_work_as_over_a_websocket(
    http: httpx.AsyncClient,
) -> None:
    settings = make_settings(rate_limit=0.01, rate_burst=3)  # no refill during the test
    async with run_server(settings) as server:
        url = _sse(server)
        async with open_stream(http, url) as anon:
            assert anon.welcome["payload"]["userId"] is None
            reply = await anon.request("authenticate", {"token": server.token("alice")})
            assert reply["type"] == "authenticated", reply
            # Three tokens of burst are spent by authenticate and these pings; then limited.
            response = await anon.post([{"type": "ping", "id": f"p{i}"} for i in range(4)])
            assert response.status_code == 202
            answers = [await anon.reply(f"p{i}") for i in range(3)]
            assert [a["type"] for a in answers] == ["pong", "pong", "error"]
            assert answers[2]["payload"]["code"] == "rate_limited"
            await server.hub.disconnect_user("alice", "bye")
            closing = await anon.until("close")
            assert closing.data["payload"] == {"code": 4002, "reason": "bye"}
            assert await anon.next() is None
            gone = await anon.post({"type": "ping"})
            assert gone.status_code == 404  # the stream is closed: no such connection now
