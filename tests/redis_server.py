"""Throwaway ``redis-server`` processes for tests: own port, own directory, never the machine's
shared Redis.

Tests that need Redis are skipped with a clear reason when ``redis-server`` is not on PATH, unless
``WSHUB_REQUIRE_REDIS=1`` or ``CI=true``: then they fail.

::

    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    ...
    server.stop()      # or kill9(); start() again: same port, same directory

    with redis_cluster(tmp_path) as cluster:          # 3 masters, slots spread, cluster_state:ok
        cluster.url                                   # redis+cluster://127.0.0.1:P1,.../0
    with redis_sentinel(tmp_path, replicas=2) as s:   # master + replicas + one Sentinel
        s.url                                         # redis+sentinel://127.0.0.1:S/wshub/0
        s.master.kill9(); s.wait_for_failover()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from wshub.testing import free_port

__all__ = [
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "persistent_redis",
    "redis_cluster",
    "redis_sentinel",
    "redis_server",
    "redis_url",
    "require_redis_server",
]

READY = "Ready to accept connections"


def require_redis_server(program: str = "redis-server") -> str:
    """The path of ``redis-server`` (or ``redis-cli``); skips the test (or fails, with
    WSHUB_REQUIRE_REDIS=1 or CI=true)."""
    path = shutil.which(program)
    if path is None:
        reason = f"{program} is not on PATH (install Redis >= 7 to run the Redis tests)"
        if os.environ.get("WSHUB_REQUIRE_REDIS") == "1" or os.environ.get("CI") == "true":
            pytest.fail(reason + "; WSHUB_REQUIRE_REDIS=1 / CI=true requires them", pytrace=False)
        pytest.skip(reason)
    return path


class RedisServer:
    """One ``redis-server`` on a free loopback port, its files in ``directory``.

    ``appendonly=True`` writes an AOF with ``appendfsync always``: every acknowledged write is on
    disk, so a restart (even after kill -9) keeps it. Otherwise nothing is persisted.
    """

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = False,
        extra: tuple[str, ...] = (),
        config: str | None = None,
    ) -> None:
        self.executable = require_redis_server()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.extra = extra  # more command-line options
        self.config = config  # a config file's text (written before each start): Sentinel
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        """Start (again, on the same port and directory) and wait until it accepts clients."""
        assert self.proc is None, "already running"
        args = [self.executable]
        if self.config is not None:
            path = self.directory / "redis.conf"
            if not path.exists():  # Sentinel rewrites it: keep what it learnt on a restart
                path.write_text(self.config)
            args.append(str(path))
        args += [
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--protected-mode", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        args += self.extra
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("redis-server did not start:\n" + "\n".join(self.log[-20:]))

    def _read_log(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                self.log.append(line.rstrip())
                if READY in line or "+monitor master" in line:  # (Sentinel)
                    ready.set()
        ready.set()  # exited: start() sees it through poll()

    def stop(self) -> None:
        """Shut down (SIGTERM: an AOF is flushed) and wait for the process to go."""
        self._end(signal.SIGTERM)

    def kill9(self) -> None:
        """SIGKILL: only what Redis already fsynced survives."""
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def client(self) -> redis.Redis:
        """A synchronous client, for test set-up and inspection."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def flush(self) -> None:
        with self.client() as c:
            c.flushall()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One throwaway redis-server for the whole session (no persistence)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.flush()
    return redis_server.url


@contextlib.contextmanager
def persistent_redis(directory: Path) -> Iterator[RedisServer]:
    """A redis-server of one test alone, persisting every acknowledged write
    (appendonly, appendfsync always), stopped afterwards."""
    server = RedisServer(directory, appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll another process's state (a cluster agreeing, a failover) until it holds: there is
    no event to wait for."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


class RedisCluster:
    """Three masters on free loopback ports in ``directory``, the slots spread over them; with
    ``replicas=1`` a replica for each (so a master can fail over)."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 0) -> None:
        self.replicas = replicas
        self.nodes = [
            RedisServer(
                directory / f"node{i}",
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",  # the bus, else port + 10000 (which may be taken)
                    str(free_port()),
                ),
            )
            for i in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{hosts}/0"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = require_redis_server("redis-cli")  # it creates the cluster
        created = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
            + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}"
            )
        wait_until(self._ready, 20, "cluster_state:ok on every node")

    def _ready(self) -> bool:
        for node in self.nodes:
            with node.client() as c:
                info = c.execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info:
                    return False
        return True

    def flush(self) -> None:
        for node in self.nodes:
            with node.client() as c:
                if c.info("replication")["role"] == "master":
                    c.flushall()

    def owner_of(self, slot: int) -> tuple[RedisServer, bytes]:
        """The master that owns ``slot`` and its node id, as the first live node sees it."""
        node = next(n for n in self.nodes if n.proc is not None)
        with node.client() as c:
            for start, end, (_, port, node_id, *_), *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == int(port)), node_id
        raise AssertionError(f"slot {slot} is not covered")

    def move_slot(self, slot: int, to: RedisServer) -> None:
        """Migrate ``slot`` with its keys to the master ``to`` (as ``redis-cli --cluster
        reshard`` does)."""
        source, from_id = self.owner_of(slot)
        with source.client() as src, to.client() as dst:
            to_id = dst.execute_command("CLUSTER", "MYID")
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", from_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", to_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys)
        for node in self.nodes:
            with node.client() as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", to_id)

    def wait_until_served(self, slot: int, timeout: float = 20) -> int:
        """Wait until a live master serves ``slot`` (after a failover); returns its port."""
        found: list[int] = []

        def served() -> bool:
            for node in self.nodes:
                if node.proc is None:
                    continue
                with node.client() as c:
                    if "cluster_state:ok" not in c.execute_command("CLUSTER", "INFO").decode():
                        return False
                    for start, end, (_, port, *_), *_ in c.execute_command("CLUSTER", "SLOTS"):
                        if start <= slot <= end:
                            owner = next(n for n in self.nodes if n.port == int(port))
                            if owner.proc is None:
                                return False
                            found[:] = [owner.port]
            return bool(found)

        wait_until(served, timeout, f"a live master serves slot {slot}")
        return found[0]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinel:
    """A master, ``replicas`` replicas and one Sentinel watching them as service ``wshub``
    (down after 1 s, failover timeout 3 s), every process on a free loopback port."""

    SERVICE = "wshub"

    def __init__(self, directory: Path, *, replicas: int = 1) -> None:
        self.master = RedisServer(directory / "master")
        self.replicas = [
            RedisServer(directory / f"replica{i}", extra=("--replicaof", "127.0.0.1", "0"))
            for i in range(replicas)
        ]
        for replica in self.replicas:  # the master's port is known only now
            replica.extra = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinel = RedisServer(
            directory / "sentinel",
            extra=("--sentinel",),
            config=(
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                f"sentinel failover-timeout {self.SERVICE} 3000\n"
                f"sentinel parallel-syncs {self.SERVICE} 5\n"
            ),
        )

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.SERVICE}/0"

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, *self.replicas]

    def start(self) -> None:
        for server in self.servers:
            server.start()
        wait_until(self._replicas_in_sync, 20, "every replica in sync with the master")
        self.sentinel.start()
        wait_until(self._sentinel_sees_all, 20, "the Sentinel sees the master and replicas")

    def master_port(self) -> int:
        with self._sentinel() as s:
            _, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        return int(port)

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def wait_for_failover(self, old_port: int, timeout: float = 15) -> RedisServer:
        """Wait until the Sentinel named another master and that one answers as a master;
        returns it."""

        def promoted() -> bool:
            port = self.master_port()
            if port == old_port:
                return False
            with self.server_on(port).client() as c:
                return bool(c.info("replication")["role"] == "master")

        wait_until(promoted, timeout, "the Sentinel promoted a replica")
        return self.server_on(self.master_port())

    def _sentinel(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.sentinel.port, socket_timeout=5)

    def _replicas_in_sync(self) -> bool:
        with self.master.client() as c:
            info = c.info("replication")
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return len([r for r in online if r.get("state") == "online"]) == len(self.replicas)

    def _sentinel_sees_all(self) -> bool:
        with self._sentinel() as s:
            master = s.sentinel_master(self.SERVICE)
        return bool(master["is_master"]) and int(master["num-slaves"]) == len(self.replicas)

    def flush(self) -> None:
        with self.server_on(self.master_port()).client() as c:
            c.flushall()
            c.execute_command("WAIT", len(self.replicas), 5000)

    def stop(self) -> None:
        self.sentinel.stop()
        for server in self.servers:
            server.stop()


@contextlib.contextmanager
def redis_cluster(directory: Path, *, replicas: int = 0) -> Iterator[RedisCluster]:
    """A throwaway 3-master Redis Cluster (``replicas`` per master), stopped afterwards (also
    when starting failed)."""
    cluster = RedisCluster(directory, replicas=replicas)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def redis_sentinel(directory: Path, *, replicas: int = 1) -> Iterator[RedisSentinel]:
    """A throwaway master + replicas + Sentinel, stopped afterwards (also when starting
    failed)."""
    setup = RedisSentinel(directory, replicas=replicas)
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


@pytest.fixture(scope="session")
def redis_cluster_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One throwaway Redis Cluster for the whole session (emptied by the tests that use it)."""
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """One throwaway master + replica + Sentinel for the whole session (never failed over:
    failover tests start their own)."""
    with redis_sentinel(tmp_path_factory.mktemp("redis-sentinel")) as setup:
        yield setup
