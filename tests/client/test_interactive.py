"""``wshub client``: parsing input lines (pure), and piped runs against a real server."""

from __future__ import annotations

import io

import orjson
import pytest

from wshub.client.interactive import Command, parse_line, run_client
from wshub.client.render import FramePrinter
from wshub.testing import TestServer


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", Command("empty")),
        ("   ", Command("empty")),
        ('{"type":"ping"}', Command("raw", ('{"type":"ping"}',))),
        ("not json at all", Command("raw", ("not json at all",))),
        ("/sub news", Command("sub", ("news",))),
        ("/subscribe news", Command("sub", ("news",))),
        ("/unsub news", Command("unsub", ("news",))),
        ('/pub news {"x": 1}', Command("pub", ("news", '{"x": 1}'))),
        ("/chat bob hi there", Command("chat", ("bob", "hi there"))),
        ("/ping", Command("ping")),
        ("/auth abc.def.ghi", Command("auth", ("abc.def.ghi",))),
        ("/presence presence-room", Command("presence", ("presence-room",))),
        ("/quit", Command("quit")),
        ("/exit", Command("quit")),
        ("/help", Command("help")),
        ("/sub", Command("invalid", ("usage: /sub CHANNEL",))),
        ("/sub a b", Command("invalid", ("usage: /sub CHANNEL",))),
        ("/pub news", Command("invalid", ("usage: /pub CHANNEL DATA",))),
        ("/chat bob", Command("invalid", ("usage: /chat USER TEXT",))),
        ("/frob", Command("invalid", ("unknown command /frob (try /help)",))),
    ],
)
def test_lines_parse_into_commands(line: str, expected: Command) -> None:
    assert parse_line(line) == expected


async def run_piped(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
    lines: str,
    token: str | None = None,
) -> tuple[int, list[dict[str, object]], str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    code = await run_client(url, token=token, wait=0.2, interactive=False, plain=True)
    out, err = capsys.readouterr()
    return code, [orjson.loads(line) for line in out.splitlines()], err


async def test_piped_lines_are_sent_in_order_and_replies_printed_as_json_lines(
    server: TestServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = "\n".join(
        [
            '{"type":"ping","id":"raw-1"}',
            "/sub news",
            '/pub news {"x":1}',
            "/chat bob hi there",
            "/presence presence-room",
            "{oops",
            "/frob",
        ]
    )
    code, frames, err = await run_piped(monkeypatch, capsys, server.url, lines, server.token("amy"))
    assert code == 0
    types = [f["type"] for f in frames]
    assert types[:2] == ["welcome", "authenticated"]
    assert {"type": "pong", "id": "raw-1"}.items() <= frames[2].items()
    assert "subscribed" in types and "published" in types and "chat_received" in types
    message = next(f for f in frames if f["type"] == "message")
    assert message["payload"]["data"] == {"x": 1}  # type: ignore[index]
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["payload"]["code"] for e in errors] == ["invalid_json"]  # type: ignore[index]
    assert "unknown command /frob" in err


async def test_server_errors_to_shortcuts_are_printed_and_the_run_goes_on(
    server: TestServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, frames, _ = await run_piped(monkeypatch, capsys, server.url, "/chat bob hi\n/ping\n")
    assert code == 0
    assert frames[1]["type"] == "error"
    assert frames[1]["payload"]["code"] == "not_authenticated"  # type: ignore[index]
    assert frames[2]["type"] == "pong"


async def test_quit_stops_reading(
    server: TestServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, frames, _ = await run_piped(monkeypatch, capsys, server.url, "/quit\n/ping\n")
    assert code == 0 and [f["type"] for f in frames] == ["welcome"]


async def test_a_refused_token_exits_1_with_the_reason(
    server: TestServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run_piped(monkeypatch, capsys, server.url, "/ping\n", token="bad")
    assert code == 1 and "authentication failed" in err


def test_terminal_output_labels_frames_and_hides_tokens() -> None:
    out = io.StringIO()
    printer = FramePrinter(plain=False, out=out, err=io.StringIO())
    printer.received('{"type":"error","payload":{"code":"forbidden","message":"no"}}')
    printer.sent('{"type":"authenticate","payload":{"token":"eyJhbGciOiJIUzI1NiJ9.secret.sig"}}')
    text = out.getvalue()
    assert "< error" in text and "forbidden" in text
    assert "> authenticate" in text and "secret.sig" not in text
