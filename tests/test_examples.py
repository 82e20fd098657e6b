"""The examples run as users would run them: under uvicorn, with real clients."""

from __future__ import annotations

import ast
import asyncio
import functools
import importlib
import os
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import httpx
import orjson
import pytest
import websockets

from wshub.auth.jwt import issue_token
from wshub.testing import free_port, serve_asgi

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
            # from a sync view, through async_to_sync
            r = await http.post("/notify-sync/dora", json={"title": "T", "message": "sync"})
            assert r.json() == {"delivered": True, "queued": False}
            note = await _recv(ws)
            assert note["payload"]["message"] == "sync"  # type: ignore[index]


def _documented_commands(module: Path) -> list[str]:
    """The shell commands of a module docstring's run steps (its indented lines, with
    backslash continuations joined)."""
    doc = ast.get_docstring(ast.parse(module.read_text())) or ""
    commands: list[str] = []
    pending = ""
    for line in doc.splitlines():
        if not line.startswith("    "):
            continue
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        commands.append(pending)
        pending = ""
    return commands


async def _line_with(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> str:
    async with asyncio.timeout(20):
        while raw := await stream.readline():
            line = raw.decode(errors="replace").rstrip()
            seen.append(line)
            if needle in line:
                return line
    raise AssertionError(f"{needle!r} never came: {seen}")


async def test_the_fastapi_examples_run_steps_work_as_written(tmp_path: Path) -> None:
    """The docstring's commands, run as written in a checkout with no .env and no WS_* variable:
    the server, then the client it names, then the curl that notifies that client."""
    setup, server_cmd, client_cmd, curl_cmd = _documented_commands(ROOT / "examples/fastapi_app.py")
    assert server_cmd.startswith(".venv/bin/uvicorn") and "wshub client" in client_cmd
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WS_", "UVICORN_"))}
    port = str(free_port())
    env["UVICORN_PORT"] = port  # the one change: not uvicorn's default port 8000

    def at_port(command: str) -> str:
        return command.replace("8000", port)

    run = functools.partial(asyncio.create_subprocess_shell, cwd=tmp_path, env=env)
    prepare = await run(setup)
    assert await asyncio.wait_for(prepare.wait(), 30) == 0
    assert re.fullmatch(r"WS_JWT_SECRET=[0-9a-f]{64}\n", (tmp_path / ".env").read_text())
    # exec: the process to stop at the end is the command's, not a shell's around it.
    server = await run(f"exec {server_cmd}", stderr=asyncio.subprocess.PIPE)
    client: asyncio.subprocess.Process | None = None
    seen: list[str] = []
    try:
        assert server.stderr is not None
        await _line_with(server.stderr, "Application startup complete", seen)
        client = await run(
            f"exec {at_port(client_cmd)}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert client.stdout is not None and client.stdin is not None
        authenticated = await _line_with(client.stdout, '"authenticated"', seen)
        assert orjson.loads(authenticated)["payload"]["userId"] == "alice"
        curl = await run(at_port(curl_cmd), stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(curl.communicate(), 20)
        assert orjson.loads(out) == {"id": 1, "notified": True, "queued": False}
        note = orjson.loads(await _line_with(client.stdout, '"notification"', seen))
        assert note["payload"]["message"] == "Your book is on its way"
        client.stdin.close()
        assert await asyncio.wait_for(client.wait(), 20) == 0
    finally:
        for proc in (client, server):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 20)
