"""The standalone application: HTTP API, health, metrics, and the hub's WebSocket endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from starlette.exceptions import HTTPException
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from ..asgi import WebSocketApp
from ..asyncapi import asyncapi_document, asyncapi_html
from ..config import Settings
from ..core.hub import Hub
from ..errors import BackendUnavailable, InvalidMessage, MessageTooLarge
from ..factory import create_hub
from ..transport.sse import SSEApp
from .api import build_api_router
from .limits import ApiLimits, content_security_policy, page_headers
from .metrics import metrics_access, metrics_response

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"
#: Where /docs and /redoc load Swagger UI and ReDoc from: the copies the fastapi-offline package
#: ships (part of the server extra), so the pages work offline and load nothing from a CDN.
DOCS_ASSETS = "/docs-assets"
#: The pages the index at / links to, and the start-up log names.
PAGES = {
    "test page": "/ws-test",
    "dashboard": "/admin",
    "HTTP API docs": "/docs",
    "protocol (AsyncAPI)": "/asyncapi",
    "metrics": "/metrics",
    "health": "/healthz",
}


def _docs_assets() -> Path:
    from ..extras import require

    package = require("fastapi_offline", "server", needed_by="the /docs page of wshub serve")
    return Path(str(package.__file__)).parent / "static"


def create_app(settings: Settings | None = None, *, hub: Hub | None = None) -> FastAPI:
    """Build the standalone app. The hub is at ``app.state.hub``."""
    if hub is None:
        hub = create_hub(settings)
    app = FastAPI(
        title="wshub",
        summary="HTTP API of the wshub real-time hub",
        version="1",
        lifespan=hub.lifespan,
        docs_url=None,  # served below, from the package's own copy of the assets
        redoc_url=None,
    )
    app.state.hub = hub
    settings = hub.settings
    api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
    # In front of every route: the key, the size and the deadline of /api bodies are checked
    # before FastAPI reads and parses a byte of them.
    app.add_middleware(
        ApiLimits,
        api_key=api_key,
        max_body=settings.api_max_body,
        timeout=settings.request_timeout,
    )
    app.include_router(build_api_router(hub))
    app.router.routes.append(WebSocketRoute(hub.settings.path, WebSocketApp(hub)))
    # Where WebSockets are blocked: the event stream and its POSTs (wshub.transport.sse).
    sse = SSEApp(hub)
    sse_path = f"{hub.settings.path.rstrip('/')}/sse"
    app.router.routes.append(Route(sse_path, sse, methods=["GET", "OPTIONS"]))
    app.router.routes.append(Route(sse_path + "/{connection_id}", sse, methods=["POST", "OPTIONS"]))
    # Any other WebSocket path: 404 naming the hub's (ASGI would answer 403, read as origins).
    app.router.routes.append(WebSocketRoute("/{path:path}", _no_endpoint(hub.settings.path)))

    @app.exception_handler(InvalidMessage)
    async def invalid_message(request: Request, exc: InvalidMessage) -> JSONResponse:
        # In FastAPI's own 422 shape, so the response matches the OpenAPI document.
        detail = [{"loc": ["body"], "msg": exc.message, "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(MessageTooLarge)
    async def too_large(request: Request, exc: MessageTooLarge) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=413)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # Rendered with ensure_ascii: an input holding a lone surrogate must not turn the 422
        # into a 500 while it is being encoded.
        body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        # FastAPI answers a body it cannot even decode (not UTF-8) with 400; the protocol and
        # the OpenAPI document say 422 for every invalid body.
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            detail = [{"loc": ["body"], "msg": "Body must be UTF-8 JSON", "type": "json_invalid"}]
            return JSONResponse({"detail": detail}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(BackendUnavailable)
    async def backend_unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"Backend unavailable: {exc}"}, status_code=503)

    @app.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: accepting, backends answering")
    async def readyz() -> JSONResponse:
        backends = await hub.healthy()
        ready = hub.accepting and all(backends.values())
        body = {
            "status": "ready" if ready else "unavailable",
            "accepting": hub.accepting,
            "backends": backends,
            "connections": len(hub.sessions),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        description="Open unless WS_METRICS_KEY is set; then `Authorization: Bearer <key>`.",
        response_class=PlainTextResponse,
        dependencies=[Depends(metrics_access(settings.metrics_key))],
        responses={401: {"description": "WS_METRICS_KEY is set and was not given"}},
    )
    async def metrics() -> Response:
        body, content_type = metrics_response(hub)
        return Response(body, media_type=content_type)

    @app.get(hub.settings.path, include_in_schema=False)
    async def upgrade_required() -> JSONResponse:
        return JSONResponse(
            {"detail": "Upgrade Required: connect with WebSocket"},
            status_code=426,
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )

    @app.get("/asyncapi.json", tags=["docs"], summary="AsyncAPI 3 document of the protocol")
    async def asyncapi_json(request: Request) -> JSONResponse:
        return JSONResponse(asyncapi_document(hub, host=request.headers.get("host")))

    @app.get("/asyncapi", include_in_schema=False)
    async def asyncapi_page(request: Request) -> HTMLResponse:
        document = asyncapi_document(hub, host=request.headers.get("host"))
        return HTMLResponse(asyncapi_html(document))

    # The pages' inline script and style are allowed by hash, computed here from the files
    # served; the test page connects to any WebSocket URL typed in, the dashboard only to us.
    ws_test_headers = page_headers(
        content_security_policy(STATIC / "ws-test.html", connect="'self' ws: wss:")
    )
    admin_headers = page_headers(content_security_policy(STATIC / "admin.html"))

    @app.get("/ws-test", include_in_schema=False)
    async def ws_test_page() -> FileResponse:
        return FileResponse(
            STATIC / "ws-test.html", media_type="text/html", headers=ws_test_headers
        )

    @app.get("/admin", include_in_schema=False)
    async def dashboard() -> FileResponse:
        # The page holds no data: it asks for the API key and reads /api/stats with it.
        return FileResponse(STATIC / "admin.html", media_type="text/html", headers=admin_headers)

    index_headers = page_headers(content_security_policy(STATIC / "index.html"))

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=index_headers)

    _add_docs_pages(app)

    @app.get("/wshub.js", include_in_schema=False)
    async def js_client() -> FileResponse:
        return FileResponse(STATIC / "wshub.js", media_type="text/javascript")

    return app


def _no_endpoint(hub_path: str) -> Any:
    """The WebSocket endpoint of every path but the hub's: refuse the handshake with 404."""
    detail = f"no WebSocket endpoint here; the hub is at {hub_path}"

    async def no_endpoint(websocket: WebSocket) -> None:
        await websocket.send_denial_response(JSONResponse({"detail": detail}, status_code=404))

    return no_endpoint


def _add_docs_pages(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc, with every script, style and icon from this server."""
    app.router.routes.append(
        Mount(DOCS_ASSETS, StaticFiles(directory=_docs_assets()), name="docs-assets")
    )
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title="wshub - HTTP API",
            oauth2_redirect_url=f"{root}{oauth2_redirect}",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title="wshub - HTTP API",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
