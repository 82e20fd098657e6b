"""Heartbeat, graceful shutdown and configuration errors, with real processes and sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import websockets

from ..conftest import SECRET
from ..procs import ServerProcess
from ..rawws import OP_PING, OP_PONG, OP_TEXT, RawWS

WSHUB = [sys.executable, "-m", "wshub"]


async def test_a_peer_that_answers_pings_stays_and_a_silent_one_is_terminated(
    server_factory: object,
) -> None:
    async with server_factory(heartbeat_interval=200) as server:  # type: ignore[operator]
        good = await RawWS.connect(server.host, server.port)
        silent = await RawWS.connect(server.host, server.port)
        assert (await good.recv_frame())[0] == OP_TEXT  # welcome
        for _ in range(3):  # three heartbeats answered: still connected
            payload = await asyncio.wait_for(good.recv_until(OP_PING), 2)
            good.send_frame(OP_PONG, payload)
        # The silent peer reads but never answers: dropped within about two intervals.
        started = time.monotonic()
        await asyncio.wait_for(silent.eof(), 3)
        assert time.monotonic() - started < 1.5
        good.send_text('{"type":"ping","id":"alive"}')
        payload = await asyncio.wait_for(good.recv_until(OP_TEXT), 2)
        assert orjson.loads(payload)["id"] == "alive"
        good.close()
        silent.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_closes_every_client_with_1001_and_exits_0(
    tmp_path: Path, sig: signal.Signals
) -> None:
    server = ServerProcess(tmp_path, shutdown_timeout="3000", store_url="memory://")
    await server.start()  # returns once the server logged that it listens
    try:
        clients = [await websockets.connect(server.url) for _ in range(3)]
        for ws in clients:
            assert orjson.loads(await ws.recv())["type"] == "welcome"
        server.signal(sig)
        for ws in clients:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1001
        started = time.monotonic()
        assert await server.wait(10) == 0
        assert time.monotonic() - started < 3.0 + 1.0
    finally:
        await server.stop()


def test_a_bad_setting_stops_start_up_with_a_message_naming_it(tmp_path: Path) -> None:
    env = {**os.environ, "WS_PORT": "not-a-port", "WS_HEARTBEAT_INTERVAL": "5"}
    r = subprocess.run(WSHUB + ["serve"], env=env, cwd=tmp_path, capture_output=True, timeout=30)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "invalid configuration" in err and "port" in err and "heartbeat_interval" in err
    assert "Traceback" not in err


def test_settings_come_from_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"WS_JWT_SECRET={SECRET}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
    r = subprocess.run(
        WSHUB + ["token", "alice", "--channels", "private-a"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
        check=True,
    )
    import jwt

    claims = jwt.decode(r.stdout.decode().strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["channels"] == ["private-a"]
    assert claims["exp"] > time.time()
