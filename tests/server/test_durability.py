"""Nothing acknowledged is lost: restarts and kill -9 of a real server process, SQLite store."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import orjson
import pytest
import websockets

from wshub.auth.jwt import issue_token

from ..conftest import API_KEY, SECRET
from ..procs import ServerProcess


async def _recv(ws: websockets.ClientConnection) -> dict[str, object]:
    import asyncio

    msg: dict[str, object] = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    return msg


def _send(obj: object) -> str:
    return orjson.dumps(obj).decode()


@pytest.mark.parametrize("query", ["", "?synchronous=normal"])
async def test_queued_messages_and_history_survive_kill_9(tmp_path: Path, query: str) -> None:
    """With synchronous=normal too: a killed process loses nothing committed (a power cut
    could; that is what the option trades)."""
    db = f"sqlite:///{tmp_path}/wshub.db{query}"
    server = ServerProcess(tmp_path, store_url=db)
    await server.start()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers, timeout=5) as api:
        async with websockets.connect(f"{server.url}?token={issue_token('alice', SECRET)}") as ws:
            assert (await _recv(ws))["type"] == "welcome"
            assert (await _recv(ws))["type"] == "authenticated"
            await ws.send(
                _send({"type": "chat", "payload": {"recipientId": "bob", "message": "1"}})
            )
            reply = await _recv(ws)
            assert reply["type"] == "chat_received" and reply["payload"]["queued"] is True  # type: ignore[index]
        r = await api.post("/api/users/bob/notify", json={"title": "t", "message": "2"})
        assert r.json()["queued"] is True
        for i in range(3):
            assert (await api.post("/api/publish", json={"channel": "news", "data": i})).json()[
                "offset"
            ] == i + 1
        epoch = (await api.get("/api/channels/news/history")).json()["epoch"]
    await server.kill9()  # acknowledged = committed: nothing may be lost now

    server = ServerProcess(tmp_path, port=server.port, store_url=db)
    await server.start()
    try:
        async with websockets.connect(f"{server.url}?token={issue_token('bob', SECRET)}") as ws:
            assert (await _recv(ws))["type"] == "welcome"
            auth = await _recv(ws)
            assert auth["payload"]["offset"] == 2  # type: ignore[index]
            chat, note = await _recv(ws), await _recv(ws)
            assert chat["type"] == "chat" and chat["payload"]["message"] == "1"  # type: ignore[index]
            assert note["type"] == "notification" and note["offset"] == 2
            await ws.send(
                _send(
                    {
                        "type": "subscribe",
                        "payload": {"channel": "news", "since": 0, "epoch": epoch},
                    }
                )
            )
            sub = await _recv(ws)
            assert sub["payload"] == {  # type: ignore[comparison-overlap]
                "channel": "news",
                "offset": 3,
                "epoch": epoch,
                "recovered": True,
            }
            assert [(await _recv(ws))["payload"]["data"] for _ in range(3)] == [0, 1, 2]  # type: ignore[index]
        # delivered once: a new connection of bob gets nothing queued
        async with websockets.connect(f"{server.url}?token={issue_token('bob', SECRET)}") as ws:
            await _recv(ws)
            await _recv(ws)
            await ws.send(_send({"type": "ping", "id": "last"}))
            assert (await _recv(ws))["id"] == "last"
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    finally:
        await server.stop()


async def test_a_graceful_restart_keeps_the_delivery_cursor(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/wshub.db"
    server = ServerProcess(tmp_path, store_url=db)
    await server.start()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers, timeout=5) as api:
        async with websockets.connect(f"{server.url}?token={issue_token('cat', SECRET)}") as ws:
            await _recv(ws), await _recv(ws)
            r = await api.post("/api/users/cat/send", json={"type": "ping_me", "payload": {}})
            assert r.json() == {"delivered": True, "queued": False, "offset": 1}
            assert (await _recv(ws))["type"] == "ping_me"
        r = await api.post("/api/users/cat/send", json={"type": "later", "payload": {"n": 2}})
        assert r.json() == {"delivered": False, "queued": True, "offset": 2}
    server.signal(signal.SIGTERM)
    assert await server.wait() == 0
    server = ServerProcess(tmp_path, port=server.port, store_url=db)
    await server.start()
    try:
        async with websockets.connect(f"{server.url}?token={issue_token('cat', SECRET)}") as ws:
            await _recv(ws)
            assert (await _recv(ws))["payload"]["offset"] == 2  # type: ignore[index]
            later = await _recv(ws)  # only the undelivered one, not the one handed over before
            assert later["type"] == "later" and later["offset"] == 2
    finally:
        await server.stop()


async def test_readyz_reports_each_backend(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, store_url=f"sqlite:///{tmp_path}/wshub.db")
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.http, timeout=5) as http:
            r = await http.get("/readyz")
            assert r.status_code == 200
            assert r.json()["backends"] == {"store": True, "broker": True, "presence": True}
    finally:
        await server.stop()
