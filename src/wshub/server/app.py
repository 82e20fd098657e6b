"""The standalone application: HTTP API, health, metrics, and the hub's WebSocket endpoint."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..asgi import WebSocketApp
from ..config import Settings
from ..core.hub import Hub
from ..errors import BackendUnavailable
from ..factory import create_hub
from .api import build_api_router
from .metrics import metrics_response

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, *, hub: Hub | None = None) -> FastAPI:
    """Build the standalone app. The hub is at ``app.state.hub``."""
    if hub is None:
        hub = create_hub(settings)
    app = FastAPI(
        title="wshub",
        summary="HTTP API of the wshub real-time hub",
        version="1",
        lifespan=hub.lifespan,
    )
    app.state.hub = hub
    app.include_router(build_api_router(hub))
    app.router.add_websocket_route(hub.settings.path, WebSocketApp(hub))

    @app.exception_handler(BackendUnavailable)
    async def backend_unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"Backend unavailable: {exc}"}, status_code=503)

    @app.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: accepting connections")
    async def readyz() -> JSONResponse:
        ready = hub.accepting
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "connections": len(hub.sessions)},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics() -> Response:
        body, content_type = metrics_response(hub)
        return Response(body, media_type=content_type)

    return app
