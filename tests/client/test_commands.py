"""``wshub smoke`` and ``wshub client`` as a user runs them: subprocesses against a server that
runs in a subprocess of its own (``wshub serve``)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from wshub.testing import free_port

from ..conftest import API_KEY, SECRET
from .conftest import WSHUB, ServerProcess, clean_env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("serve"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def wshub(*args: str, cwd: Path, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WSHUB, *args],
        input=stdin,
        env=clean_env(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_smoke_passes_against_a_healthy_server_and_prints_the_table(
    served: ServerProcess, tmp_path: Path
) -> None:
    r = wshub(
        "smoke", served.url, "--secret", SECRET, "--api-key", API_KEY, "--clients", "5",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "11 passed, 0 failed, 0 skipped" in r.stdout
    for check in ("connect + welcome", "offline delivery", "broadcast (HTTP)", "fan-out to 5"):
        assert check in r.stdout
    assert "FAIL" not in r.stdout


def test_smoke_takes_secret_and_key_from_the_environment(
    served: ServerProcess, tmp_path: Path
) -> None:
    r = wshub("smoke", served.url, cwd=tmp_path, WS_JWT_SECRET=SECRET, WS_API_KEY=API_KEY)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "10 passed" in r.stdout


def test_smoke_exits_non_zero_when_a_check_fails(served: ServerProcess, tmp_path: Path) -> None:
    r = wshub("smoke", served.url, "--secret", "not-the-servers-secret-" + "x" * 20, cwd=tmp_path)
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "auth_failed" in r.stdout


def test_smoke_exits_non_zero_when_nothing_listens(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    r = wshub("smoke", url, "--secret", SECRET, "--timeout", "2", cwd=tmp_path)
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "0 passed, 1 failed" in r.stdout


def test_client_in_a_pipe_sends_stdin_and_prints_replies_as_json_lines(
    served: ServerProcess, tmp_path: Path
) -> None:
    stdin = '{"type":"ping","id":"p1"}\n/sub news\n/pub news {"n":1}\n/ping\n'
    r = wshub("client", served.url, "--user", "amy", "--wait", "0.3", cwd=tmp_path, stdin=stdin,
              WS_JWT_SECRET=SECRET)  # fmt: skip
    assert r.returncode == 0, r.stderr
    frames = [orjson.loads(line) for line in r.stdout.splitlines()]
    types = [f["type"] for f in frames]
    assert types[:3] == ["welcome", "authenticated", "pong"]
    assert frames[1]["payload"]["userId"] == "amy" and frames[2]["id"] == "p1"
    assert types[3:] == ["subscribed", "message", "published", "pong"]
    assert frames[4]["payload"]["data"] == {"n": 1}


def test_client_user_token_comes_from_a_dotenv_file(served: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"WS_JWT_SECRET={SECRET}\n")
    r = wshub("client", served.url, "--user", "dora", "--wait", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout.splitlines()[1])["payload"]["userId"] == "dora"


def test_client_exits_1_when_it_cannot_connect(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    r = wshub("client", url, cwd=tmp_path, stdin='{"type":"ping"}\n')
    assert r.returncode == 1 and "cannot connect" in r.stderr
    assert r.stdout == ""


def test_client_user_without_a_secret_exits_2(tmp_path: Path) -> None:
    r = wshub("client", "ws://127.0.0.1:1/ws", "--user", "amy", cwd=tmp_path)
    assert r.returncode == 2 and "WS_JWT_SECRET" in r.stderr
