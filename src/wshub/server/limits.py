"""Limits on HTTP requests that hold before any route runs (docs/http-api.md), and the security
headers of the HTML pages.

:class:`ApiLimits` is pure ASGI, in front of ``/api``: FastAPI reads and parses a request body
before a route's dependencies run, so a key check in a dependency came after 30 MiB had been
buffered and parsed on the event loop. Here the key is checked from the head alone; then the
body is read with a size cap and a deadline and handed on in one piece. It works under any ASGI
server; under ``wshub serve`` the HTTP protocol (``wshub.uvicorn_protocols``) holds every
request, not only the API's, to the same deadline.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
from pathlib import Path

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ApiLimits",
    "bearer_matches",
    "content_security_policy",
    "inline_hashes",
    "page_headers",
]

MISSING_KEY = "Missing or invalid API key"
API_DISABLED = "The HTTP API is disabled: set WS_API_KEY"


def bearer_matches(header: str | None, key: bytes) -> bool:
    """Whether an ``Authorization`` header is ``Bearer <key>``; constant time in the key (the
    time taken does not tell how much of it was right)."""
    scheme, _, value = (header or "").partition(" ")
    # Both sides of compare_digest are always compared, a wrong scheme included.
    same = hmac.compare_digest(value.strip().encode(), key)
    return scheme.lower() == "bearer" and same


class ApiLimits:
    """In front of the routes under ``prefix``: without a valid key 401 (the body is never
    read); a body over ``max_body`` bytes 413 (at once from its Content-Length, else as soon as
    the count passes it); a body not complete within ``timeout`` seconds 408. The refusals
    close the connection when a body was announced, so that the rest of it is not read."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: bytes | None,
        max_body: int,
        timeout: float,
        prefix: str = "/api",
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body = max_body
        self.timeout = timeout
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._guarded(scope):
            await self.app(scope, receive, send)
            return
        authorization: str | None = None
        length: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"content-length" and length is None:
                length = value
            elif name == b"transfer-encoding":
                chunked = chunked or b"chunked" in value.lower()
        if length is not None and not length.strip().isdigit():
            await _refuse(send, 400, "Invalid Content-Length")
            return
        declared = int(length) if length is not None else 0
        has_body = chunked or declared > 0
        if self.api_key is None:
            await _refuse(send, 401, API_DISABLED, close=has_body)
            return
        if not bearer_matches(authorization, self.api_key):
            await _refuse(send, 401, MISSING_KEY, close=has_body, bearer=True)
            return
        if declared > self.max_body:
            await _refuse(send, 413, self._too_large())
            return
        body = await self._read_body(receive, send)
        if body is None:
            return
        await self.app(scope, _replay(body, receive), send)

    def _guarded(self, scope: Scope) -> bool:
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return path == self.prefix or path.startswith(self.prefix + "/")

    def _too_large(self) -> str:
        return f"Request body over {self.max_body} bytes (WS_API_MAX_BODY)"

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once the request was refused (or the client went away)."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return None  # http.disconnect
                    chunk: bytes = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        await _refuse(send, 413, self._too_large())
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            detail = f"Request body not received within {self.timeout:g} s (WS_REQUEST_TIMEOUT)"
            await _refuse(send, 408, detail)
            return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then whatever the server says next."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(
    send: Send, status: int, detail: str, *, close: bool = True, bearer: bool = False
) -> None:
    body = orjson.dumps({"detail": detail})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if bearer:
        headers.append((b"www-authenticate", b"Bearer"))
    if close:
        # The rest of the body is not read: closing is the only way to be done with it.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- security headers of the HTML pages ----------------------------------------------------------

_INLINE = re.compile(rb"<(script|style)\b([^>]*)>(.*?)</\1\s*>", re.DOTALL | re.IGNORECASE)


def inline_hashes(html: bytes) -> dict[str, list[str]]:
    """CSP source expressions (``'sha256-…'``) of a page's inline scripts and styles, by kind."""
    found: dict[str, list[str]] = {"script": [], "style": []}
    for match in _INLINE.finditer(html):
        kind, attributes, content = match.group(1).lower(), match.group(2), match.group(3)
        if kind == b"script" and re.search(rb"\bsrc\s*=", attributes):
            continue  # an external script: 'self' covers it
        digest = base64.b64encode(hashlib.sha256(content).digest()).decode()
        found[kind.decode()].append(f"'sha256-{digest}'")
    return found


def content_security_policy(page: Path, *, connect: str = "'self'") -> str:
    """A strict policy for one of the static pages: nothing but its own inline script and style
    (by hash), scripts and requests to its own origin, never inside a frame."""
    hashes = inline_hashes(page.read_bytes())
    directives = {
        "default-src": "'none'",
        "script-src": " ".join(["'self'", *hashes["script"]]),
        "style-src": " ".join(hashes["style"]) or "'none'",
        "connect-src": connect,
        "img-src": "'self'",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def page_headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
