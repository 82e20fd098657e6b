"""``wshub smoke`` in-process against a real server: every check passes on a healthy server,
checks that lack a secret or key are skipped with the reason, and failures are reported."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from wshub.client.smoke import CheckResult, SmokeTest, http_base, render
from wshub.testing import TestServer, free_port

from ..conftest import API_KEY, SECRET


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def by_name(results: list[CheckResult]) -> dict[str, str]:
    return {r.name: r.status for r in results}


async def test_every_check_passes_on_a_healthy_server(server: TestServer) -> None:
    smoke = SmokeTest(server.url, secret=SECRET, api_key=API_KEY, clients=10, console=quiet())
    results = await smoke.run()
    assert [r.name for r in results if r.status != "pass"] == []
    assert len(results) == 11 and results[-1].name == "fan-out to 10"
    out = io.StringIO()
    Console(file=out, width=160).print(render(results, server.url, 0.5))
    assert "11 passed, 0 failed, 0 skipped" in out.getvalue()


async def test_checks_without_credentials_are_skipped_with_the_reason(server: TestServer) -> None:
    results = await SmokeTest(server.url, console=quiet()).run()
    statuses = by_name(results)
    assert statuses["connect + welcome"] == "pass" and statuses["invalid JSON"] == "pass"
    assert statuses["unknown type"] == "pass" and statuses["ping / pong"] == "pass"
    skipped = [r for r in results if r.status == "skip"]
    assert {r.name for r in skipped} >= {"authenticate", "chat (2 connections)", "broadcast (HTTP)"}
    assert all("needs --" in r.detail for r in skipped)
    assert "fail" not in statuses.values()


async def test_a_wrong_secret_fails_the_checks_that_authenticate(server: TestServer) -> None:
    results = await SmokeTest(server.url, secret="wrong-" + "x" * 40, console=quiet()).run()
    failed = [r for r in results if r.status == "fail"]
    assert "authenticate" in {r.name for r in failed}
    assert any("auth_failed" in r.detail for r in failed)


async def test_an_unreachable_server_fails_the_first_check_and_skips_the_rest() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    results = await SmokeTest(url, secret=SECRET, timeout=2, console=quiet()).run()
    assert results[0].status == "fail"
    assert {r.status for r in results[1:]} == {"skip"}


@pytest.mark.parametrize(
    ("ws", "http"),
    [
        ("ws://localhost:5000/ws", "http://localhost:5000"),
        ("wss://hub.example.com/realtime/ws?x=1", "https://hub.example.com"),
    ],
)
def test_the_http_api_lives_on_the_websocket_host(ws: str, http: str) -> None:
    assert http_base(ws) == http
