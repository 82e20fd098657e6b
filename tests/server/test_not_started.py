"""A hub used without its lifespan says so: the handshake's 503 and the exception from the hub
API name the fix, not "the SQLite store is not started"."""

from __future__ import annotations

import logging

import pytest
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from wshub import WebSocketApp, create_hub
from wshub.errors import HubNotStarted
from wshub.testing import serve_asgi

from ..conftest import make_settings


async def test_the_hub_api_before_start_names_the_lifespan() -> None:
    hub = create_hub(make_settings(store_url="sqlite:///./never-created.db"))
    with pytest.raises(HubNotStarted, match=r"lifespan=hub\.lifespan"):
        await hub.notify_user("ann", "t", "m")
    with pytest.raises(HubNotStarted, match="async with hub"):
        await hub.publish("news", {"x": 1})


async def test_an_app_without_the_hubs_lifespan_refuses_handshakes_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = create_hub(make_settings())
    app = Starlette(routes=[WebSocketRoute("/ws", WebSocketApp(hub))])  # no lifespan=...
    caplog.set_level(logging.WARNING, logger="wshub.hub")
    async with serve_asgi(app) as port:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5):
                pass
    assert refused.value.response.status_code == 503
    assert b"hub not started" in refused.value.response.body
    assert any("hub not started" in r.getMessage() for r in caplog.records)
