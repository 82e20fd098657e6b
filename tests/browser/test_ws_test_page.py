"""The test page /ws-test, clicked through in Chromium against a real server."""

from __future__ import annotations

import os
import re
from pathlib import Path

from playwright.async_api import expect

from wshub.testing import TestServer

from .conftest import PageFactory
from .pages import CONNECTED

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "ws-test.png"

# The log's colour code, as rendered (border-left-color of an entry).
BLUE, GREEN, RED, AMBER = (
    "rgb(36, 88, 214)",
    "rgb(28, 124, 74)",
    "rgb(196, 43, 43)",
    "rgb(154, 91, 0)",
)


async def test_connect_shows_welcome_then_ping_and_disconnect(
    open_page: PageFactory, server: TestServer
) -> None:
    page = await open_page()
    await expect(page.field("URL")).to_have_value(server.url)  # same host, /ws
    await expect(page.status).to_have_text("Disconnected")
    await expect(page.button("Publish")).to_be_disabled()

    await page.connect()
    welcome = page.entries('"type":"welcome"')
    await expect(welcome).to_have_count(1)
    await expect(welcome).to_have_css("border-left-color", GREEN)
    await expect(page.button("Connect")).to_be_disabled()

    await page.click("Ping")
    ping = page.entries('"type":"ping"')
    await expect(ping).to_have_count(1)
    await expect(ping).to_have_css("border-left-color", BLUE)
    await expect(page.entries('"type":"pong"')).to_have_count(1)

    await page.click("Disconnect")
    await expect(page.status).to_have_text("Disconnected")
    await expect(page.entries("connection closed: 1000")).to_have_count(1)
    assert await server.hub.wait_idle(5)

    await page.click("Clear log")
    await expect(page.log.get_by_role("listitem")).to_have_count(0)


async def test_authenticate_subscribe_and_publish(
    open_page: PageFactory, server: TestServer
) -> None:
    page = await open_page()
    await page.connect()
    await page.fill("Token", server.token("alice"))
    await page.click("Authenticate")
    await expect(page.entries('"type":"authenticated"', '"userId":"alice"')).to_have_count(1)
    await expect(page.status).to_contain_text("Connected as alice")

    await page.subscribe("news")
    await page.fill("Data", '{"n": 42}')
    await page.click("Publish")
    await expect(
        page.entries('"type":"message"', '"data":{"n":42}', '"from":"alice"')
    ).to_have_count(1)
    await expect(page.entries('"type":"published"', '"offset":1')).to_have_count(1)
    await expect(page.page.get_by_role("list", name="Subscriptions")).to_contain_text(
        "news: offset 1"
    )

    await server.hub.publish("news", {"from": "python"})
    await expect(page.entries('"type":"message"', '"data":{"from":"python"}')).to_have_count(1)

    await page.fill("Data", "{not json")
    await page.click("Publish")
    await expect(page.entries("Data is not valid JSON")).to_have_css("border-left-color", RED)

    await page.click("Unsubscribe")
    await expect(page.entries('"type":"unsubscribed"')).to_have_count(1)
    await expect(page.page.get_by_role("list", name="Subscriptions")).to_have_text("None")


async def test_chat_between_two_pages(open_page: PageFactory, server: TestServer) -> None:
    alice, bob = await open_page(), await open_page()
    await alice.connect("alice")
    await bob.connect("bob")

    await alice.fill("Recipient", "bob")
    await alice.fill("Message", "hello bob")
    await alice.click("Send chat")
    await expect(alice.entries('"type":"chat_received"', '"delivered":true')).to_have_count(1)
    chat = bob.entries('"type":"chat"', '"from":"alice"', '"message":"hello bob"')
    await expect(chat).to_have_count(1)
    await expect(chat).to_contain_text('"offset":1')


async def test_invalid_raw_json_is_answered_by_an_error_in_red(
    open_page: PageFactory, server: TestServer
) -> None:
    page = await open_page()
    await page.connect()
    await page.fill("Raw JSON", '{"type": "ping", oops}')
    await page.click("Send raw")
    await expect(page.entries('{"type": "ping", oops}')).to_have_count(1)  # sent as typed
    error = page.entries('"type":"error"', '"code":"invalid_json"')
    await expect(error).to_have_count(1)
    await expect(error).to_have_css("border-left-color", RED)

    await page.fill("Raw JSON", '{"type": "frobnicate", "id": "x"}')
    await page.click("Send raw")
    await expect(page.entries("Unknown message type: frobnicate", '"id":"x"')).to_have_count(1)
    await expect(page.status).to_have_text(CONNECTED)  # errors never close the connection


async def test_reconnect_resumes_channel_and_user_stream_exactly_once(
    open_page: PageFactory, server: TestServer
) -> None:
    page = await open_page()
    await page.connect("alice")
    await page.subscribe("news")
    await server.hub.publish("news", {"seq": "before"})
    await expect(page.entries('"seq":"before"')).to_have_count(1)

    # A real close frame through the transport, as a restarting server sends.
    for session in list(server.hub.sessions.values()):
        session.close(1012, "restart")
    assert await server.hub.wait_idle(5)
    await server.hub.publish("news", {"seq": "while-away"})
    await server.hub.notify_user("alice", "Missed", "sent while away")
    assert not server.hub.sessions, "published while the page was disconnected"

    await expect(page.entries("connection closed: 1012 restart")).to_have_count(1)
    await expect(page.entries("reconnecting in")).to_have_count(1)
    await expect(page.entries("reconnected; subscriptions and user stream resumed")).to_be_visible()
    missed = page.entries('"seq":"while-away"')
    await expect(missed).to_have_count(1)
    await expect(missed).to_contain_text('"offset":2')
    note = page.entries('"type":"notification"', "sent while away")
    await expect(note).to_have_count(1)
    await expect(note).to_have_css("border-left-color", AMBER)
    # The resume asked for what came after what the page had seen.
    await expect(page.entries('"type":"subscribe"', '"since":1')).to_have_count(1)
    await expect(page.entries('"type":"authenticate"', '"since":0')).to_have_count(1)

    # Anything sent twice would arrive before the reply to a later ping.
    await page.click("Ping")
    await expect(page.entries('"type":"pong"')).to_have_count(1)
    await expect(missed).to_have_count(1)
    await expect(note).to_have_count(1)
    await expect(page.entries("duplicate")).to_have_count(0)
    await expect(page.status).to_have_text(re.compile("^Connected as alice"))


async def test_with_reconnect_off_a_server_close_ends_the_session(
    open_page: PageFactory, server: TestServer
) -> None:
    page = await open_page()
    await page.field("Reconnect automatically").uncheck()
    await page.connect()
    for session in list(server.hub.sessions.values()):
        session.close(1012, "restart")
    await expect(page.entries("closed: 1012 restart (not reconnecting)")).to_have_count(1)
    await expect(page.status).to_have_text("Disconnected")
    await expect(page.button("Connect")).to_be_enabled()
    assert await server.hub.wait_idle(5)
    assert not server.hub.sessions


async def test_a_whole_session(open_page: PageFactory, server: TestServer, transport: str) -> None:
    """Every control once, both users; with WSHUB_SCREENSHOTS=1 it saves docs/img/ws-test.png."""
    alice, bob = await open_page(), await open_page()
    await bob.connect("bob")
    await alice.connect("alice")
    await alice.subscribe("news")
    await alice.fill("Data", '{"headline": "wshub ships a browser client"}')
    await alice.click("Publish")
    await expect(alice.entries('"type":"published"')).to_have_count(1)
    await alice.fill("Recipient", "bob")
    await alice.fill("Message", "lunch at noon?")
    await alice.click("Send chat")
    await expect(bob.entries('"message":"lunch at noon?"')).to_have_count(1)
    await server.hub.notify_user("alice", "Deploy finished", "v1.4 is live", type="success")
    await server.hub.broadcast("Maintenance tonight at 22:00 UTC")
    await expect(alice.entries('"type":"system_message"')).to_have_css("border-left-color", AMBER)
    await alice.fill("Channel", "presence-lobby")
    await alice.click("Subscribe")
    await alice.click("Presence")
    await expect(alice.entries('"type":"presence"', '"users":["alice"]')).to_have_count(1)
    await alice.fill("Raw JSON", "{oops")
    await alice.click("Send raw")
    await expect(alice.entries('"code":"invalid_json"')).to_have_count(1)
    await alice.click("Ping")
    await expect(alice.entries('"type":"pong"')).to_have_count(1)

    if os.environ.get("WSHUB_SCREENSHOTS") == "1" and transport == "native":
        # Tall enough for every control and the whole log, from the top.
        await alice.page.set_viewport_size({"width": 1280, "height": 1120})
        await alice.page.evaluate("window.scrollTo(0, 0)")
        await alice.page.get_by_role("button", name="Ping").blur()
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await alice.page.screenshot(path=str(SCREENSHOT))
