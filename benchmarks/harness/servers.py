"""The servers under test and how to start, watch and stop them.

Each server runs pinned to one core (taskset), in a scratch directory of its own, made empty for
every run (so no `.env` of a developer leaks into wshub's settings, and the default store's
`./wshub.db` starts empty each time), with stdout/stderr in a log file, and is stopped (SIGTERM,
then SIGKILL) after every scenario: each measurement starts from a fresh process.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

__all__ = [
    "Server",
    "ServerProcess",
    "Session",
    "build_servers",
    "free_port",
    "pinned",
    "wait_port",
]

HERE = Path(__file__).resolve().parent.parent
PEERS = HERE / "peers"


@dataclass
class Session:
    """What every server of one benchmark session shares."""

    server_core: int
    scratch: Path  # temp dir for this session (sqlite files, cwd of servers)
    logs: Path
    venv_bin: Path
    jwt_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    token: str | None = None  # the publisher's JWT (wshub only)
    chat_tokens: Path | None = None  # chat: one JWT per line, `sub` u<i> on line i (wshub only)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(core: int, argv: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(core), *argv] if taskset else argv


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on port {port} after {timeout:.0f} s")


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    argv: Callable[[Session, int, Path], list[str]]  # (session, port, run dir) -> argv
    env: Callable[[Session, int, Path], dict[str, str]] = lambda s, p, d: {}
    sio: bool = False  # load with Socket.IO framing
    path: str | None = None  # WebSocket path (None: loadgen default)
    wshub: bool = False  # publishers send the JWT, chat users theirs
    store: str | None = None  # wshub: None (the default store), memory, sqlite-normal, redis
    only: tuple[str, ...] = ()  # runs only these scenarios (empty: every one)
    missing: Callable[[Session], str | None] = lambda s: None  # why it cannot run, or None


class ServerProcess:
    """One started server (plus its throwaway redis, if any); `stop()` ends both."""

    def __init__(self, server: Server, session: Session, run_name: str) -> None:
        self.server = server
        self.port = free_port()
        self.run_dir = session.scratch / run_name
        # fresh for every run, a measurement taken again too: the default store's ./wshub.db
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        self.log_path = session.logs / f"{run_name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.redis: subprocess.Popen[bytes] | None = None
        self._redis_ps: psutil.Process | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self._start(session)
        except Exception:
            self.stop()  # whatever did start (redis, the server) must not outlive the run
            raise
        assert self.proc is not None
        self.ps: psutil.Process = psutil.Process(self.proc.pid)

    def _start(self, session: Session) -> None:
        env = dict(os.environ)
        env.update(self.server.env(session, self.port, self.run_dir))
        if self.server.store == "redis":
            redis_port = free_port()
            argv = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
            argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
            self.redis = self._spawn(pinned(session.server_core, argv), None)
            wait_port(redis_port, self.redis, 10)
            # the store and the broker (fan-out between nodes, presence) both in Redis
            env["WS_STORE_URL"] = env["WS_BROKER_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        argv = self.server.argv(session, self.port, self.run_dir)
        self.proc = self._spawn(pinned(session.server_core, argv), env)
        wait_port(self.port, self.proc, 30)

    def _spawn(self, argv: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        # a session of its own: stop() signals the whole process group
        return subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.run_dir,
            env=env,
            start_new_session=True,
        )

    def _procs(self) -> list[psutil.Process]:
        """The server, its children and its throwaway redis-server (on the server's core: the
        server side's CPU, not "other processes")."""
        procs: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            procs += [self.ps, *self.ps.children(recursive=True)]
        if self.redis is not None:
            with contextlib.suppress(psutil.Error):
                if self._redis_ps is None:
                    self._redis_ps = psutil.Process(self.redis.pid)
                procs.append(self._redis_ps)
        return procs

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss(self) -> int:
        total = 0
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    @staticmethod
    def _end(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def stop(self) -> None:
        self._end(self.proc)
        self._end(self.redis)
        self._log.close()
        if self.log_path.stat().st_size == 0:
            self.log_path.unlink()  # keep only logs that say something


def _py(script: str) -> Callable[[Session, int, Path], list[str]]:
    return lambda s, port, d: [sys.executable, str(PEERS / script), str(port)]


def _importable(*modules: str) -> Callable[[Session], str | None]:
    def check(_s: Session) -> str | None:
        import importlib.util

        gone = [m for m in modules if importlib.util.find_spec(m) is None]
        return (
            f"python package(s) {', '.join(gone)} missing: run `make -C benchmarks deps`"
            if gone
            else None
        )

    return check


def _node_peer_missing(peer: str, package: str) -> Callable[[Session], str | None]:
    """Why the Node peer in peers/<peer> cannot run (no node, `package` not installed), or None."""

    def check(_s: Session) -> str | None:
        if shutil.which("node") is None:
            return "node not found"
        if not (PEERS / peer / "node_modules" / package).is_dir():
            return f"peers/{peer}/node_modules missing: run `make -C benchmarks deps`"
        return None

    return check


def wshub_command(session: Session) -> list[str]:
    """`../.venv/bin/wshub serve`, or $BENCH_WSHUB_CMD (split on spaces)."""
    custom = os.environ.get("BENCH_WSHUB_CMD")
    if custom:
        return custom.split()
    return [str(session.venv_bin / "wshub"), "serve"]


def _wshub_missing(store: str | None) -> Callable[[Session], str | None]:
    def check(s: Session) -> str | None:
        exe = wshub_command(s)[0]
        if shutil.which(exe) is None and not Path(exe).is_file():
            return f"{exe} not found (the wshub server is not installed in this venv yet)"
        if store == "redis" and shutil.which("redis-server") is None:
            return "redis-server not found (apt-get install redis-server)"
        return None

    return check


#: The WS_* settings of each wshub row besides the runner's own: none for the default store
#: (`sqlite:///./wshub.db`, synchronous=full, history on, in the run's scratch directory), as
#: `make run` starts it. The Redis URLs are set by ServerProcess (a throwaway redis-server).
STORE_ENV: dict[str | None, dict[str, str]] = {
    None: {},
    "memory": {"WS_STORE_URL": "memory://"},
    "sqlite-normal": {"WS_STORE_URL": "sqlite:///./wshub.db?synchronous=normal"},
    "redis": {},
}


def _wshub_env(
    store: str | None,
) -> Callable[[Session, int, Path], dict[str, str]]:
    def env(s: Session, port: int, run_dir: Path) -> dict[str, str]:
        e = {
            "WS_TRANSPORT": "native",  # the default, said out loud
            "WS_HOST": "127.0.0.1",
            "WS_PORT": str(port),
            "WS_JWT_SECRET": s.jwt_secret,
            "WS_API_KEY": s.jwt_secret,  # unused here; set so the server does not warn about it
            "WS_LOG_LEVEL": "warning",
            # the load generator's necessities: one connection sends thousands of messages per
            # second (no per-connection rate limit); a quick shutdown between runs
            "WS_RATE_LIMIT": "1000000",
            "WS_RATE_BURST": "1000000",
            "WS_STORE_RATE": "0",
            "WS_SHUTDOWN_TIMEOUT": "1000",
        }
        e.update(STORE_ENV[store])
        return e

    return env


ROOT = HERE.parent


def _mounted(ws: str) -> Callable[[Session, int, Path], list[str]]:
    """examples/starlette_app.py (the hub mounted in an existing Starlette app) under uvicorn,
    configured as the naive Starlette peer is, with ``--ws`` set to ``ws``."""

    def argv(s: Session, port: int, d: Path) -> list[str]:
        return [
            str(s.venv_bin / "python"),
            "-m",
            "uvicorn",
            "examples.starlette_app:app",
            "--app-dir",
            str(ROOT),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--ws",
            ws,
            "--log-level",
            "warning",
            "--no-access-log",
            "--backlog",
            "4096",
        ]

    return argv


#: What the mounted variants are measured on: the scenarios their targets name.
MOUNTED_SCENARIOS = ("fanout-100", "fanout-1000", "fanout-5000", "pingpong-100")

#: What the wshub rows with another store than the default are measured on.
STORE_ROW_SCENARIOS = ("fanout-1000", "publish-10", "pingpong-100", "chat-1000", "rooms")

#: What the peers added from PERF-NOTES' list are measured on: the columns of its table (fan-out
#: at 100 and 1,000, ping-pong, idle memory). 4 peers x 4 scenarios x 3 reps add ~5 min to a run.
EXTRA_PEER_SCENARIOS = ("fanout-100", "fanout-1000", "pingpong-100", "idle")


def _bun_missing(_s: Session) -> str | None:
    if not BUN.is_file():
        return "peers/bun/node_modules/.bin/bun missing: run `make -C benchmarks deps` (needs npm)"
    try:
        subprocess.run([str(BUN), "--version"], capture_output=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{BUN} does not run here: {exc}"
    return None


BUN = PEERS / "bun" / "node_modules" / ".bin" / "bun"


def build_servers() -> list[Server]:
    def wshub(key: str, label: str, store: str | None, only: tuple[str, ...]) -> Server:
        return Server(
            key=key,
            label=label,
            argv=lambda s, port, d: wshub_command(s),
            env=_wshub_env(store),
            wshub=True,
            store=store,
            only=only,
            missing=_wshub_missing(store),
        )

    return [
        Server(
            "picows",
            "picows (uvloop), send per subscriber",
            _py("picows_server.py"),
            missing=_importable("picows", "uvloop", "orjson"),
        ),
        Server(
            "node-ws",
            "node-ws",
            lambda s, port, d: ["node", str(PEERS / "node_ws" / "server.js"), str(port)],
            missing=_node_peer_missing("node_ws", "ws"),
        ),
        Server(
            "starlette",
            "Starlette naive, uvicorn (ws=websockets-sansio)",
            _py("starlette_naive.py"),
            missing=_importable("starlette", "uvicorn", "orjson"),
        ),
        Server(
            "socketio",
            "python-socketio, uvicorn (Socket.IO frames)",
            _py("socketio_server.py"),
            sio=True,
            missing=_importable("socketio", "uvicorn"),
        ),
        Server(
            "bun",
            "Bun (uWebSockets), ws.subscribe() + server.publish()",
            lambda s, port, d: [str(BUN), str(PEERS / "bun" / "server.js"), str(port)],
            missing=_bun_missing,
        ),
        # The rest of PERF-NOTES' peers, on fewer scenarios (EXTRA_PEER_SCENARIOS).
        Server(
            "websockets",
            "websockets 17 (uvloop), broadcast()",
            _py("websockets_server.py"),
            only=EXTRA_PEER_SCENARIOS,
            missing=_importable("websockets", "uvloop", "orjson"),
        ),
        Server(
            "asgi-queued",
            "raw ASGI, queued publish, uvicorn (ws=websockets-sansio)",
            _py("asgi_queued.py"),
            only=EXTRA_PEER_SCENARIOS,
            missing=_importable("uvicorn", "orjson"),
        ),
        Server(
            "starlette-granian",
            "Starlette naive, granian (ASGI, 1 worker, uvloop)",
            _py("starlette_granian.py"),
            only=EXTRA_PEER_SCENARIOS,
            missing=_importable("granian", "starlette", "uvloop", "orjson"),
        ),
        Server(
            "node-socketio",
            "Node socket.io 4 (Socket.IO frames)",
            lambda s, port, d: ["node", str(PEERS / "node_socketio" / "server.js"), str(port)],
            sio=True,
            only=EXTRA_PEER_SCENARIOS,
            missing=_node_peer_missing("node_socketio", "socket.io"),
        ),
        wshub("wshub", "wshub serve (default store: SQLite, synchronous=full)", None, ()),
        # The hub mounted in an existing app (examples/starlette_app.py) under uvicorn: through
        # plain ASGI (uvicorn's own websockets-sansio, as the naive peer), and with the opt-in
        # fast path (`--ws wshub.native:HubProtocol`). The app's `create_hub()` reads the same
        # WS_* environment: no store override, so the default store in the run's directory.
        Server(
            key="wshub-asgi",
            label="wshub mounted (Starlette app), plain ASGI (ws=websockets-sansio), default store",
            argv=_mounted("websockets-sansio"),
            env=_wshub_env(None),
            wshub=True,
            only=MOUNTED_SCENARIOS,
            missing=_wshub_missing(None),
        ),
        Server(
            key="wshub-mounted",
            label="wshub mounted (Starlette app), fast path (native:HubProtocol), default store",
            argv=_mounted("wshub.native:HubProtocol"),
            env=_wshub_env(None),
            wshub=True,
            only=MOUNTED_SCENARIOS,
            missing=_wshub_missing(None),
        ),
        wshub("wshub-memory", "wshub serve, memory store", "memory", STORE_ROW_SCENARIOS),
        wshub(
            "wshub-sqlite-normal",
            "wshub serve, SQLite synchronous=normal",
            "sqlite-normal",
            STORE_ROW_SCENARIOS,
        ),
        wshub(
            "wshub-redis",
            "wshub serve, Redis store + broker",
            "redis",
            STORE_ROW_SCENARIOS,
        ),
    ]
