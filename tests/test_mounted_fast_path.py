"""An existing app opts into the native transport with uvicorn's --ws option: the hub's path
gets HubProtocol, every other WebSocket route stays plain ASGI."""

from __future__ import annotations

import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from wshub import WebSocketApp, create_hub
from wshub.native import HubProtocol
from wshub.testing import free_port, serve_asgi

from .conftest import make_settings


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"echo:{text}")
    await websocket.close()


async def test_hub_path_is_native_and_other_routes_stay_asgi() -> None:
    hub = create_hub(make_settings())
    app = Starlette(
        routes=[WebSocketRoute("/ws", WebSocketApp(hub)), WebSocketRoute("/other", echo)],
        lifespan=hub.lifespan,
    )
    port = free_port()
    # what `uvicorn app:app --ws wshub.native:HubProtocol` configures
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, ws=HubProtocol, log_config=None, lifespan="on"
    )
    async with serve_asgi(app, config=config):
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            assert '"welcome"' in await ws.recv()
            (session,) = hub.sessions.values()
            assert isinstance(session.conn, HubProtocol)
            await ws.send('{"type":"ping","id":"1"}')
            assert '"pong"' in await ws.recv()
        async with websockets.connect(f"ws://127.0.0.1:{port}/other") as ws:
            await ws.send("hi")
            assert await ws.recv() == "echo:hi"
