"""Resume with `since` while publications keep arriving: in order, no gap, no duplicate at the
seam between replay and live. Run on every single-node store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wshub.testing import TestServer, run_server

from ..conftest import make_settings


@pytest.fixture
def transport() -> str:
    """This module tests what does not depend on the WebSocket endpoint: one transport is enough."""
    return "native"


@pytest.fixture(params=["memory", "sqlite"])
async def durable_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[TestServer]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/resume.db"
    async with run_server(make_settings(store_url=url, history_size=1000)) as server:
        yield server


async def _publish_many(server: TestServer, channel: str, start: int, stop: int) -> None:
    for i in range(start, stop):
        await server.hub.publish(channel, i)
        await asyncio.sleep(0)  # let the subscriber's replay interleave with publishing


async def test_channel_resume_during_a_publication_burst(durable_server: TestServer) -> None:
    server = durable_server
    await _publish_many(server, "feed", 1, 51)
    async with server.connect() as ws:
        await ws.expect("welcome")
        burst = asyncio.create_task(_publish_many(server, "feed", 51, 301))
        await ws.send("subscribe", {"channel": "feed", "since": 10})
        sub = await ws.expect("subscribed")
        assert sub["payload"]["recovered"] is True
        offsets, data = [], []
        while not offsets or offsets[-1] < 300:
            msg = (await ws.expect("message"))["payload"]
            offsets.append(msg["offset"])
            data.append(msg["data"])
        await burst
    assert offsets == list(range(11, 301))
    assert data == list(range(11, 301))


async def test_user_stream_resume_during_a_burst(durable_server: TestServer) -> None:
    server = durable_server

    async def send_many(start: int, stop: int) -> None:
        for i in range(start, stop):
            await server.hub.send_to_user("uma", "tick", {"i": i})
            await asyncio.sleep(0)

    await send_many(1, 21)
    async with server.connect() as ws:
        await ws.expect("welcome")
        burst = asyncio.create_task(send_many(21, 201))
        await ws.send("authenticate", {"token": server.token("uma"), "since": 5})
        auth = await ws.expect("authenticated")
        assert auth["payload"]["recovered"] is True
        offsets = []
        while not offsets or offsets[-1] < 200:
            msg = await ws.expect("tick")
            assert msg["payload"]["i"] == msg["offset"]
            offsets.append(msg["offset"])
        await burst
    assert offsets == list(range(6, 201))


async def test_resume_reports_what_retention_lost(server_factory: object) -> None:
    async with server_factory(history_size=5) as server:  # type: ignore[operator]
        for i in range(1, 21):
            await server.hub.publish("feed", i)
        async with server.connect() as ws:
            await ws.expect("welcome")
            sub = await ws.request("subscribe", {"channel": "feed", "since": 3})
            assert sub["payload"]["recovered"] is False and sub["payload"]["offset"] == 20
            kept = [(await ws.expect("message"))["payload"]["offset"] for _ in range(5)]
            assert kept == [16, 17, 18, 19, 20]
            other_epoch = await ws.request(
                "subscribe", {"channel": "feed2", "since": 0, "epoch": "not-this-one"}
            )
            assert other_epoch["payload"]["recovered"] is False
            ahead = await ws.request("subscribe", {"channel": "feed3", "since": 7})
            assert ahead["payload"]["recovered"] is False and ahead["payload"]["offset"] == 0


async def test_retention_can_differ_per_channel_pattern(server_factory: object) -> None:
    overrides = {"chat-*": {"size": 2}, "chat-vip": {"size": 4}, "ticker": {"size": 0}}
    async with server_factory(history_size=3, channel_retention=overrides) as server:  # type: ignore[operator]
        hub = server.hub
        for channel in ("news", "chat-1", "chat-vip", "ticker"):
            for i in range(6):
                await hub.publish(channel, i)
        kept = {
            channel: [m["data"] for m in (await hub.history(channel))[0]]
            for channel in ("news", "chat-1", "chat-vip", "ticker")
        }
        assert kept == {
            "news": [3, 4, 5],
            "chat-1": [4, 5],
            "chat-vip": [2, 3, 4, 5],
            "ticker": [],
        }
