"""/wshub.js in Chromium against a real server: a frame lost on a live connection is replayed
in order by a resume on the same connection (a proxy in the test drops it, as a lost frame would
look to the page); a token function refreshes the connection on ``token_expiring``; a close with
4001 reconnects with a fresh token and resumes; 4002 ends the client."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from playwright.async_api import Page

from wshub.auth.jwt import issue_token
from wshub.testing import TestServer, run_server

from ..client.frameproxy import FrameDroppingProxy, drop_once
from ..conftest import SECRET, make_settings
from .conftest import PageFactory

WAIT = 8000  # ms

START = """async ([url, token, channel, options]) => {
    const { WshubClient } = await import("/wshub.js");
    const t = (window.t = { received: [], gaps: [], events: [], refreshes: [], errors: [] });
    const tokenOption = token === null ? () => window.freshToken() : token;
    t.client = new WshubClient(url, { token: tokenOption, ...options });
    t.client.addEventListener("gap", ({ detail }) => t.gaps.push(detail));
    t.client.addEventListener("tokenrefresh", ({ detail }) => t.refreshes.push(detail));
    t.client.addEventListener("error", ({ detail }) => t.errors.push(detail.error.code));
    for (const name of ["open", "close"]) {
        t.client.addEventListener(name, ({ detail }) => t.events.push([name, detail.code ?? null]));
    }
    if (channel !== null) t.client.subscribe(channel, (p) => t.received.push([p.offset, p.data]));
    await t.client.connect();
}"""


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    # No leeway: a token is expired at its exp, as the deadline that closes with 4001.
    async with run_server(make_settings(transport="native", jwt_leeway=0)) as s:
        yield s


async def until(page: Page, expression: str) -> None:
    """Wait until ``expression`` holds, with ``t`` the test's state in the page."""
    await page.wait_for_function(
        f"() => {{ const t = window.t; return {expression}; }}", timeout=WAIT
    )


async def state_of(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(
        """() => ({ received: t.received, gaps: t.gaps, events: t.events, state: t.client.state,
                    refreshes: t.refreshes, errors: t.errors, subs: t.client.subscriptions,
                    lastClose: t.client.lastClose })"""
    )
    return result


async def test_a_frame_lost_on_a_live_channel_is_replayed_in_order(
    open_page: PageFactory, server: TestServer
) -> None:
    user, channel = uid("amy"), uid("news")

    def lost(env: dict[str, Any]) -> bool:
        p = env.get("payload", {})
        return env.get("type") == "message" and p.get("channel") == channel and p.get("offset") == 3

    page = (await open_page()).page
    async with FrameDroppingProxy(server.port, drop_once(lost)) as proxy:
        options = {"reconnect": False}
        await page.evaluate(START, [proxy.url(), server.token(user), channel, options])
        for n in range(1, 6):
            await server.hub.publish(channel, f"m{n}")
        await until(page, "t.received.length >= 5")
        await server.hub.publish(channel, "marker")  # the very next one: nothing duplicated
        await until(page, "t.received.length >= 6")
        result = await state_of(page)
        assert len(proxy.dropped) == 1
    assert result["received"] == [[n, f"m{n}"] for n in range(1, 6)] + [[6, "marker"]]
    assert [
        (g["stream"], g["name"], g["since"], g["missing"], g["lost"]) for g in result["gaps"]
    ] == [("channel", channel, 2, [3, 3], False)]
    assert result["subs"][0]["recovered"] is True


async def test_token_expiring_asks_the_token_function_and_refreshes_in_place(
    open_page: PageFactory, server: TestServer
) -> None:
    user, channel = uid("bob"), uid("news")
    first = issue_token(user, SECRET, ttl=2)
    issued: list[str] = []

    def fresh_token() -> str:
        issued.append(first if not issued else server.token(user))
        return issued[-1]

    page = (await open_page()).page
    await page.expose_function("freshToken", fresh_token)
    await page.evaluate(START, [server.url, None, channel, {}])
    await until(page, "t.refreshes.length === 1")
    result = await state_of(page)
    assert result["refreshes"][0]["payload"]["refreshed"] is True
    assert len(issued) == 2

    exp = jwt.decode(first, options={"verify_signature": False})["exp"]
    # An absence has no event to await: wait out the second in which the server would close.
    await asyncio.sleep(max(0.0, exp + 1.2 - time.time()))
    await server.hub.publish(channel, "still here")
    await until(page, "t.received.length === 1")
    result = await state_of(page)
    assert result["state"] == "open"
    assert result["events"] == [["open", None]]  # never closed
    assert result["received"] == [[1, "still here"]]


async def test_a_close_with_4001_reconnects_with_a_fresh_token_and_resumes(
    open_page: PageFactory, server: TestServer
) -> None:
    user, channel = uid("cyd"), uid("news")
    held, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def fresh_token() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            return issue_token(user, SECRET, ttl=2)
        if calls == 2:
            return "not-a-token"  # the refresh is refused: the server closes with 4001 at exp
        held.set()
        await release.wait()  # reconnecting: the test publishes while the page is away
        return server.token(user)

    page = (await open_page()).page
    await page.expose_function("freshToken", fresh_token)
    options = {"reconnect": {"minDelay": 10, "maxDelay": 50}}
    await page.evaluate(START, [server.url, None, channel, options])
    await server.hub.publish(channel, "before")
    await until(page, "t.received.length === 1")

    await asyncio.wait_for(held.wait(), 6)
    await server.hub.publish(channel, "while away")
    release.set()
    await until(page, "t.received.length === 2 && t.client.state === 'open'")
    await server.hub.publish(channel, "marker")
    await until(page, "t.received.length === 3")
    result = await state_of(page)
    assert result["received"] == [[1, "before"], [2, "while away"], [3, "marker"]]
    assert result["events"] == [["open", None], ["close", 4001], ["open", None]]
    assert result["errors"] == ["auth_failed"]  # the refused refresh, reported


async def test_a_close_with_4002_ends_the_client(
    open_page: PageFactory, server: TestServer
) -> None:
    user = uid("dee")
    page = (await open_page()).page
    options = {"reconnect": {"minDelay": 10, "maxDelay": 50}}
    await page.evaluate(START, [server.url, server.token(user), None, options])
    await server.hub.disconnect_user(user, "disconnected by the application")
    await until(page, "t.client.state === 'closed'")
    result = await state_of(page)
    assert result["lastClose"] == {"code": 4002, "reason": "disconnected by the application"}
    assert result["events"] == [["open", None], ["close", 4002]]
