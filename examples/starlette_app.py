"""wshub in a plain Starlette app (no FastAPI)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from wshub import WebSocketApp, create_hub

hub = create_hub()


async def announce(request: Request) -> JSONResponse:
    body = await request.json()
    reached = await hub.broadcast(str(body.get("message", "")))
    return JSONResponse({"connections": reached})


app = Starlette(
    routes=[
        Route("/announce", announce, methods=["POST"]),
        WebSocketRoute("/ws", WebSocketApp(hub)),
    ],
    lifespan=hub.lifespan,
)
