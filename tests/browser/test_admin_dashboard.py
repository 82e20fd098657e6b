"""The dashboard /admin, in Chromium against real servers: signing in with the API key, the
hub's real figures, the live rate chart, a wrong key, a server that goes away, the nodes of a
cluster. With WSHUB_SCREENSHOTS=1, test_live_traffic_shows_as_live_rates saves
docs/img/admin.png."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import websockets
from playwright.async_api import Browser, BrowserContext, Locator, Page, Route, expect

from wshub.core.hub import Hub
from wshub.testing import TestClient, TestServer, free_port, run_server

from ..conftest import API_KEY, make_settings
from .conftest import VIEWPORT

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "admin.png"
#: Milliseconds between two polls of /api/stats in the tests (the page's default is 1000).
INTERVAL = 100
LIVE = re.compile(r"^Live$")
#: The chart's text summary once a non-zero number of messages went out in the chart's window.
PEAK_OUT = re.compile(r"Peak over the last [\d.]+ s: [\d.,]+ in/s, (?!0 )[\d.,]+ out/s\.$")
#: ... and while they still go out.
NOW_OUT = re.compile(r"^Now: [\d.,]+ messages in/s, (?!0 )[\d.,]+ messages out/s")
#: A figure other than zero (nor the dash shown before there are two samples).
NOT_ZERO = re.compile(r"^(?!0$)[\d.,]+$")


class Dashboard:
    """One browser tab on /admin, found by role and label as a user would."""

    def __init__(self, page: Page) -> None:
        self.page = page

    @property
    def status(self) -> Locator:
        return self.page.get_by_role("status")

    @property
    def alert(self) -> Locator:
        return self.page.get_by_role("alert")

    @property
    def chart(self) -> Locator:
        return self.page.get_by_role("img", name=re.compile("messages in and out per second"))

    @property
    def nodes(self) -> Locator:
        return self.page.get_by_role("list", name="Nodes").get_by_role("listitem")

    def button(self, name: str) -> Locator:
        return self.page.get_by_role("button", name=name, exact=True)

    def tile(self, label: str) -> Locator:
        """The figure of the tile labelled ``label``."""
        return self.page.get_by_role("group", name=label, exact=True).locator(".value")

    def rows(self, table: str) -> Locator:
        return self.page.get_by_role("table", name=table, exact=True).get_by_role("row")

    def row(self, table: str, first_cell: str) -> Locator:
        """The cells of the row of ``table`` whose first cell is ``first_cell``."""
        first = self.page.get_by_role("cell", name=first_cell, exact=True)
        return self.rows(table).filter(has=first).get_by_role("cell")

    async def sign_in(self, key: str) -> None:
        await self.page.get_by_label("API key", exact=True).fill(key)
        await self.button("Sign in").click()


DashboardFactory = Callable[..., Awaitable[Dashboard]]


@pytest.fixture
def transport() -> str:
    """What the dashboard shows does not depend on the WebSocket endpoint: test it once."""
    return "native"


@pytest.fixture
async def open_dashboard(browser: Browser) -> AsyncIterator[DashboardFactory]:
    """``await open_dashboard(server.http)``: /admin polling every INTERVAL ms, in a browser
    context of its own (its own session storage). ``fake_clock=True`` installs Playwright's
    clock first, so a test can run the page's timers forward. Fails the test if a page had an
    uncaught JavaScript error."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    async def open_one(
        base: str, *, interval: int = INTERVAL, fake_clock: bool = False
    ) -> Dashboard:
        context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        if fake_clock:
            await page.clock.install()
        await page.goto(f"{base}/admin?interval={interval}")
        return Dashboard(page)

    yield open_one
    for context in contexts:
        await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@contextlib.asynccontextmanager
async def clients(server: TestServer, *users: str | None) -> AsyncIterator[list[TestClient]]:
    """One welcomed WebSocket client per entry of ``users`` (None: anonymous)."""
    async with contextlib.AsyncExitStack() as stack:
        opened = []
        for user in users:
            ws = await stack.enter_async_context(server.connect(user=user))
            await ws.expect("welcome")
            opened.append(ws)
        yield opened


@contextlib.asynccontextmanager
async def reading(*opened: TestClient) -> AsyncIterator[None]:
    """Read what the server sends to ``opened``, as live pages would, so that nothing queues up
    (an unread client would also hold up its own closing handshake); close them at the end."""

    async def drain(ws: TestClient) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for _ in ws.ws:
                pass

    readers = [asyncio.create_task(drain(ws)) for ws in opened]
    try:
        yield
    finally:
        for ws in opened:
            await ws.ws.close()
        await asyncio.gather(*readers)


async def subscribe(channel: str, *subscribers: TestClient) -> None:
    for ws in subscribers:
        reply = await ws.request("subscribe", {"channel": channel}, id=f"sub-{channel}")
        assert reply["type"] == "subscribed", reply


async def test_the_stats_behind_the_page_need_the_api_key(server: TestServer) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=5) as http:
        page = await http.get("/admin")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert server.hub.node_id not in page.text  # the page itself holds no data
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            assert (await http.get("/api/stats", headers=headers)).status_code == 401
        good = {"Authorization": f"Bearer {API_KEY}"}
        assert (await http.get("/api/stats", headers=good)).json()["nodeId"] == server.hub.node_id


async def test_a_wrong_key_is_refused_clearly_and_polling_stops(
    open_dashboard: DashboardFactory, server: TestServer
) -> None:
    dash = await open_dashboard(server.http, fake_clock=True)
    polls: list[str] = []
    dash.page.on("request", lambda r: polls.append(r.url) if "/api/stats" in r.url else None)
    await expect(dash.page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(dash.status).to_have_text("Signed out")
    await expect(dash.page.get_by_role("group", name="Connections")).to_be_hidden()
    await expect(dash.button("Sign out")).to_be_hidden()

    await dash.sign_in("not-the-key")
    await expect(dash.alert).to_have_text(
        "Wrong API key: the server answered 401 Unauthorized (Missing or invalid API key)."
    )
    await expect(dash.status).to_have_text("Wrong API key")
    await expect(dash.page.get_by_label("API key")).to_be_focused()
    await expect(dash.page.get_by_role("group", name="Connections")).to_be_hidden()
    assert await dash.page.evaluate("sessionStorage.length") == 0

    # Fifty polling intervals pass at once; then a request of our own, whose event comes after
    # any request the page would have made.
    await dash.page.clock.run_for(50 * INTERVAL)
    assert await dash.page.evaluate("fetch('/healthz').then((r) => r.status)") == 200
    assert len(polls) == 1, polls

    await dash.sign_in(API_KEY)
    await expect(dash.status).to_have_text(LIVE)
    await expect(dash.alert).to_be_hidden()
    await expect(dash.tile("Connections")).to_have_text("0")


API_DISABLED = (
    "The HTTP API is disabled on this server (no WS_API_KEY): "
    "set WS_API_KEY on the server and restart it to use the dashboard."
)


async def test_without_an_api_key_configured_the_page_says_the_api_is_off(
    open_dashboard: DashboardFactory,
) -> None:
    async with run_server(make_settings(transport="native", api_key=None)) as server:
        dash = await open_dashboard(server.http)
        await dash.sign_in("anything")
        await expect(dash.alert).to_have_text(API_DISABLED)
        await expect(dash.status).to_have_text("HTTP API disabled")


async def test_without_an_api_key_the_page_says_so_before_any_key_is_typed(
    open_dashboard: DashboardFactory, server: TestServer
) -> None:
    async with run_server(make_settings(transport="native", api_key=None)) as off:
        dash = await open_dashboard(off.http)
        await expect(dash.alert).to_have_text(API_DISABLED)
        await expect(dash.status).to_have_text("HTTP API disabled")
        await expect(dash.status).not_to_have_text(re.compile("Wrong API key"))
        await expect(dash.page.get_by_role("group", name="Connections")).to_be_hidden()
    # A server with a key: no such message until a key is tried, and then "Wrong API key".
    dash = await open_dashboard(server.http)
    await expect(dash.status).to_have_text("Signed out")
    assert await dash.page.evaluate("fetch('/healthz').then((r) => r.status)") == 200
    await expect(dash.alert).to_be_hidden()
    await dash.sign_in("not-the-key")
    await expect(dash.status).to_have_text("Wrong API key")


async def test_the_tiles_and_tables_show_the_hubs_real_figures(
    open_dashboard: DashboardFactory, server: TestServer
) -> None:
    async with clients(server, "alice", "bob", None) as (alice, bob, anon):
        await subscribe("news", alice, anon)
        await subscribe("alerts", bob)
        dash = await open_dashboard(server.http)
        await dash.sign_in(API_KEY)
        await expect(dash.status).to_have_text(LIVE)
        await expect(dash.tile("Connections")).to_have_text("3")
        await expect(dash.tile("Users")).to_have_text("2")
        await expect(dash.tile("Channels")).to_have_text("2")
        await expect(dash.tile("Queued")).to_have_text("0 B")
        await expect(
            dash.page.get_by_text(f"node {server.hub.node_id}", exact=True)
        ).to_be_visible()
        await expect(dash.nodes).to_have_text([f"{server.hub.node_id}this node"])

        # Biggest first; then sorted by the column headers' buttons.
        await expect(dash.rows("Channels")).to_have_count(3)  # the header and two channels
        await expect(dash.rows("Channels").nth(1).get_by_role("cell")).to_have_text(["news", "2"])
        await expect(dash.rows("Channels").nth(2).get_by_role("cell")).to_have_text(["alerts", "1"])
        await dash.button("Channel").click()
        await expect(dash.page.get_by_role("columnheader", name="Channel")).to_have_attribute(
            "aria-sort", "ascending"
        )
        await expect(dash.rows("Channels").nth(1).get_by_role("cell")).to_have_text(["alerts", "1"])
        await dash.button("Subscribers").click()
        await expect(dash.rows("Channels").nth(1).get_by_role("cell")).to_have_text(["news", "2"])

        # Messages by type: totals in and out, and a rate once there are two samples.
        await expect(dash.row("Messages by type", "subscribe")).to_have_text(
            ["subscribe", "3", "0", "0", "0"]
        )
        await expect(dash.row("Messages by type", "welcome")).to_have_text(
            ["welcome", "0", "0", "3", "0"]
        )
        await expect(dash.rows("Messages by type").last.get_by_role("cell")).to_have_text(
            ["3", "0", "8", "0"]  # in: 3 subscribe; out: 3 welcome, 3 subscribed, 2 authenticated
        )
        await expect(dash.rows("Messages by type").last.get_by_role("rowheader")).to_have_text(
            "All types"
        )
        await expect(dash.tile("Messages in")).to_have_text("3")
        await expect(dash.row("Messages by type", "subscribed")).to_have_text(
            ["subscribed", "0", "0", "3", "0"]
        )

        # The figures follow the hub.
        await anon.ws.close()
        await expect(dash.tile("Connections")).to_have_text("2")
        await expect(dash.row("Channels", "news")).to_have_text(["news", "1"])

    # Signed in until signing out, reloads included (the key is in sessionStorage).
    await expect(dash.tile("Connections")).to_have_text("0")
    await dash.page.reload()
    await expect(dash.status).to_have_text(LIVE)
    await expect(dash.tile("Connections")).to_have_text("0")
    await expect(dash.page.get_by_role("heading", name="Sign in")).to_be_hidden()
    await expect(dash.rows("Channels").nth(1)).to_have_text(
        "No channel has a subscriber on this node."
    )
    await dash.button("Sign out").click()
    await expect(dash.status).to_have_text("Signed out")
    await expect(dash.page.get_by_label("API key")).to_have_value("")
    await dash.page.reload()
    await expect(dash.page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(dash.page.get_by_role("group", name="Connections")).to_be_hidden()


async def test_a_burst_of_publications_shows_in_the_rate_chart(
    open_dashboard: DashboardFactory, server: TestServer
) -> None:
    async with clients(server, None, None) as subscribers:
        await subscribe("news", *subscribers)
        async with reading(*subscribers):
            dash = await open_dashboard(server.http)
            await dash.sign_in(API_KEY)
            await expect(dash.chart).to_have_accessible_name(
                "Line chart of messages in and out per second over the last 6 s,"
                " one sample every 0.1 s"
            )
            await expect(dash.chart).to_have_accessible_description(
                re.compile(r"^Now: 0 messages in/s, 0 messages out/s \(0 deliveries/s\)\. ")
            )

            for n in range(100):
                await server.hub.publish("news", {"n": n})
            await expect(dash.chart).to_have_accessible_description(PEAK_OUT)
            await expect(dash.tile("Publications")).to_have_text("100")
            await expect(dash.tile("Deliveries")).to_have_text("200")
            await expect(dash.row("Messages by type", "message")).to_have_text(
                ["message", "0", "0", "200", "0"]
            )
            # The burst is over: the current rate is back to zero, the peak still shows it.
            await expect(dash.chart).to_have_accessible_description(
                re.compile(r"^Now: 0 messages in/s, 0 messages out/s")
            )
            await expect(dash.chart).to_have_accessible_description(PEAK_OUT)


async def test_a_server_that_goes_away_shows_disconnected_and_is_retried(
    open_dashboard: DashboardFactory,
) -> None:
    port = free_port()
    async with run_server(make_settings(transport="native"), port=port) as first:
        dash = await open_dashboard(first.http)
        await dash.sign_in(API_KEY)
        await expect(dash.status).to_have_text(LIVE)
        await expect(dash.page.get_by_text(f"node {first.hub.node_id}", exact=True)).to_be_visible()

    await expect(dash.status).to_have_text("Disconnected · retrying")
    await expect(
        dash.page.get_by_text(re.compile(r"^Disconnected: cannot reach the server"))
    ).to_be_visible()
    await expect(dash.tile("Connections")).to_have_text("0")  # the last figures stay, greyed
    await expect(dash.page.get_by_role("heading", name="Sign in")).to_be_hidden()

    async with run_server(make_settings(transport="native"), port=port) as second:
        await expect(dash.status).to_have_text(LIVE)
        await expect(
            dash.page.get_by_text(f"node {second.hub.node_id}", exact=True)
        ).to_be_visible()
        await expect(dash.page.get_by_text(re.compile("^Disconnected:"))).to_be_hidden()


async def test_every_node_the_api_names_is_listed(
    open_dashboard: DashboardFactory, server: TestServer
) -> None:
    """A cluster, as /api/stats describes it: this node first and marked, then the others.
    (The answers are the server's, with two more node ids added on the way.)"""

    async def cluster_of_three(route: Route) -> None:
        response = await route.fetch()
        stats = await response.json()
        stats["nodes"] = ["node-b", stats["nodeId"], "node-a"]
        await route.fulfill(response=response, json=stats)

    dash = await open_dashboard(server.http)
    await dash.page.route("**/api/stats", cluster_of_three)
    await dash.sign_in(API_KEY)
    await expect(dash.nodes).to_have_text([f"{server.hub.node_id}this node", "node-a", "node-b"])
    await expect(dash.page.get_by_text("3 live nodes")).to_be_visible()
    await dash.page.unroute_all(behavior="ignoreErrors")  # polls after the server stops


async def traffic(hub: Hub, chatters: list[TestClient], stop: asyncio.Event) -> None:
    """Live traffic until ``stop``: price ticks at a rate that rises and falls, news now and
    then, and chat lines from the clients (messages in)."""
    loop = asyncio.get_running_loop()
    start, tick = loop.time(), 0
    while not stop.is_set():
        wave = 1 + math.sin((loop.time() - start) / 1.5)
        for _ in range(1 + round(3 * wave)):
            await hub.publish("prices", {"symbol": "WSH", "price": round(100 + 5 * wave, 2)})
        if tick % 2 == 0:
            ws = chatters[tick // 2 % len(chatters)]
            line = {"channel": "chat:lobby", "data": {"text": f"message {tick}"}}
            await ws.send("publish", line, id=f"chat-{tick}")
        if tick % 15 == 0:
            await hub.publish("news", {"headline": f"update {tick // 15}"})
        tick += 1
        # Pacing the traffic, not waiting for anything: a tick every 50 ms.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def test_live_traffic_shows_as_live_rates(
    open_dashboard: DashboardFactory, server: TestServer
) -> None:
    """Clients on several channels and a steady flow of messages: the current rates are not
    zero while it flows. With WSHUB_SCREENSHOTS=1 it fills the chart (60 samples, 250 ms
    apart) and saves docs/img/admin.png."""
    screenshot = os.environ.get("WSHUB_SCREENSHOTS") == "1"
    users = ("alice", "bob", "carol", "dave", "erin", "alice", "frank", None, None, None, None)
    async with clients(server, *users) as everyone:
        await subscribe("prices", *everyone)
        await subscribe("news", *everyone[:8])
        await subscribe("chat:lobby", *everyone[:5])
        await subscribe("presence-lobby", *everyone[:3])
        await subscribe("orders:eu", everyone[1], everyone[4])
        stop = asyncio.Event()
        async with reading(*everyone):
            publisher = asyncio.create_task(traffic(server.hub, everyone[:4], stop))
            try:
                dash = await open_dashboard(server.http, interval=250 if screenshot else INTERVAL)
                await dash.sign_in(API_KEY)
                await expect(dash.tile("Connections")).to_have_text("11")
                await expect(dash.tile("Users")).to_have_text("6")
                await expect(dash.tile("Channels")).to_have_text("5")
                await expect(dash.row("Channels", "prices")).to_have_text(["prices", "11"])
                await expect(dash.chart).to_have_accessible_description(NOW_OUT)
                publish_in_per_s = dash.row("Messages by type", "publish").nth(2)
                await expect(publish_in_per_s).to_have_text(NOT_ZERO)
                if screenshot:
                    await expect(dash.chart).to_have_attribute("data-samples", "60", timeout=30_000)
                    await expect(dash.chart).to_have_accessible_description(NOW_OUT)
                    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                    await dash.page.screenshot(path=str(SCREENSHOT), full_page=True)
            finally:
                stop.set()
                await publisher
