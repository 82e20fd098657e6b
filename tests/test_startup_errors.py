"""Start-up errors through the real ``wshub serve`` process: one line on stderr naming the setting
(never a value of it, never a traceback), exit status 2 for configuration and 1 for what could
not be reached; "listening" only once the socket is bound. And an app that mounts the hub is not
stopped by the settings only ``wshub serve`` reads."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from wshub import create_hub
from wshub.errors import ConfigError
from wshub.testing import free_port

from .conftest import SECRET, make_settings

#: A secret a message must never contain (pydantic's own messages repeat every input).
LEAKY = "s3cr3t-" + "x" * 40


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
    env.update(WS_JWT_SECRET=LEAKY, WS_API_KEY="key-" + LEAKY, WS_PORT=str(free_port()))
    env.update(WS_STORE_URL="memory://")
    env.update({f"WS_{k.upper()}": v for k, v in settings.items()})
    return env


def _serve(tmp_path: Path, **settings: str) -> tuple[int, list[str]]:
    r = subprocess.run(
        [sys.executable, "-m", "wshub", "serve"],
        env=_env(**settings),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.returncode, r.stderr.strip().splitlines()


def _error_line(lines: list[str]) -> str:
    """The one line that is not a log record (log records start with the date)."""
    errors = [line for line in lines if line.startswith("wshub: ")]
    assert len(errors) == 1, lines
    return errors[0]


def _assert_clean(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert "Traceback" not in text and "input_value" not in text, text
    assert LEAKY not in text, text
    assert "wshub listening" not in text and "Uvicorn running" not in text, text


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"store_url": "foo://"}, "WS_STORE_URL (store_url): unsupported scheme foo://"),
        ({"store_url": "memory"}, "WS_STORE_URL (store_url): not a URL: did you mean memory://"),
        ({"broker_url": "redis"}, "WS_BROKER_URL (broker_url): not a URL: did you mean redis://"),
        ({"channel_retention": "notjson"}, "WS_CHANNEL_RETENTION (channel_retention): not valid"),
        ({"tls_cert": "/nope.pem"}, "WS_TLS_CERT and WS_TLS_KEY must be set together"),
        ({"tls_cert": "/nope.pem", "tls_key": "/nope.key"}, "WS_TLS_CERT: cannot read the file"),
        ({"port": "abc"}, "WS_PORT (port): Input should be a valid integer"),
        ({"jwt_algorithms": "none"}, "WS_JWT_ALGORITHMS (jwt_algorithms): unsupported"),
    ],
)
def test_a_configuration_error_is_one_line_and_exit_2(
    tmp_path: Path, settings: dict[str, str], expected: str
) -> None:
    code, lines = _serve(tmp_path, **settings)
    assert code == 2, lines
    assert lines == [_error_line(lines)], lines  # nothing else: not even a log record
    assert lines[0].startswith("wshub: invalid configuration: ") and expected in lines[0], lines
    _assert_clean(lines)


def test_a_bad_certificate_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    code, lines = _serve(tmp_path, tls_cert="cert.pem", tls_key="cert.pem")
    assert code == 2, lines
    assert "WS_TLS_CERT/WS_TLS_KEY: not a PEM certificate" in _error_line(lines)
    _assert_clean(lines)


@pytest.mark.parametrize(
    ("setting", "url"),
    [
        ("WS_STORE_URL", "redis://:{secret}@127.0.0.1:{port}/0"),
        ("WS_BROKER_URL", "redis://:{secret}@127.0.0.1:{port}/0"),
        ("WS_STORE_URL", "sqlite:////proc/nope/x.db"),
    ],
)
def test_an_unavailable_backend_is_one_line_naming_the_setting_and_exit_1(
    tmp_path: Path, setting: str, url: str
) -> None:
    closed = free_port()  # nothing listens there
    url = url.format(secret=LEAKY, port=closed)
    code, lines = _serve(tmp_path, **{setting.removeprefix("WS_").lower(): url})
    assert code == 1, lines
    line = _error_line(lines)
    assert line.startswith(f"wshub: cannot start: {setting}: "), lines
    _assert_clean(lines)


def test_a_taken_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = _serve(tmp_path, port=str(port))
    assert code == 1, lines
    assert _error_line(lines) == (
        f"wshub: cannot start: WS_PORT: 127.0.0.1:{port} is already in use by another process"
    )
    _assert_clean(lines)


async def _log_until_listening(tmp_path: Path, env: dict[str, str]) -> list[str]:
    """Start ``wshub serve``, collect its log up to the "wshub listening" line, stop it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wshub", "serve", env=env, cwd=tmp_path, stderr=PIPE
    )
    lines: list[str] = []

    async def read() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            lines.append(raw.decode().rstrip())
            if "wshub listening" in lines[-1]:
                return
        raise AssertionError("server exited:\n" + "\n".join(lines))

    try:
        await asyncio.wait_for(read(), 20)
    finally:
        proc.kill()
        await proc.wait()
    return lines


async def test_warnings_at_start_name_a_weak_secret_and_an_origin_without_scheme(
    tmp_path: Path,
) -> None:
    env = _env(jwt_secret="w3ak-k3y", allowed_origins="example.com,https://ok.example")
    lines = await _log_until_listening(tmp_path, env)
    log = "\n".join(lines)
    assert log.count("WS_JWT_SECRET is shorter than 32 bytes") == 1, log
    assert log.count("WS_ALLOWED_ORIGINS: 'example.com' is not an origin") == 1, log
    assert "ok.example" not in log and "w3ak-k3y" not in log, log
    # "listening" is logged once, after uvicorn bound the socket
    assert log.count("wshub listening on ws://127.0.0.1:") == 1, log
    assert any("Uvicorn running on" in line for line in lines[:-1]), log


async def test_no_key_at_all_is_a_warning(tmp_path: Path) -> None:
    env = _env()
    del env["WS_JWT_SECRET"]
    log = "\n".join(await _log_until_listening(tmp_path, env))
    assert log.count("no WS_JWT_SECRET, WS_JWT_PUBLIC_KEY_FILE or WS_JWT_JWKS_URL") == 1, log
    assert LEAKY not in log, log


# -- an app that mounts the hub ----------------------------------------------------------------

EMBEDDED = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from wshub import WebSocketApp, create_hub

    hub = create_hub(store_url="memory://")
    app = Starlette(lifespan=hub.lifespan)
    app.router.add_websocket_route("/ws", WebSocketApp(hub))
    print("mounted", hub.settings.port)
    """
)


def _embedded(tmp_path: Path, script: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = _env(**settings)
    return subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"port": "abc"},
        {"transport": "fast"},
        {"tls_cert": "/nope.pem"},
        {"log_level": "verbose"},
    ],
)
def test_an_embedded_app_ignores_settings_only_serve_reads(
    tmp_path: Path, settings: dict[str, str]
) -> None:
    r = _embedded(tmp_path, EMBEDDED, **settings)
    assert r.returncode == 0 and r.stdout.strip().startswith("mounted"), r.stdout + r.stderr


def test_an_embedded_app_gets_a_config_error_without_values(tmp_path: Path) -> None:
    script = "from wshub import create_hub\ncreate_hub()\n"
    r = _embedded(tmp_path, script, store_url=f"redis//:{LEAKY}@x", history_size="-1")
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("wshub.errors.ConfigError: "), last
    assert "WS_STORE_URL (store_url): not a URL" in last
    assert "WS_HISTORY_SIZE (history_size): Input should be greater than or equal to 0" in last
    assert LEAKY not in r.stderr and "input_value" not in r.stderr, r.stderr


# -- create_hub(...) overrides ---------------------------------------------------------------


def test_create_hub_takes_settings_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_JWT_SECRET", SECRET)
    hub = create_hub(store_url="memory://", history_size=10)
    assert hub.settings.store_url == "memory://" and hub.settings.history_size == 10
    base = make_settings(history_size=3)
    derived = create_hub(base, inbox_size=7)
    assert derived.settings.history_size == 3 and derived.settings.inbox_size == 7
    assert base.inbox_size != 7  # the given settings are not changed
    with pytest.raises(ConfigError, match=r"^WS_HISTORY_SIZE \(history_size\): "):
        create_hub(store_url="memory://", history_size=-1)
    with pytest.raises(TypeError, match="store_uri"):
        create_hub(store_uri="memory://")


def test_create_hub_keeps_taking_backend_objects() -> None:
    from wshub.brokers.memory import MemoryBroker
    from wshub.stores.memory import MemoryStore

    store, broker = MemoryStore(), MemoryBroker()
    # a Redis URL in the settings is not even looked at when the objects are given
    settings = make_settings(store_url="redis://127.0.0.1:1/0")
    hub = create_hub(settings, store=store, broker=broker, history_size=5)
    assert hub.store is store and hub.broker is broker and hub.settings.history_size == 5
