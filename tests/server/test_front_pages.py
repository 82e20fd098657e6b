"""What a new user meets first, against real servers: a WebSocket on a wrong path answers 404
naming the hub's path, `/` is an index of the pages, `/docs` and `/redoc` load nothing from
another origin, and `wshub serve`'s log names the pages once, has no line per connection and no
token from a URL."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from pathlib import Path
from urllib.parse import urljoin

import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from wshub.auth.jwt import issue_token

from ..conftest import SECRET, ServerFactory
from ..procs import ServerProcess

#: Every URL an HTML page makes the browser load or link to.
URL_IN_PAGE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl:\s*'([^']+)'""")

PAGES = ["/ws-test", "/admin", "/docs", "/asyncapi", "/metrics", "/healthz"]


def _urls(html: str) -> list[str]:
    return [a or b for a, b in URL_IN_PAGE.findall(html)]


@pytest.mark.parametrize("path", ["/", "/wss", "/ws/", "/socket.io/", "/api/publish"])
async def test_a_websocket_on_another_path_gets_404_naming_the_hubs_path(
    server_factory: ServerFactory, path: str
) -> None:
    async with server_factory(path="/realtime") as server:
        url = f"ws://127.0.0.1:{server.port}{path}"
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(url, open_timeout=5):
                pass
        response = info.value.response
        assert response.status_code == 404
        assert orjson.loads(response.body) == {
            "detail": "no WebSocket endpoint here; the hub is at /realtime"
        }
        # and the hub's own path still works
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/realtime") as ws:
            welcome = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            assert welcome["type"] == "welcome"


async def test_the_root_is_an_index_of_the_pages_with_the_pages_security_headers(
    server_factory: ServerFactory,
) -> None:
    async with server_factory() as server, httpx.AsyncClient(base_url=server.http) as http:
        index = await http.get("/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        admin = await http.get("/admin")
        for name in ("X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy"):
            assert index.headers[name] == admin.headers[name], name
        csp = index.headers["Content-Security-Policy"]
        assert csp.startswith("default-src 'none'") and "frame-ancestors 'none'" in csp
        links = _urls(index.text)
        assert set(PAGES) <= set(links), links
        for link in links:
            assert link.startswith("/") and not link.startswith("//"), link
            assert (await http.get(link)).status_code == 200, link


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_api_docs_load_only_from_the_server_itself(
    server_factory: ServerFactory, page: str
) -> None:
    async with server_factory() as server, httpx.AsyncClient(base_url=server.http) as http:
        html = await http.get(page)
        assert html.status_code == 200
        urls = _urls(html.text)
        assert any(u.endswith(".js") for u in urls), urls
        assert "/openapi.json" in urls
        assert "fonts.googleapis" not in html.text and "cdn" not in html.text.lower()
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), url
            asset = await http.get(urljoin(server.http, url))
            assert asset.status_code == 200, url
            assert asset.content, url
        if page == "/docs":
            assert "window.location.origin + '/docs/oauth2-redirect'" in html.text
            assert (await http.get("/docs/oauth2-redirect")).status_code == 200


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_serve_logs_the_pages_once_and_no_line_per_connection_nor_a_token(
    tmp_path: Path, transport: str
) -> None:
    proc = ServerProcess(tmp_path, transport=transport, store_url="memory://")
    await proc.start()
    try:
        token = issue_token("alice", SECRET)
        for _ in range(5):
            async with websockets.connect(f"{proc.url}?token={token}") as ws:
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
        with pytest.raises(InvalidStatus):
            async with websockets.connect(f"ws://127.0.0.1:{proc.port}/nope?token={token}"):
                pass
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    finally:
        await proc.stop()
    log = "\n".join(proc.log)
    for page in PAGES:
        lines = [
            line for line in proc.log if line.endswith(f": http://127.0.0.1:{proc.port}{page}")
        ]
        assert len(lines) == 1, (page, log)
    assert "connection open" not in log and "connection closed" not in log, log
    assert token not in log and token.split(".")[2] not in log, log
    assert "without completing handshake" not in log, log
    if transport == "asgi":  # uvicorn names each handshake's path and query
        assert "/ws?token=***" in log, log
    assert "/nope?token=***" in log, log


def test_the_token_filter_keeps_uvicorns_access_log_lines_whole() -> None:
    """For an app under your own uvicorn (docs/security.md): the filter on uvicorn.access."""
    from uvicorn.logging import AccessFormatter

    from wshub.server.run import RedactTokens

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/ws?room=a&token=eyJ.secret.sig", "1.1", 101),
        None,
    )
    assert RedactTokens().filter(record)
    line = AccessFormatter("%(message)s", use_colors=False).format(record)
    assert line == '127.0.0.1:5000 - "GET /ws?room=a&token=*** HTTP/1.1" 101'
