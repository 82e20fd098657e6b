"""``pip install wshub`` is what mounting the hub needs and nothing else; every optional library
is behind an extra whose absence is a one-line message naming it.

The bare-install tests build a fresh venv (no --system-site-packages, so nothing of the dev venv
is visible), install wshub from a copy of this tree with its dependencies pinned to
requirements.lock, and drive the hub there through the raw ASGI interface. About 15-25 s with
pip's cache warm, most of it pip; the venv is shared by the module's tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from .conftest import SECRET

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"

#: Libraries only the extras bring.
OPTIONAL = (
    "fastapi",
    "uvicorn",
    "redis",
    "rich",
    "httpx",
    "prometheus_client",
    "uvloop",
    "httptools",
    "asyncpg",
)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> set[str]:
    names = set()
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            names.add(_normalize(re.split(r"[=<>; \[]", line, maxsplit=1)[0]))
    return names


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WS_", "PYTHON", "VIRTUAL"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pip install wshub`` (no extra), pinned by requirements.lock."""
    base = tmp_path_factory.mktemp("bare")
    source = base / "src-copy"  # pip builds in place: keep build/ and egg-info out of the tree
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    venv = base / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    pip += ["--disable-pip-version-check", "-c", str(LOCK), str(source)]
    r = subprocess.run(pip, capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"bare venv installed in {time.monotonic() - started:.1f} s")
    return venv


def _run(venv: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=_env(**env),
    )


def test_the_bare_install_has_no_optional_library(bare_venv: Path, tmp_path: Path) -> None:
    r = _run(bare_venv, "-m", "pip", "list", "--format=freeze", cwd=tmp_path)
    installed = {_normalize(line.split("==")[0]) for line in r.stdout.splitlines()}
    assert "wshub" in installed
    assert not installed & {_normalize(name) for name in OPTIONAL}, installed
    assert installed - {"wshub", "pip", "setuptools"} <= _locked()


MOUNTED = textwrap.dedent(
    """
    import asyncio, json, sys

    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    import wshub.asgi
    from wshub import WebSocketApp, create_hub

    hub = create_hub(store_url="memory://")
    app = Starlette(routes=[WebSocketRoute("/ws", WebSocketApp(hub))], lifespan=hub.lifespan)


    async def lifespan(event):
        inbox, outbox = asyncio.Queue(), asyncio.Queue()
        await inbox.put({"type": f"lifespan.{event}"})
        task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                       inbox.get, outbox.put))
        reply = await asyncio.wait_for(outbox.get(), 10)
        assert reply["type"] == f"lifespan.{event}.complete", reply
        return task, inbox


    async def session():
        inbox, outbox = asyncio.Queue(), asyncio.Queue()
        scope = {
            "type": "websocket", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "scheme": "ws", "path": "/ws", "raw_path": b"/ws", "root_path": "",
            "query_string": b"", "headers": [(b"host", b"test")], "subprotocols": [],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "state": {},
        }
        await inbox.put({"type": "websocket.connect"})
        task = asyncio.create_task(app(scope, inbox.get, outbox.put))
        get = lambda: asyncio.wait_for(outbox.get(), 10)
        assert (await get())["type"] == "websocket.accept"
        welcome = json.loads((await get())["text"])
        assert welcome["type"] == "welcome", welcome
        await inbox.put({"type": "websocket.receive", "text": '{"type":"ping","id":"p1"}'})
        pong = json.loads((await get())["text"])
        assert pong["type"] == "pong" and pong["id"] == "p1", pong
        await inbox.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(task, 10)


    async def main():
        task, inbox = await lifespan("startup")
        await session()
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 10)


    asyncio.run(main())
    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1].split(",")))
    assert not loaded, f"the bare import path imported {loaded}"
    print("ok")
    """
)


def test_an_app_mounting_the_hub_runs_on_the_bare_install(bare_venv: Path, tmp_path: Path) -> None:
    r = _run(bare_venv, "-c", MOUNTED, ",".join(OPTIONAL), cwd=tmp_path, WS_JWT_SECRET=SECRET)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["serve"], {}, "wshub serve needs the server extra: pip install 'wshub[server]'"),
        (["smoke", "ws://127.0.0.1:1/ws"], {}, "wshub smoke needs the cli extra"),
        (["client", "ws://127.0.0.1:1/ws"], {}, "wshub client needs the cli extra"),
        (
            ["asyncapi", "--app", "redis_app:hub"],
            {"WS_STORE_URL": "redis://127.0.0.1:1/0"},
            "WS_STORE_URL: redis:// needs the redis extra: pip install 'wshub[redis]'",
        ),
        (
            ["asyncapi", "--app", "redis_app:hub"],
            {"WS_BROKER_URL": "rediss://127.0.0.1:1/0"},
            "WS_BROKER_URL: rediss:// needs the redis extra: pip install 'wshub[redis]'",
        ),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(
    bare_venv: Path, tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    (tmp_path / "redis_app.py").write_text("from wshub import create_hub\n\nhub = create_hub()\n")
    r = _run(bare_venv, "-m", "wshub", *args, cwd=tmp_path, WS_JWT_SECRET=SECRET, **env)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wshub: {message}"), r.stderr


def test_create_hub_raises_config_error_naming_the_extra(bare_venv: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        from wshub import create_hub
        from wshub.errors import ConfigError
        try:
            create_hub()
        except ConfigError as exc:
            print(exc)
        """
    )
    r = _run(bare_venv, "-c", script, cwd=tmp_path, WS_STORE_URL="redis://127.0.0.1:1/0")
    assert r.stdout.strip() == (
        "WS_STORE_URL: redis:// needs the redis extra: pip install 'wshub[redis]'"
    ), r.stdout + r.stderr


# -- the CLI with only the runtime lock's packages -------------------------------------------

PROBE = textwrap.dedent(
    """
    import importlib.metadata, json, sys
    before = set(sys.modules)  # the interpreter's own start-up (site hooks), not the CLI's
    from wshub.cli import main
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:  # --help
        code = exc.code
    top = {m.split(".")[0] for m in set(sys.modules) - before}
    top -= set(sys.stdlib_module_names) | {"wshub"}
    owners = importlib.metadata.packages_distributions()
    dists = sorted({d for m in top for d in owners.get(m, [])})
    print(json.dumps({"code": code, "dists": dists}), file=sys.stderr)
    """
)


#: Imported by a locked package only when installed (``try: import ... except ImportError``):
#: websockets' SOCKS proxy support.
TRIED = {"python-socks"}


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["serve", "--help"],
        ["token", "x"],
        ["asyncapi"],
        ["client", "--help"],
        ["smoke", "--help"],
    ],
)
def test_every_subcommand_starts_with_the_runtime_lock_only(
    tmp_path: Path, args: list[str]
) -> None:
    """The dev venv has the dev extras too: what each subcommand imports must come from the
    packages requirements.lock pins (the runtime install of `make run`)."""
    env = _env(WS_JWT_SECRET=SECRET, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    report = json.loads(r.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), r.stdout + r.stderr
    if args == ["token", "x"]:
        assert r.stdout.count(".") == 2  # a JWT
    dists = {_normalize(d) for d in report["dists"]}
    assert dists, "no third-party package imported at all: the probe is broken"
    assert dists - TRIED <= _locked() | {"wshub"}, dists - _locked()


def test_the_lock_pins_the_all_extra_and_no_dev_tool() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert extras["all"] == ["wshub[server,redis,postgres,cli]"]

    def names(requirements: list[str]) -> set[str]:
        return {_normalize(re.split(r"[=<>!~; \[]", r, maxsplit=1)[0]) for r in requirements}

    runtime = names(project["dependencies"])
    assert runtime == {
        "starlette",
        "pydantic",
        "pydantic-settings",
        "pyjwt",
        "orjson",
        "websockets",
    }
    wanted = runtime | names(
        [r for extra in ("server", "redis", "postgres", "cli") for r in extras[extra]]
    )
    assert wanted <= _locked(), wanted - _locked()
    assert not (names(extras["dev"]) - wanted) & _locked()
    assert re.search(r"uvicorn\[standard\]>=[\d.]+,<[\d.]+", " ".join(extras["server"]))
