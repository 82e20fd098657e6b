"""The /ws-test page as the tests see it: found by role and label, as a user would."""

from __future__ import annotations

import re

from playwright.async_api import Locator, Page, expect

from wshub.testing import TestServer

CONNECTED = re.compile(r"^Connected")


class WsTestPage:
    """One browser tab on /ws-test."""

    def __init__(self, page: Page, server: TestServer) -> None:
        self.page = page
        self.server = server

    @property
    def log(self) -> Locator:
        return self.page.get_by_role("log", name="Frames")

    @property
    def status(self) -> Locator:
        return self.page.get_by_role("status")

    def entries(self, *texts: str) -> Locator:
        """Log entries containing every one of ``texts``."""
        entries = self.log.get_by_role("listitem")
        for text in texts:
            entries = entries.filter(has_text=text)
        return entries

    def button(self, name: str) -> Locator:
        return self.page.get_by_role("button", name=name, exact=True)

    def field(self, label: str) -> Locator:
        return self.page.get_by_label(label, exact=True)

    async def click(self, name: str) -> None:
        await self.button(name).click()

    async def fill(self, label: str, value: str) -> None:
        await self.field(label).fill(value)

    async def connect(self, user: str | None = None) -> None:
        """Connect (as ``user``, with a token in the Token field) and wait until ready."""
        if user is not None:
            await self.fill("Token", self.server.token(user))
        await self.click("Connect")
        await expect(self.status).to_have_text(CONNECTED)
        await expect(self.entries('"type":"welcome"').last).to_be_visible()
        if user is not None:
            await expect(self.status).to_contain_text(f"as {user}")

    async def subscribe(self, channel: str) -> None:
        await self.fill("Channel", channel)
        await self.click("Subscribe")
        await expect(self.entries('"type":"subscribed"', f'"channel":"{channel}"')).to_have_count(1)
