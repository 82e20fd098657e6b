"""The ``wshub`` pytest plugin, as users get it: test files run by pytest in a subprocess with
the plugin loaded, on real servers, real ``wshub serve`` nodes and a real redis-server."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from .redis_server import require_redis_server

ROOT = Path(__file__).resolve().parent.parent

INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
timeout = 60
filterwarnings = error
"""


def entry_point_installed() -> bool:
    eps = importlib.metadata.entry_points(group="pytest11")
    return any(ep.value == "wshub.pytest_plugin" for ep in eps)


def run_pytest(
    directory: Path,
    *args: str,
    env: dict[str, str] | None = None,
    autoload: bool = False,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m pytest`` in ``directory`` (its own rootdir and ini). ``autoload``: every
    installed plugin, wshub's through its entry point when installed (else ``-p``); otherwise
    (faster) only pytest-asyncio, pytest-timeout and ``-p wshub.pytest_plugin``."""
    if not (directory / "pytest.ini").exists():
        (directory / "pytest.ini").write_text(INI)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
        + plugin_args(autoload)
        + list(args),
        cwd=directory,
        env=plugin_env(autoload, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def plugin_args(autoload: bool) -> list[str]:
    if autoload:
        return [] if entry_point_installed() else ["-p", "wshub.pytest_plugin"]
    return ["-p", "pytest_asyncio.plugin", "-p", "pytest_timeout", "-p", "wshub.pytest_plugin"]


def plugin_env(autoload: bool, env: dict[str, str] | None = None) -> dict[str, str]:
    run_env = dict(env if env is not None else os.environ)
    if not autoload:
        run_env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return run_env


def outcome(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def test_the_entry_point_names_the_plugin() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"wshub": "wshub.pytest_plugin"}


def test_an_unrelated_test_run_imports_nothing_heavy(tmp_path: Path) -> None:
    """Loading the plugin costs an unrelated test run no server, driver or client library."""
    (tmp_path / "test_plain.py").write_text(
        textwrap.dedent(
            """
            import sys

            HEAVY = ["uvicorn", "redis", "httpx", "fastapi", "websockets", "wshub.testing",
                     "wshub.server", "wshub.stores.redis", "wshub.client"]

            def test_plain(request):
                assert request.config.pluginmanager.has_plugin("wshub.pytest_plugin")
                assert [m for m in HEAVY if m in sys.modules] == []
            """
        )
    )
    result = run_pytest(tmp_path)
    assert result.returncode == 0, outcome(result)
    assert "1 passed" in result.stdout


BLOCKER = """
import sys


class Missing:
    \"\"\"As if uvicorn, redis-py and httpx were not installed (``pip install wshub``).\"\"\"

    BLOCKED = ("uvicorn", "redis", "httpx")

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Missing())
"""

BARE_TESTS = """
def test_unrelated():
    pass


async def test_server(wshub_server):
    pass


async def test_cluster(wshub_cluster):
    pass


async def test_client(wshub_client):
    pass


def test_node_api_needs_httpx():
    from wshub.pytest_plugin import ClusterNode

    node = ClusterNode(0, {"WS_PORT": "1", "WS_JWT_SECRET": "s"}, None)
    node.api
"""


def test_without_the_extras_the_fixtures_name_the_one_to_install(tmp_path: Path) -> None:
    (tmp_path / "blocker.py").write_text(BLOCKER)
    (tmp_path / "test_bare.py").write_text(BARE_TESTS)
    result = run_pytest(tmp_path, "-p", "blocker")
    assert "1 failed, 1 passed, 3 errors" in result.stdout, outcome(result)
    for extra, fixture in [
        ("server", "wshub_server"),
        ("server", "wshub_cluster"),
        ("server", "wshub_client"),
        ("cli", "wshub_cluster (node.api)"),
    ]:
        line = f"the {fixture} fixture needs the {extra} extra: pip install 'wshub[{extra}]'"
        assert line in result.stdout, outcome(result)


SERVER_TESTS = """
import pytest


async def test_server_and_clients(wshub_server, wshub_client):
    alice = await wshub_client(wshub_server, user="alice")
    bob = await wshub_client(wshub_server, user="bob")
    reply = await alice.request("chat", {"recipientId": "bob", "message": "hi"})
    assert reply["payload"]["delivered"] is True
    assert (await bob.expect("chat"))["payload"]["message"] == "hi"
    assert await wshub_server.hub.is_user_connected("alice")


async def test_the_factory_takes_settings(wshub_server_factory, wshub_client):
    server = await wshub_server_factory(path="/rt", max_message_size=1024)
    assert server.url.endswith("/rt")
    alice = await wshub_client(server, user="alice")
    await alice.send_raw("x" * 4096)
    code, _ = await alice.closed()
    assert code == 1009


async def test_a_failing_assertion_fails(wshub_server, wshub_client):
    alice = await wshub_client(wshub_server, user="alice")
    await alice.expect("chat", timeout=0.2)  # nothing comes: TimeoutError
"""


def test_server_fixtures_in_a_subprocess(tmp_path: Path) -> None:
    (tmp_path / "test_server.py").write_text(SERVER_TESTS)
    result = run_pytest(tmp_path, autoload=True)  # as users run it: the entry point
    assert result.returncode == 1, outcome(result)  # the last test fails, as it must
    assert "1 failed, 2 passed" in result.stdout, outcome(result)
    assert "test_a_failing_assertion_fails" in result.stdout


CLUSTER_TESTS = """
import asyncio
import contextlib
import signal

import pytest


async def eventually(check, timeout=15.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "not within the timeout"
        await asyncio.sleep(0.05)


@pytest.mark.wshub_cluster(nodes=2, outbox_max_bytes=65536, outbox_max_messages=64)
async def test_faults(wshub_cluster):
    cluster = wshub_cluster
    a, b = cluster.nodes
    assert cluster.redis.url.startswith("redis://127.0.0.1:")
    async with contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(cluster.connect(a, user="alice"))
        bob = await stack.enter_async_context(cluster.connect(b, user="bob"))
        reply = await alice.request("chat", {"recipientId": "bob", "message": "across"})
        assert reply["payload"]["delivered"] is True
        assert (await bob.expect("chat"))["payload"]["message"] == "across"

        # stall_reader: bob stops reading; his node drops him once his outbox is full (1013)
        await bob.request("subscribe", {"channel": "firehose"})
        await cluster.stall_reader(bob)

        async def bob_overflowed():
            for _ in range(5):
                await a.api.post("/api/publish", json={"channel": "firehose", "data": "x" * 30000})
            return (await b.api.get("/api/stats")).json()["counters"]["overflows"] == 1

        await eventually(bob_overflowed)
        await cluster.resume_reader(bob)
        code, _ = await bob.closed(timeout=10)
        assert code == 1013, code

        # kill -9 a node: its client is cut off, the other node serves; restart on the same port
        pid = a.pid
        await cluster.kill(a)
        assert not a.running
        with pytest.raises(ProcessLookupError):
            import os
            os.kill(pid, 0)
        await alice.closed(timeout=10)
        await cluster.restart(a)
        assert a.running and a.pid != pid
        async with cluster.connect(a, user="carol") as carol:
            assert (await carol.request("ping"))["type"] == "pong"

    # redis pause: what needs Redis fails, bounded; resume: it works again
    r = await b.api.post("/api/publish", json={"channel": "news", "data": 1})
    assert r.json()["offset"] == 1
    await cluster.redis.pause()
    r = await b.api.post("/api/publish", json={"channel": "news", "data": "lost"})
    assert r.status_code == 503, r.text
    await cluster.redis.resume()

    async def publishes():
        r = await b.api.post("/api/publish", json={"channel": "news", "data": 2})
        return r.status_code == 200

    await eventually(publishes)

    # redis kill -9 and restart: what was acknowledged is still there
    await cluster.redis.kill()
    await cluster.redis.restart()

    async def history():
        r = await a.api.get("/api/channels/news/history")
        if r.status_code != 200:
            return False
        # "lost" may be there: a paused Redis runs the commands it was sent once resumed
        data = [m["data"] for m in r.json()["publications"]]
        return data[0] == 1 and data[-1] == 2

    await eventually(history)


async def test_a_failing_test_leaves_no_process_behind(wshub_cluster):
    pids = [n.pid for n in wshub_cluster.nodes] + [wshub_cluster.redis.pid]
    with open("pids.txt", "w") as f:
        f.write(" ".join(map(str, pids)))
    await wshub_cluster.redis.pause()  # even a stopped redis-server is cleaned up
    raise AssertionError("fails on purpose")


@pytest.mark.wshub_cluster(nodes=1, store_url="bogus://nowhere")
async def test_a_node_that_cannot_start_is_an_error(wshub_cluster):
    pass
"""


def test_cluster_fixtures_and_faults_in_a_subprocess(tmp_path: Path) -> None:
    require_redis_server()
    (tmp_path / "test_cluster.py").write_text(CLUSTER_TESTS)
    result = run_pytest(tmp_path)
    assert "1 failed, 1 passed, 1 error" in result.stdout, outcome(result)
    assert "fails on purpose" in result.stdout
    assert "node 0 exited during start-up" in result.stdout, outcome(result)
    pids = [int(p) for p in (tmp_path / "pids.txt").read_text().split()]
    assert len(pids) == 3
    for pid in pids:  # killed and reaped by the fixture's teardown
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("required", [False, True])
def test_a_missing_redis_server_skips_or_fails_in_ci(tmp_path: Path, required: bool) -> None:
    (tmp_path / "test_needs_redis.py").write_text(
        "async def test_cluster(wshub_cluster):\n    pass\n"
    )
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "WSHUB_REQUIRE_REDIS")}
    env.pop("WSHUB_REDIS_SERVER", None)
    env["PATH"] = str(empty)
    if required:
        env["CI"] = "true"
    result = run_pytest(tmp_path, env=env)
    assert "redis-server is not on PATH" in result.stdout, outcome(result)
    if required:
        assert result.returncode == 1 and "1 error" in result.stdout, outcome(result)
    else:
        assert result.returncode == 0 and "1 skipped" in result.stdout, outcome(result)


def test_the_fixtures_work_in_pytest_asyncio_strict_mode(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(
        INI.replace("asyncio_mode = auto", "asyncio_mode = strict")
    )
    (tmp_path / "test_strict.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.asyncio
            async def test_ping(wshub_server, wshub_client):
                alice = await wshub_client(wshub_server, user="alice")
                assert (await alice.request("ping"))["type"] == "pong"
            """
        )
    )
    result = run_pytest(tmp_path)
    assert result.returncode == 0 and "1 passed" in result.stdout, outcome(result)
