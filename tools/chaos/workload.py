"""One scenario: the processes, the clients that publish and observe, the faults, the final
reads of the store, and the ledger they fill."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import socket
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets
from websockets.exceptions import ConnectionClosed, WebSocketException

from wshub.auth.jwt import issue_token
from wshub.client import Client, ReconnectPolicy
from wshub.client.errors import ClientError
from wshub.client.models import ChannelMessage, ConnectionState, Envelope, StateChange

from .ledger import Ack, Ledger, Observer
from .procs import API_KEY, SECRET, NodeProcess, RedisProcess

__all__ = ["Outcome", "Plan", "run_scenario"]

Msg = dict[str, Any]
_NET_ERRORS = (OSError, TimeoutError, WebSocketException, ConnectionError)
_FAST = ReconnectPolicy(min_delay=0.05, max_delay=0.5)


@dataclass
class Plan:
    """What a scenario does. ``duration`` seconds of publishing, at most ``budget`` messages
    (publications and direct messages together, paced evenly over the duration)."""

    name: str
    engine: str  # "sqlite" or "redis"
    nodes: int
    duration: float
    budget: int
    node_kills: int
    redis_kills: int
    seed: int
    channels: int = 3
    users: int = 2
    inflight: int = 4  # requests in flight per publisher
    stall: float = 4.0  # longest stall of a stalled consumer, seconds
    bulk_keep: int = 50  # the bulk channel's retention: its replays fit in the outbox limit
    bulk_rate: float = 50.0  # 24 KB publications per second on the bulk channel
    #: After an ``error`` reply to ``authenticate`` (a store outage), retry it on the same
    #: connection (True), or open a new one as the SDK does. True finds the open issue of
    #: tests/chaos/test_findings.py; the short run of make test uses False.
    auth_retry_in_place: bool = True
    #: Seconds from a restart to the next fault at least. 0 lets faults follow each other at
    #: once (a Redis kill while clients are still reconnecting to a restarted node: that found
    #: the SDK issue of tests/chaos/test_findings.py); the short run uses 2.
    fault_gap: float = 0.0


@dataclass
class Outcome:
    plan: Plan
    ledger: Ledger
    events: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # server log lines (errors, warnings)
    seconds: float = 0.0
    fatal: str | None = None  # the run itself broke (a node would not start, ...)


def _key_of(msg: Msg) -> str | None:
    """The unique key a message of the run carries."""
    payload = msg.get("payload") or {}
    if msg.get("type") == "chat":
        text = payload.get("message")
        return text if isinstance(text, str) else None
    if msg.get("type") == "message":
        payload = payload.get("data") or {}
    k = payload.get("k") if isinstance(payload, dict) else None
    return k if isinstance(k, str) else None


class Conn:
    """A raw WebSocket connection: replies matched to requests by ``id``, every frame also
    handed to ``on_msg`` in arrival order; reading can be paused (a stalled consumer)."""

    _ids = itertools.count(1)

    def __init__(self, ws: websockets.ClientConnection, on_msg: Callable[[Msg], None]) -> None:
        self.ws = ws
        self.on_msg = on_msg
        self.pending: dict[str, asyncio.Future[Msg]] = {}
        self.reading = asyncio.Event()
        self.reading.set()
        self.done = asyncio.Event()
        self.closed_by_us = False
        self.node = ws.request.headers.get("Host", "?") if ws.request else "?"
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, url: str, on_msg: Callable[[Msg], None], *, small_buffer: bool = False
    ) -> Conn:
        sock = None
        if small_buffer:  # a small receive buffer: a stall backs up into the server at once
            port = int(url.split(":")[2].split("/")[0])
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), 5
                )
            except BaseException:
                sock.close()
                raise
        ws = await websockets.connect(
            url,
            sock=sock,
            open_timeout=5,
            ping_interval=None,  # the server's heartbeat is enough; no client-side timeouts
            max_queue=4 if small_buffer else 4096,
            close_timeout=2,
        )
        return cls(ws, on_msg)

    async def _read(self) -> None:
        try:
            while True:
                await self.reading.wait()
                msg: Msg = orjson.loads(await self.ws.recv())
                self.on_msg(msg)
                rid = msg.get("id")
                fut = self.pending.pop(rid, None) if isinstance(rid, str) else None
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except ConnectionClosed:
            pass
        except Exception:  # a bug of the checker: say so, never hide it
            traceback.print_exc(file=sys.stderr)
            raise
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))
            self.pending.clear()
            self.reading.set()
            self.done.set()

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def send(self, type_: str, payload: Msg) -> asyncio.Future[Msg]:
        """Send a request; the future is its reply (an exception if the connection closes)."""
        rid = f"r{next(self._ids)}"
        fut: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        if self.done.is_set():
            fut.set_exception(ConnectionError("connection closed"))
            return fut
        self.pending[rid] = fut
        try:
            await self.ws.send(
                orjson.dumps({"type": type_, "payload": payload, "id": rid}).decode()
            )
        except ConnectionClosed as exc:
            self.pending.pop(rid, None)
            if not fut.done():
                fut.set_exception(ConnectionError(str(exc)))
        return fut

    async def request(self, type_: str, payload: Msg, timeout: float = 10) -> Msg:
        return await asyncio.wait_for(await self.send(type_, payload), timeout)

    async def close(self) -> None:
        self.closed_by_us = True
        self.reading.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.reader, 3)


class Budget:
    """Paces messages evenly over the duration; ``take`` is False once the budget or the time
    is used up."""

    def __init__(self, total: int, duration: float) -> None:
        loop = asyncio.get_running_loop()
        self.left = total
        self.interval = duration / max(total, 1)
        self.start = loop.time()
        self.next = self.start
        self.end = self.start + duration
        self.exhausted = asyncio.Event()

    async def take(self) -> bool:
        now = asyncio.get_running_loop().time()
        if self.left <= 0 or now >= self.end:
            self.exhausted.set()
            return False
        self.left -= 1
        self.next = max(self.next + self.interval, now - 1.0)  # catch up at most 1 s of slots
        await asyncio.sleep(max(0.0, self.next - now))
        return asyncio.get_running_loop().time() < self.end


class Run:
    def __init__(
        self, plan: Plan, nodes: list[NodeProcess], redis: RedisProcess | None, out: Outcome
    ) -> None:
        self.plan = plan
        self.nodes = nodes
        self.redis = redis
        self.out = out
        self.ledger = out.ledger
        self.rng = random.Random(plan.seed)
        self.channels = [f"chaos-{i}" for i in range(plan.channels)]
        #: Large publications for the stalled consumers (and one steady observer per node): a
        #: stall then backs up megabytes, past the kernel's buffers into the hub's outbox.
        self.bulk = "chaos-bulk"
        self.users = [f"rcpt-{i}" for i in range(plan.users)]
        self.up = [asyncio.Event() for _ in nodes]
        for e in self.up:
            e.set()
        self.redis_up = asyncio.Event()
        self.redis_up.set()
        self.quiet = asyncio.Event()  # publishing is over: no more churn, stalls, faults
        self.closing = asyncio.Event()  # the run is over: every client closes
        self.t0 = time.monotonic()
        self.tasks: list[asyncio.Task[None]] = []
        self.budget: Budget | None = None

    # -- helpers -------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str) -> None:
        self.out.events.append(f"{self.now():6.1f}s  {text}")

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task

    async def wait_up(self, index: int, timeout: float = 15) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.up[index].wait(), timeout)
        if self.redis is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.redis_up.wait(), timeout)

    async def pause(self, seconds: float, until: asyncio.Event) -> bool:
        """Sleep ``seconds`` unless ``until`` is set first; True if it was."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), seconds)
        return until.is_set()

    # -- the scenario --------------------------------------------------------------------

    async def execute(self) -> None:
        plan = self.plan
        ready: list[asyncio.Event] = []
        n = len(self.nodes)
        # Observers first, all joined before anything is published.
        for i in range(n):
            for role, bulk in (("steady", True), ("steady", False), ("stalled", True)):
                ready.append(self.observe_channels(f"{role}-{i}-{len(ready)}", role, i, bulk))
            ready.append(self.observe_channels(f"churn-{i}-{len(ready)}", "churn", i, False))
            ready.append(self.sdk_channels(f"sdk-sub-{i}", i))
            for user in self.users:
                ready.append(self.observe_user(f"steady-{user}@{i}", "steady", user, i))
            ready.append(self.sdk_user(f"sdk-{self.users[i % len(self.users)]}@{i}", i))
            for user in self.users:
                ready.append(self.observe_user(f"churn-{user}@{i}", "churn", user, i))
        joined = asyncio.ensure_future(asyncio.gather(*(e.wait() for e in ready)))
        await asyncio.wait([joined, *self.tasks], timeout=60, return_when="FIRST_COMPLETED")
        if not joined.done():
            joined.cancel()
            dead = [t for t in self.tasks if t.done()]
            why = repr(dead[0].exception()) if dead else "timeout"
            raise RuntimeError(f"the observers did not all join: {why}")
        self.event(f"{len(ready)} observing clients joined")

        self.t0 = time.monotonic()
        self.budget = Budget(plan.budget, plan.duration)
        publishers = []
        for i in range(n):
            publishers.append(self.spawn(self.ws_publisher(f"ws-pub-{i}", i, "publish"), "pub"))
            publishers.append(self.spawn(self.ws_publisher(f"ws-chat-{i}", i, "chat"), "chat"))
            publishers.append(self.spawn(self.http_publisher(f"http-pub-{i}", i, "publish"), "h"))
            publishers.append(self.spawn(self.http_publisher(f"http-send-{i}", i, "send"), "s"))
            publishers.append(self.spawn(self.sdk_publisher(f"sdk-pub-{i}", i), "sdk-pub"))
        publishers.append(self.spawn(self.bulk_publisher("http-bulk"), "bulk"))
        faults = self.spawn(self.faults(), "faults")
        await self.pause(plan.duration + 1, self.budget.exhausted)
        await asyncio.wait_for(faults, 60)  # a restart in progress finishes
        self.quiet.set()
        done, pending = await asyncio.wait(publishers, timeout=30)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        self.event(
            f"publishing over: {len(self.ledger.acks)} acknowledged, "
            f"{self.ledger.unacked} not acknowledged"
        )
        await self.read_channels()
        for user in self.users:  # until the audit below says: what the run knows of the head
            stream = f"u:{user}"
            offsets = [a.offset or 0 for a in self.ledger.acks if a.stream == stream]
            offsets += [o.last for o in self.ledger.observers if o.stream == stream]
            self.ledger.heads[stream] = max(offsets, default=0)
        await self.drain()
        self.closing.set()
        await asyncio.wait(self.tasks, timeout=20)
        for task in self.tasks:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is not None:
                self.out.problems.append(f"[checker] {task.get_name()}: {task.exception()!r}")
        await self.audit_users()

    # -- faults --------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str, int]]:
        """Faults at seeded times between 15 % and 75 % of the duration, one at a time."""
        plan = self.plan
        kinds = ["node"] * plan.node_kills + ["redis"] * (plan.redis_kills if self.redis else 0)
        self.rng.shuffle(kinds)
        if not kinds:
            return []
        span = plan.duration * 0.6 / len(kinds)
        out = []
        for i, kind in enumerate(kinds):
            at = plan.duration * 0.15 + span * i + self.rng.uniform(0, span * 0.3)
            out.append((at, kind, self.rng.randrange(len(self.nodes))))
        return out

    async def faults(self) -> None:
        ready_at = 0.0
        for at, kind, index in self.schedule():
            await asyncio.sleep(max(0.0, at - self.now(), ready_at - self.now()))
            down = self.rng.uniform(0.3, 1.0)
            if kind == "node":
                node = self.nodes[index]
                pid = node.proc.pid if node.proc else None
                self.up[index].clear()
                await node.kill9()
                await asyncio.sleep(down)  # the outage itself: a duration, not an event
                await node.start()
                self.up[index].set()
                self.event(f"kill -9 {node.name} (pid {pid}); restarted after {down:.1f} s")
            else:
                assert self.redis is not None
                pid = self.redis.proc.pid if self.redis.proc else None
                self.redis_up.clear()
                await self.redis.kill9()
                await asyncio.sleep(down)
                await self.redis.start()
                self.redis_up.set()
                self.event(f"kill -9 redis-server (pid {pid}); restarted after {down:.1f} s")
            ready_at = self.now() + self.plan.fault_gap

    # -- observers -----------------------------------------------------------------------

    def observe_channels(self, name: str, role: str, home: int, bulk: bool) -> asyncio.Event:
        """A raw subscriber of every channel. ``steady`` stays on its node; ``stalled`` stops
        reading for a while now and then; ``churn`` drops its connection and resumes on a
        random node. Any of them resumes with ``since``/``epoch`` after losing a connection."""
        channels = [*self.channels, self.bulk] if bulk else self.channels
        obs = {ch: self.ledger.observer(name, role, f"c:{ch}") for ch in channels}
        ready = asyncio.Event()

        def on_msg(msg: Msg) -> None:
            t = msg.get("type")
            p = msg.get("payload") or {}
            if t == "message":
                o = obs.get(p.get("channel"))
                key = _key_of(msg)
                if o is not None and key is not None:
                    o.got.append((p["offset"], key))
            elif t == "subscribed":
                o = obs[p["channel"]]
                o.joined(p["offset"], p["epoch"], p.get("recovered"), "recovered" in p)

        async def main() -> None:
            node = home
            while not self.closing.is_set():
                try:
                    conn = await Conn.open(
                        self.nodes[node].ws_url, on_msg, small_buffer=role == "stalled"
                    )
                    conn.node = self.nodes[node].name
                except _NET_ERRORS:
                    await self.wait_up(node)
                    await asyncio.sleep(0.05)
                    continue
                for o in obs.values():
                    o.opened(conn.node)
                try:
                    await self._join(conn, obs)
                except _NET_ERRORS:
                    await conn.close()
                    self._lost(obs.values(), None)
                    continue
                ready.set()
                await self._hold(conn, role)
                if conn.done.is_set() and not conn.closed_by_us:
                    self.ledger.closes[conn.close_code] += 1
                await conn.close()
                if self.closing.is_set():
                    return
                self._lost(obs.values(), conn.close_code)
                if role == "churn":
                    node = self.rng.randrange(len(self.nodes))

        self.spawn(main(), name)
        return ready

    def _lost(self, observers: Any, code: int | None) -> None:
        for o in observers:
            o.disconnected = True

    async def _join(self, conn: Conn, obs: dict[str, Observer]) -> None:
        for ch, o in obs.items():
            while True:
                payload: Msg = {"channel": ch}
                if o.start is not None:
                    payload |= {"since": o.last, "epoch": o.epoch}
                o.context = f"{conn.node} since {payload.get('since')}"
                reply = await conn.request("subscribe", payload)
                if reply["type"] == "subscribed":
                    break
                self.ledger.errors[f"subscribe: {reply['payload'].get('code')}"] += 1
                await asyncio.sleep(0.2)

    async def _hold(self, conn: Conn, role: str) -> None:
        """Keep a connection until the run closes or the connection does."""
        stop = asyncio.Event()

        async def watch() -> None:
            waits = [
                asyncio.ensure_future(conn.done.wait()),
                asyncio.ensure_future(self.closing.wait()),
            ]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            stop.set()

        watcher = asyncio.create_task(watch())
        try:
            while not stop.is_set():
                if role == "steady" or role == "sdk" or self.quiet.is_set():
                    await stop.wait()
                    break
                if await self.pause(self.rng.uniform(0.8, 2.5), stop):
                    break
                if self.quiet.is_set():
                    continue
                if role == "stalled":
                    conn.reading.clear()
                    stalled = self.rng.uniform(2.0, self.plan.stall)
                    self.ledger.stalls += 1
                    await self.pause(stalled, self.quiet)
                    conn.reading.set()
                elif role == "churn":
                    await conn.close()
                    break
        finally:
            await watcher

    def observe_user(self, name: str, role: str, user: str, home: int) -> asyncio.Event:
        """A raw connection of ``user``, authenticated with ``authenticate``; after a lost
        connection it authenticates again with ``since``/``epoch``."""
        o = self.ledger.observer(name, role, f"u:{user}")
        token = issue_token(user, SECRET, ttl=86400)
        ready = asyncio.Event()

        def on_msg(msg: Msg) -> None:
            if msg.get("type") == "authenticated":
                p = msg["payload"]
                o.joined(p["offset"], p["epoch"], p.get("recovered"), "recovered" in p)
            elif isinstance(msg.get("offset"), int):
                key = _key_of(msg)
                if key is not None:
                    o.got.append((msg["offset"], key))

        async def main() -> None:
            node = home
            while not self.closing.is_set():
                try:
                    conn = await Conn.open(self.nodes[node].ws_url, on_msg)
                    conn.node = self.nodes[node].name
                except _NET_ERRORS:
                    await self.wait_up(node)
                    await asyncio.sleep(0.05)
                    continue
                o.opened(conn.node)
                try:
                    while True:
                        payload: Msg = {"token": token}
                        if o.start is not None:
                            payload |= {"since": o.last, "epoch": o.epoch}
                        o.context = f"{conn.node} since {payload.get('since')}"
                        reply = await conn.request("authenticate", payload)
                        if reply["type"] == "authenticated":
                            break
                        code = reply["payload"].get("code")
                        if code == "auth_failed":
                            raise RuntimeError(f"{name}: {reply['payload']}")
                        self.ledger.errors[f"authenticate: {code}"] += 1
                        if not self.plan.auth_retry_in_place:
                            raise ConnectionError(f"authenticate: {code}")  # a new connection
                        await asyncio.sleep(0.2)
                except _NET_ERRORS:
                    await conn.close()
                    o.disconnected = True
                    continue
                ready.set()
                await self._hold(conn, role)
                if conn.done.is_set() and not conn.closed_by_us:
                    self.ledger.closes[conn.close_code] += 1
                await conn.close()
                if self.closing.is_set():
                    return
                o.disconnected = True
                if role == "churn":
                    node = self.rng.randrange(len(self.nodes))

        self.spawn(main(), name)
        return ready

    def sdk_channels(self, name: str, home: int) -> asyncio.Event:
        """An SDK client subscribed to every channel: it reconnects and resumes by itself."""
        obs = {ch: self.ledger.observer(name, "sdk", f"c:{ch}") for ch in self.channels}
        raw_seen: dict[str, set[int]] = {ch: set() for ch in self.channels}
        ready = asyncio.Event()

        def on_frame(text: str) -> None:
            msg = orjson.loads(text)
            p = msg.get("payload") or {}
            if msg.get("type") == "subscribed" and p.get("channel") in obs:
                obs[p["channel"]].joined(
                    p["offset"], p["epoch"], p.get("recovered"), "recovered" in p
                )
            elif msg.get("type") == "message" and p.get("channel") in obs:
                seen = raw_seen[p["channel"]]
                if p["offset"] in seen:
                    obs[p["channel"]].raw_dups += 1
                seen.add(p["offset"])

        def on_state(change: StateChange) -> None:
            if ready.is_set() and change.state != ConnectionState.CONNECTED:
                for o in obs.values():
                    o.disconnected = True

        def callback(ch: str) -> Callable[[ChannelMessage], None]:
            def got(msg: ChannelMessage) -> None:
                key = msg.data.get("k") if isinstance(msg.data, dict) else None
                if isinstance(key, str):
                    obs[ch].got.append((msg.offset, key))

            return got

        async def main() -> None:
            client = Client(
                self.nodes[home].ws_url, reconnect=_FAST, on_frame=on_frame, on_state=on_state
            )
            await client.connect()
            try:
                for ch in self.channels:
                    await client.subscribe(ch, callback(ch))
                ready.set()
                await self.closing.wait()
            finally:
                await client.close()

        self.spawn(main(), name)
        return ready

    def sdk_user(self, name: str, home: int) -> asyncio.Event:
        """An SDK client of a user: the user stream, resumed by the SDK after a drop."""
        user = self.users[home % len(self.users)]
        o = self.ledger.observer(name, "sdk", f"u:{user}")
        ready = asyncio.Event()
        raw_seen: set[int] = set()

        def on_frame(text: str) -> None:
            msg = orjson.loads(text)
            if msg.get("type") == "authenticated":
                p = msg["payload"]
                o.joined(p["offset"], p["epoch"], p.get("recovered"), "recovered" in p)
            elif isinstance(msg.get("offset"), int):
                if msg["offset"] in raw_seen:
                    o.raw_dups += 1
                raw_seen.add(msg["offset"])

        def on_state(change: StateChange) -> None:
            if ready.is_set() and change.state != ConnectionState.CONNECTED:
                o.disconnected = True

        def got(env: Envelope) -> None:
            if env.offset is not None:
                key = _key_of({"type": env.type, "payload": env.payload})
                if key is not None:
                    o.got.append((env.offset, key))

        async def main() -> None:
            client = Client(
                self.nodes[home].ws_url,
                token=issue_token(user, SECRET, ttl=86400),
                reconnect=_FAST,
                on_frame=on_frame,
                on_state=on_state,
            )
            client.on("*", got)
            await client.connect()
            try:
                ready.set()
                await self.closing.wait()
            finally:
                await client.close()

        self.spawn(main(), name)
        return ready

    # -- publishers ----------------------------------------------------------------------

    def _message(self, name: str, seq: int) -> str:
        return f"{name}:{seq}"

    async def ws_publisher(self, name: str, home: int, mode: str) -> None:
        """Raw WebSocket ``publish`` (or ``chat``), ``inflight`` pipelined on one connection;
        a lost connection is opened again."""
        assert self.budget is not None
        token = issue_token(name, SECRET, ttl=86400)
        seq = itertools.count(1)
        conns = itertools.count(1)
        rng = random.Random(f"{self.plan.seed}-{name}")
        while not self.quiet.is_set():
            try:
                conn = await Conn.open(f"{self.nodes[home].ws_url}?token={token}", lambda m: None)
            except _NET_ERRORS:
                await self.wait_up(home)
                await asyncio.sleep(0.05)
                continue
            try:
                if mode == "publish":  # the default policy: publish where subscribed
                    for ch in self.channels:
                        reply = await conn.request("subscribe", {"channel": ch})
                        if reply["type"] != "subscribed":
                            raise ConnectionError(str(reply))
            except _NET_ERRORS:
                await conn.close()
                await self.wait_up(home)
                await asyncio.sleep(0.05)
                continue
            conn_no = next(conns)
            slots = asyncio.Semaphore(self.plan.inflight)
            waiting: set[asyncio.Task[None]] = set()
            while not conn.done.is_set() and not self.quiet.is_set():
                await slots.acquire()
                if not await self.budget.take():
                    slots.release()
                    break
                if conn.done.is_set():
                    self.ledger.error(f"{mode}: connection lost")
                    slots.release()
                    break
                n = next(seq)
                key = self._message(name, n)
                sent = time.monotonic()
                if mode == "publish":
                    ch = rng.choice(self.channels)
                    stream = f"c:{ch}"
                    fut = await conn.send("publish", {"channel": ch, "data": {"k": key}})
                else:
                    user = rng.choice(self.users)
                    stream = f"u:{user}"
                    fut = await conn.send("chat", {"recipientId": user, "message": key})
                task = asyncio.create_task(
                    self._ws_reply(fut, slots, stream, key, name, conn_no, n, sent, mode)
                )
                waiting.add(task)
                task.add_done_callback(waiting.discard)
            if waiting:
                await asyncio.wait(waiting)
            await conn.close()

    async def _ws_reply(
        self,
        fut: asyncio.Future[Msg],
        slots: asyncio.Semaphore,
        stream: str,
        key: str,
        name: str,
        conn: int,
        seq: int,
        sent: float,
        mode: str,
    ) -> None:
        via = "ws" if mode == "publish" else "chat"
        try:
            reply = await asyncio.wait_for(fut, 10)
        except (TimeoutError, ConnectionError):
            self.ledger.error(f"{via}: no reply")
            return
        finally:
            slots.release()
        p = reply.get("payload") or {}
        if reply["type"] == "published":
            offset = p["offset"]
        elif reply["type"] == "chat_received":
            offset = None
        else:
            self.ledger.error(f"{via}: {p.get('code')}")
            return
        self.ledger.acks.append(
            Ack(stream, key, offset, name, conn, seq, sent, time.monotonic(), via)
        )

    async def http_publisher(self, name: str, home: int, mode: str) -> None:
        """``POST /api/publish`` (or ``/api/users/{id}/send``), ``inflight`` at a time."""
        assert self.budget is not None
        budget = self.budget
        seq = itertools.count(1)
        rng = random.Random(f"{self.plan.seed}-{name}")
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(
            base_url=self.nodes[home].http, headers=headers, timeout=10
        ) as http:

            async def worker() -> None:
                while not self.quiet.is_set() and await budget.take():
                    n = next(seq)
                    key = self._message(name, n)
                    sent = time.monotonic()
                    if mode == "publish":
                        ch = rng.choice(self.channels)
                        stream, path = f"c:{ch}", "/api/publish"
                        body: Msg = {"channel": ch, "data": {"k": key}}
                    else:
                        user = rng.choice(self.users)
                        stream, path = f"u:{user}", f"/api/users/{user}/send"
                        body = {"type": "chaos", "payload": {"k": key}}
                    try:
                        r = await http.post(path, json=body)
                    except httpx.HTTPError as exc:
                        self.ledger.error(f"http: {type(exc).__name__}")
                        await self.wait_up(home)
                        continue
                    if r.status_code != 200:
                        self.ledger.error(f"http: {r.status_code}")
                        await self.wait_up(home)
                        continue
                    via = "http" if mode == "publish" else "send"
                    self.ledger.acks.append(
                        Ack(
                            stream, key, r.json()["offset"], name, 0, n, sent, time.monotonic(), via
                        )
                    )

            await asyncio.gather(*(worker() for _ in range(self.plan.inflight)))

    async def bulk_publisher(self, name: str) -> None:
        """``POST /api/publish`` of 24 KB publications to the bulk channel, at ``bulk_rate``
        per second (outside the budget), through each node in turn."""
        headers = {"Authorization": f"Bearer {API_KEY}"}
        pad = "x" * 24000
        loop = asyncio.get_running_loop()
        start = loop.time()
        clients = [
            httpx.AsyncClient(base_url=node.http, headers=headers, timeout=10)
            for node in self.nodes
        ]
        try:
            for n in itertools.count(1):
                if self.quiet.is_set() or self.budget is None or self.budget.exhausted.is_set():
                    return
                await asyncio.sleep(max(0.0, start + n / self.plan.bulk_rate - loop.time()))
                key = self._message(name, n)
                sent = time.monotonic()
                body = {"channel": self.bulk, "data": {"k": key, "pad": pad}}
                try:
                    r = await clients[n % len(clients)].post("/api/publish", json=body)
                except httpx.HTTPError as exc:
                    self.ledger.error(f"http: {type(exc).__name__}")
                    await self.wait_up(n % len(clients))
                    continue
                if r.status_code != 200:
                    self.ledger.error(f"http: {r.status_code}")
                    await self.wait_up(n % len(clients))
                    continue
                self.ledger.acks.append(
                    Ack(
                        f"c:{self.bulk}",
                        key,
                        r.json()["offset"],
                        name,
                        0,
                        n,
                        sent,
                        time.monotonic(),
                        "http",
                    )
                )
        finally:
            for c in clients:
                await c.aclose()

    async def sdk_publisher(self, name: str, home: int) -> None:
        """The SDK's ``publish``, ``inflight`` concurrent calls; the SDK reconnects by itself."""
        assert self.budget is not None
        budget = self.budget
        seq = itertools.count(1)
        rng = random.Random(f"{self.plan.seed}-{name}")
        client = Client(
            self.nodes[home].ws_url, token=issue_token(name, SECRET, ttl=86400), reconnect=_FAST
        )
        await client.connect()
        try:
            for ch in self.channels:
                await client.subscribe(ch, lambda m: None)

            async def worker() -> None:
                while not self.quiet.is_set() and await budget.take():
                    n = next(seq)
                    key = self._message(name, n)
                    ch = rng.choice(self.channels)
                    sent = time.monotonic()
                    try:
                        offset = await client.publish(ch, {"k": key}, timeout=10)
                    except (ClientError, TimeoutError) as exc:
                        self.ledger.error(f"sdk: {type(exc).__name__}")
                        continue
                    self.ledger.acks.append(
                        Ack(f"c:{ch}", key, offset, name, 0, n, sent, time.monotonic(), "sdk")
                    )

            await asyncio.gather(*(worker() for _ in range(self.plan.inflight)))
        finally:
            await client.close()

    # -- the end: the store, then every observer up to the head ---------------------------

    async def audit_users(self) -> None:
        """Every user stream, whole (``authenticate`` with ``since: 0``). That replay is larger
        than the outbox limit of the run (a stalled consumer must overflow it), so node 0 is
        restarted for it with limits that hold the whole stream."""
        node = self.nodes[0]
        await node.stop()
        saved = node.settings
        node.settings = {
            **saved,
            "outbox_max_messages": "10000000",
            "outbox_max_bytes": "1000000000",
        }
        try:
            await node.start()
        finally:
            node.settings = saved
        self.event(f"{node.name} restarted (SIGTERM) with large outbox limits to read user streams")
        for user in self.users:
            await self._read_user(node, user)

    async def read_channels(self) -> None:
        """Every channel's history (HTTP API), read from node 0 once publishing is over."""
        node = self.nodes[0]
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=node.http, headers=headers, timeout=10) as http:
            for ch in [*self.channels, self.bulk]:
                stream = f"c:{ch}"
                got: dict[int, str] = {}
                since = 0
                for _ in range(10_000):  # pages of 1000; bounded
                    r = await self._get(http, f"/api/channels/{ch}/history", since)
                    body = r.json()
                    self.ledger.heads[stream] = body["offset"]
                    self.ledger.epochs[stream] = body["epoch"]
                    pubs = body["publications"]
                    for item in pubs:
                        data = item.get("data")
                        key = data.get("k") if isinstance(data, dict) else None
                        got[item["offset"]] = key if isinstance(key, str) else "?"
                    if not pubs:
                        break
                    since = pubs[-1]["offset"]
                self.ledger.history[stream] = got

    async def _get(self, http: httpx.AsyncClient, path: str, since: int) -> httpx.Response:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                r = await http.get(path, params={"since": since, "limit": 1000})
                if r.status_code == 200:
                    return r
            await asyncio.sleep(0.1)
        raise RuntimeError(f"GET {path} kept failing")

    async def _read_user(self, node: NodeProcess, user: str) -> None:
        stream = f"u:{user}"
        got: dict[int, str] = {}
        head: list[int] = []
        done = asyncio.Event()

        def on_msg(msg: Msg) -> None:
            if msg.get("type") == "authenticated":
                head.append(msg["payload"]["offset"])
                self.ledger.epochs[stream] = msg["payload"]["epoch"]
            elif isinstance(msg.get("offset"), int):
                got[msg["offset"]] = _key_of(msg) or "?"
            if head and (head[0] == 0 or max(got, default=0) >= head[0]):
                done.set()

        conn = await Conn.open(node.ws_url, on_msg)
        try:
            token = issue_token(user, SECRET, ttl=86400)
            await conn.request("authenticate", {"token": token, "since": 0})
            await asyncio.wait_for(done.wait(), 20)
        finally:
            await conn.close()
        self.ledger.history[stream] = got
        self.ledger.heads[stream] = head[0]

    async def drain(self, timeout: float = 30) -> None:
        """Wait (bounded, polling) until every observer has reached the head of its stream."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            behind = [
                o for o in self.ledger.observers if o.last < self.ledger.heads.get(o.stream, 0)
            ]
            if not behind:
                self.event("every observer reached the head of its streams")
                return
            await asyncio.sleep(0.1)
        self.event(f"{len(behind)} observer streams still behind after {timeout:.0f} s")


async def run_scenario(plan: Plan, workdir: Path) -> Outcome:
    """Start the processes, run the plan, stop everything (also on failure)."""
    out = Outcome(plan, Ledger())
    out.ledger.retention["c:chaos-bulk"] = plan.bulk_keep
    started = time.monotonic()
    redis = RedisProcess(workdir / "redis") if plan.engine == "redis" else None
    settings = {
        "history_size": "1000000",  # retention larger than any run: nothing may be trimmed
        "inbox_size": "1000000",
        "history_ttl": "86400",
        "rate_limit": "100000",
        "rate_burst": "100000",
        # A stall of a few seconds on the bulk channel overflows 2 MB (1013); a resume's replay
        # does not: the bulk channel keeps 50 x 24 KB, and what the others miss is small.
        "outbox_max_messages": "5000",
        "outbox_max_bytes": "2000000",
        "channel_retention": json.dumps({"chaos-bulk": {"size": plan.bulk_keep}}),
        "shutdown_timeout": "1000",
        "log_level": "info",
    }
    if redis is not None:
        settings |= {"store_url": redis.url, "broker_url": f"{redis.url}?node_ttl=1.5"}
    else:
        settings |= {"store_url": f"sqlite:///{workdir}/wshub.db", "broker_url": "memory://"}
    nodes = [NodeProcess(i, workdir, settings) for i in range(plan.nodes)]
    run: Run | None = None
    try:
        if redis is not None:
            await redis.start()
        await asyncio.gather(*(node.start() for node in nodes))
        run = Run(plan, nodes, redis, out)
        await run.execute()
    except Exception as exc:
        out.fatal = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    finally:
        if run is not None:
            run.quiet.set()
            run.closing.set()
            pending = [t for t in run.tasks if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=10)
        for node in nodes:
            await node.kill9()
            out.problems.extend(node.problems)
        if redis is not None:
            await redis.stop()
        out.seconds = time.monotonic() - started
    return out
