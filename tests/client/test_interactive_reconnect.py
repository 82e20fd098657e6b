"""``wshub client`` in a terminal, reconnecting against real servers: the close that started it is
reported once, then each failed attempt with its own outcome (503 while the server drains,
refused, then a 404 that ends it), not the first close code again."""

from __future__ import annotations

import asyncio
import re

import pytest

from wshub.client import interactive
from wshub.client.render import FramePrinter
from wshub.testing import free_port, run_server

from ..conftest import make_settings
from .conftest import FAST

TIMEOUT = 5.0


class RecordingPrinter(FramePrinter):
    """The tool's printer, with every note and error also put on a queue for the test."""

    notes: asyncio.Queue[str]

    def note(self, text: str, style: str = "yellow") -> None:
        super().note(text, style)
        self.notes.put_nowait(text)

    def error(self, text: str) -> None:
        super().error(text)
        self.notes.put_nowait(text)


async def _next_note(notes: asyncio.Queue[str], pattern: str, seen: list[str]) -> str:
    """The next note matching ``pattern``; the ones before it are kept in ``seen``."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            note = await notes.get()
            seen.append(note)
            if re.search(pattern, note):
                return note


async def test_each_failed_reconnect_attempt_reports_its_own_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notes: asyncio.Queue[str] = asyncio.Queue()
    monkeypatch.setattr(RecordingPrinter, "notes", notes, raising=False)
    monkeypatch.setattr(interactive, "FramePrinter", RecordingPrinter)
    # No terminal to read: the input queue stays empty.
    monkeypatch.setattr(interactive, "_start_input_thread", lambda queue, interactive: None)

    port = free_port()
    seen: list[str] = []
    async with run_server(make_settings(), port=port) as server:
        run = asyncio.create_task(
            interactive.run_client(
                server.url, token=None, interactive=True, plain=True, policy=FAST
            )
        )
        await _next_note(notes, r"^connected", seen)
    # The server is gone: closed with 1001, then nothing listens on the port.
    first = await _next_note(notes, r"^connection closed", seen)
    assert first.startswith("connection closed (1001") and "(attempt 1)" in first, first
    # While it drains it answers 503; then nothing listens on the port.
    refused = await _next_note(notes, r"^attempt \d+: connection refused", seen)
    assert re.match(
        r"attempt \d+: connection refused; reconnecting in [\d.]+s \(attempt \d+\)$", refused
    )
    attempts = [note for note in seen if note.startswith("attempt ")]
    assert attempts[0].startswith("attempt 1: "), seen
    assert all(
        re.match(r"attempt \d+: (refused with HTTP 503|connection refused);", note)
        for note in attempts
    ), attempts

    # A server on the port again, whose WebSocket endpoint is elsewhere: 404 for /ws, which is
    # not worth retrying; the tool says so, not "connection closed (1001)".
    # (On the ASGI transport: in this process the native one still knows the first hub's path.)
    async with run_server(make_settings(path="/elsewhere", transport="asgi"), port=port):
        last = await _next_note(notes, r"^stopped reconnecting", seen)
        assert last == (
            "stopped reconnecting: handshake refused (HTTP 404) "
            "no WebSocket endpoint here; the hub is at /elsewhere"
        ), last
        assert await asyncio.wait_for(run, TIMEOUT) == 1
    # The first close is reported once, never again for an attempt.
    assert sum("1001" in note for note in seen) == 1, seen
