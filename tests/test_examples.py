"""The examples run as users would run them: under uvicorn, with real clients."""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from types import ModuleType

import httpx
import orjson
import pytest
import websockets

from wshub.auth.jwt import issue_token
from wshub.testing import serve_asgi

from .conftest import SECRET

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("WS_JWT_SECRET", SECRET)
    monkeypatch.setenv("WS_STORE_URL", "memory://")
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop(f"examples.{name}", None)
    return importlib.import_module(f"examples.{name}")


def _json(obj: object) -> str:
    return orjson.dumps(obj).decode()


async def _recv(ws: websockets.ClientConnection) -> dict[str, object]:
    msg: dict[str, object] = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    return msg


async def test_fastapi_example_notifies_a_user_from_a_rest_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = _load("fastapi_app", monkeypatch)
    async with serve_asgi(module.app) as port:
        token = issue_token("alice", SECRET)
        async with (
            websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token}") as ws,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
        ):
            assert (await _recv(ws))["type"] == "welcome"
            assert (await _recv(ws))["type"] == "authenticated"
            assert (await http.get("/users/alice/online")).json() == {"online": True}
            r = await http.post("/orders", json={"user_id": "alice", "item": "book"})
            assert r.json() == {"id": 1, "notified": True, "queued": False}
            note = await _recv(ws)
            assert note["type"] == "notification"
            assert note["payload"] == {
                "orderId": 1,
                "title": "Order received",
                "message": "Your book is on its way",
                "type": "success",
            }
            # the app's own message type
            await ws.send(_json({"type": "subscribe", "payload": {"channel": "room"}}))
            assert (await _recv(ws))["type"] == "subscribed"
            await ws.send(_json({"type": "typing", "payload": {"channel": "room"}, "id": "t"}))
            msg = await _recv(ws)
            assert msg["type"] == "message"
            assert msg["payload"]["data"] == {"typing": "alice", "active": True}  # type: ignore[index]
            assert await _recv(ws) == {
                "type": "typing_sent",
                "payload": {"channel": "room"},
                "id": "t",
            }


async def test_starlette_example_broadcasts(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load("starlette_app", monkeypatch)
    async with serve_asgi(module.app) as port:
        async with (
            websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
        ):
            assert (await _recv(ws))["type"] == "welcome"
            r = await http.post("/announce", json={"message": "deploy done"})
            assert r.json() == {"connections": 1}
            msg = await _recv(ws)
            assert msg["type"] == "system_message"
            assert msg["payload"]["message"] == "deploy done"  # type: ignore[index]


async def test_django_example_serves_views_and_the_hub_side_by_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")
    for mod in [m for m in sys.modules if m.startswith("examples.django_project")]:
        sys.modules.pop(mod)
    module = _load("django_project.asgi", monkeypatch)
    async with serve_asgi(module.application) as port:
        token = issue_token("dora", SECRET)
        async with (
            websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token}") as ws,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
        ):
            assert (await _recv(ws))["type"] == "welcome"
            assert (await _recv(ws))["type"] == "authenticated"
            r = await http.post("/notify/dora", json={"title": "T", "message": "from Django"})
            assert r.json() == {"delivered": True, "queued": False}
            note = await _recv(ws)
            assert note["type"] == "notification"
            assert note["payload"]["message"] == "from Django"  # type: ignore[index]
