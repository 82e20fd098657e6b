"""Fixtures for the tests in a real headless Chromium: the browser, and pages of a running server.

The browser tests skip, with the reason, when no Chromium is found, except with
``WSHUB_REQUIRE_CHROMIUM=1`` (CI sets it): then they fail. ``WSHUB_CHROMIUM`` names the
executable to use instead of the first of ``/usr/bin/chromium``, ``chromium``,
``chromium-browser``, ``google-chrome`` on the PATH. Playwright's own browser downloads are never
used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Route, async_playwright

from wshub.testing import TestServer

from .pages import WsTestPage

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 860}
JS_DIR = Path(__file__).parent / "js"

PageFactory = Callable[[], Awaitable[WsTestPage]]


def find_chromium() -> str | None:
    """The Chromium executable to use, or None."""
    named = os.environ.get("WSHUB_CHROMIUM")
    if named:
        return shutil.which(named)
    for candidate in CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        named = os.environ.get("WSHUB_CHROMIUM")
        reason = (
            f"no Chromium: WSHUB_CHROMIUM={named!r} is not an executable"
            if named
            else "no Chromium found (tried " + ", ".join(CANDIDATES) + "); "
            "install it with `apt-get install chromium` or set WSHUB_CHROMIUM"
        )
        if os.environ.get("WSHUB_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"{reason}; WSHUB_REQUIRE_CHROMIUM=1 forbids skipping")
        pytest.skip(reason)
    return path


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def _serve_test_file(route: Route) -> None:
    """``/__tests__/NAME.js`` comes from tests/browser/js/, on the server's origin, so test
    modules can ``import "/wshub.js"`` like any page would."""
    name = route.request.url.rsplit("/", 1)[-1]
    path = JS_DIR / name
    if path.suffix == ".js" and path.is_file():
        await route.fulfill(body=path.read_text(), content_type="text/javascript")
    else:
        await route.fulfill(status=404, body=f"no test file {name}")


@pytest.fixture
async def open_page(browser: Browser, server: TestServer) -> AsyncIterator[PageFactory]:
    """``await open_page()``: the server's /ws-test in a browser context of its own (its own
    user, as a second browser profile would be). Fails the test if a page had an uncaught
    JavaScript error or an unhandled rejection."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    async def open_one() -> WsTestPage:
        context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        contexts.append(context)
        await context.route("**/__tests__/*", _serve_test_file)
        page = await context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(server.http + "/ws-test")
        return WsTestPage(page, server)

    yield open_one
    for context in contexts:
        await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def transport() -> str:
    """Browser tests run on the native endpoint (what `wshub serve` uses); the server tests
    cover the ASGI endpoint with the same protocol checks."""
    return "native"
