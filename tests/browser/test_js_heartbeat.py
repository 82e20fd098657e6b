"""The JavaScript client's heartbeat (the `heartbeat` option of /wshub.js), in Chromium against a
real server: an idle connection is pinged and stays open, a busy one is not pinged, a half-open
one (a TCP proxy that stops forwarding without closing) is found dead within interval + timeout
and resumed, ``heartbeat: false`` never pings, nonsense options throw RangeError, and no timer of
the client runs on once it is closed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Page

from wshub.testing import TestServer, run_server

from ..conftest import make_settings
from .conftest import PageFactory

WAIT = 5000  # ms: the most any wait_for_function below may take
SLACK = 400  # ms: how late a browser timer may fire on a loaded machine

# Starts a client as window.hb[name] = {client, log}; the log records, with performance.now()
# times, the heartbeat's pings out and pongs in, every frame in, lifecycle events, what reached
# on("*") handlers, and the messages of `channel` (if given) as [offset, data].
START_CLIENT = """async ([name, url, options, channel]) => {
    const { WshubClient } = await import("/wshub.js");
    const client = new WshubClient(url, options);
    const log = { pingsOut: [], pongsIn: [], framesIn: 0, lastIn: performance.now(),
                  events: [], app: [], messages: [] };
    const heartbeatId = (m) => typeof m?.id === "string" && m.id.includes("-hb-");
    client.addEventListener("frame", ({ detail }) => {
        const now = performance.now();
        const m = detail.message;
        if (detail.direction === "out") {
            if (m?.type === "ping" && heartbeatId(m)) {
                log.pingsOut.push({ at: now, id: m.id, silence: now - log.lastIn });
            }
            return;
        }
        if (m?.type === "pong" && heartbeatId(m)) log.pongsIn.push({ at: now, id: m.id });
        log.lastIn = now;
        log.framesIn += 1;
    });
    for (const type of ["open", "close", "reconnecting", "gap", "error"]) {
        client.addEventListener(type, ({ detail }) => {
            const now = performance.now();
            const { error, welcome, ...rest } = detail;
            if (error) rest.error = { code: error.code, message: error.message };
            log.events.push({ type, at: now, silence: now - log.lastIn, ...rest });
        });
    }
    client.on("*", (payload, envelope) => log.app.push(envelope.type));
    (window.hb ??= {})[name] = { client, log };
    if (channel) client.subscribe(channel, (p) => log.messages.push([p.offset, p.data]));
    await client.connect();
    return { heartbeat: client.heartbeat, connectionId: client.connectionId };
}"""

# Counts the client's live timers: setTimeout calls made from /wshub.js that have neither fired
# nor been cleared, in window.wshubTimers.
TRACK_TIMERS = """() => {
    const live = (window.wshubTimers = new Set());
    const { setTimeout: set, clearTimeout: clear } = globalThis;
    globalThis.setTimeout = (fn, delay, ...args) => {
        const mine = (new Error().stack ?? "").includes("/wshub.js");
        const id = set((...a) => { live.delete(id); fn(...a); }, delay, ...args);
        if (mine) live.add(id);
        return id;
    };
    globalThis.clearTimeout = (id) => { live.delete(id); clear(id); };
}"""


# -- a proxy that can make a connection half-open -----------------------------------------------


class Link:
    """One proxied TCP connection; while ``flowing`` is clear, bytes (and an end of stream) read
    from either side are held, not forwarded, and nothing is closed."""

    def __init__(self, to_client: asyncio.StreamWriter, to_server: asyncio.StreamWriter) -> None:
        self.writers = (to_client, to_server)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.closed = False

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
            await self.flowing.wait()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


class FreezableProxy:
    """A TCP proxy on 127.0.0.1 to ``target_port``. ``freeze()`` stalls every connection open
    now in both directions without closing it, as a sleeping laptop, a lost Wi-Fi or a proxy
    that silently drops a connection leaves it: half-open. Connections made later flow."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.links: list[Link] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for link in self.links:
            link.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def freeze(self) -> None:
        for link in self.links:
            link.flowing.clear()

    def thaw(self) -> None:
        for link in self.links:
            link.flowing.set()

    async def _accept(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        link = Link(client_out, server_out)
        self.links.append(link)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(link.pump(client_in, server_out), link.pump(server_in, client_out))
        link.closed = True


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def server_heartbeat() -> int:
    """The server's heartbeat interval (ms), sent as `heartbeatInterval` in `welcome`; a test
    parametrizes it to change it."""
    return 500


@pytest.fixture
async def server(server_heartbeat: int) -> AsyncIterator[TestServer]:
    settings = make_settings(transport="native", heartbeat_interval=server_heartbeat)
    async with run_server(settings) as s:
        yield s


@pytest.fixture
async def proxy(server: TestServer) -> AsyncIterator[FreezableProxy]:
    async with FreezableProxy(server.port) as p:
        yield p


def proxied(proxy: FreezableProxy, server: TestServer) -> str:
    return f"ws://127.0.0.1:{proxy.port}{server.settings.path}"


async def start(
    page: Page, name: str, url: str, options: dict[str, Any], channel: str | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(START_CLIENT, [name, url, options, channel])
    return result


async def log_of(page: Page, name: str) -> dict[str, Any]:
    log: dict[str, Any] = await page.evaluate("(name) => hb[name].log", name)
    return log


async def until(page: Page, expression: str, name: str) -> None:
    """Wait until ``expression`` holds, with ``c`` = the client and ``log`` its log."""
    await page.wait_for_function(
        f"(name) => {{ const {{ client: c, log }} = hb[name]; return {expression}; }}",
        arg=name,
        timeout=WAIT,
    )


async def state(page: Page, name: str) -> str:
    value: str = await page.evaluate("(name) => hb[name].client.state", name)
    return value


def pings_in(server: TestServer) -> int:
    """`ping` messages the server has received (application level: the heartbeat's)."""
    return server.hub.stats.in_by_type["ping"]


def event_types(log: dict[str, Any]) -> list[str]:
    return [event["type"] for event in log["events"]]


async def until_sessions(server: TestServer, count: int) -> None:
    """Poll (the hub has no event for it) until the server has ``count`` connections."""
    async with asyncio.timeout(WAIT / 1000):
        while len(server.hub.sessions) != count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


# -- tests -------------------------------------------------------------------------------------


async def test_an_idle_client_pings_after_each_silence_and_stays_open(
    open_page: PageFactory, server: TestServer
) -> None:
    page = (await open_page()).page
    # No heartbeat option: the timing comes from the server's welcome (heartbeatInterval 500).
    started = await start(page, "a", server.url, {}, "news")
    assert started["heartbeat"] == {"interval": 500, "timeout": 2000}

    await until(page, "log.pongsIn.length >= 3", "a")
    log = await log_of(page, "a")
    assert pings_in(server) >= 3  # each answered ping reached the server
    assert len(server.hub.sessions) == 1
    # A ping goes only after `interval` ms with no frame at all (the pong before it included).
    assert all(ping["silence"] >= 500 - 2 for ping in log["pingsOut"]), log["pingsOut"]
    assert all(ping["silence"] < 500 + SLACK for ping in log["pingsOut"]), log["pingsOut"]
    # The same connection throughout, and the heartbeat's pongs are not the application's.
    assert await state(page, "a") == "open"
    assert await page.evaluate("hb.a.client.connectionId") == started["connectionId"]
    assert event_types(log) == ["open"]
    assert log["app"] == ["welcome"]

    await page.evaluate("hb.a.client.close()")
    assert await state(page, "a") == "closed"


async def test_a_busy_connection_is_not_pinged(open_page: PageFactory, server: TestServer) -> None:
    page = (await open_page()).page
    await start(page, "b", server.url, {"heartbeat": {"interval": 800, "timeout": 2000}}, "busy")

    for n in range(15):  # a message every 100 ms for 1.5 s: never 800 ms of silence
        await server.hub.publish("busy", n)
        await asyncio.sleep(0.1)
    await until(page, "log.messages.length === 15", "b")
    assert (await log_of(page, "b"))["pingsOut"] == []
    assert pings_in(server) == 0

    # Silent from now on: the heartbeat pings, 800 ms after the last message.
    await until(page, "log.pongsIn.length >= 1", "b")
    log = await log_of(page, "b")
    assert 800 - 2 <= log["pingsOut"][0]["silence"] < 800 + SLACK
    assert pings_in(server) >= 1
    assert event_types(log) == ["open"]


@pytest.mark.parametrize("server_heartbeat", [30000])  # the server must not notice in the test
async def test_a_half_open_connection_is_found_dead_and_the_subscription_resumes(
    server: TestServer, proxy: FreezableProxy, open_page: PageFactory
) -> None:
    page = (await open_page()).page
    options = {
        "heartbeat": {"interval": 300, "timeout": 300},
        "reconnect": {"minDelay": 50, "maxDelay": 100},
    }
    await start(page, "c", proxied(proxy, server), options, "news")
    await server.hub.publish("news", "before")
    await until(page, "log.messages.length === 1", "c")

    proxy.freeze()  # the connection is half-open: nothing goes through, nothing closes
    await server.hub.publish("news", "while frozen")  # reaches the frozen connection only

    await until(page, "log.events.some((e) => e.type === 'reconnecting')", "c")
    log = await log_of(page, "c")
    close, reconnecting = log["events"][1:3]
    assert close["type"] == "close"
    assert [close["code"], close["reason"], close["wasClean"], close["willReconnect"]] == [
        4000,
        "heartbeat timeout",
        False,
        True,
    ]
    assert [reconnecting["code"], reconnecting["reason"]] == [4000, "heartbeat timeout"]
    # Found dead interval + timeout after its last frame: one ping, then the timeout.
    assert 600 - 2 <= close["silence"] < 600 + SLACK, close
    silent_since = close["at"] - close["silence"]
    assert len([p for p in log["pingsOut"] if silent_since < p["at"] < close["at"]]) == 1
    assert not proxy.links[0].closed  # nothing closed on the way: the client found it itself

    # Reconnected through the proxy on a new TCP connection, resumed with `since`: the
    # publication the frozen connection swallowed comes now, once.
    await until(page, "c.state === 'open' && log.messages.length === 2", "c")
    assert len(proxy.links) == 2
    assert not proxy.links[0].flowing.is_set() and proxy.links[1].flowing.is_set()
    assert len(server.hub.sessions) == 2  # the server still believes in the frozen one
    await server.hub.publish("news", "after")
    await until(page, "log.messages.length === 3", "c")
    # The heartbeat runs on the new socket too: a pong after the reconnection.
    await until(page, "log.pongsIn.some((pong) => pong.at > log.events[3].at)", "c")
    log = await log_of(page, "c")
    assert log["messages"] == [[1, "before"], [2, "while frozen"], [3, "after"]]
    assert event_types(log) == ["open", "close", "reconnecting", "open"]
    assert log["events"][3]["reconnected"] is True

    # Unfrozen, the old connection delivers what it held (the publication, the late pong) and
    # the client's close frame reaches the server: none of it reaches the application.
    proxy.thaw()
    await until_sessions(server, 1)
    pong = await page.evaluate("hb.c.client.ping()")  # a round trip after anything late
    assert pong["rtt"] >= 0
    after = await log_of(page, "c")
    assert after["messages"] == log["messages"]
    assert event_types(after) == event_types(log)
    assert "pong" not in after["app"] and "message" in after["app"]
    assert await state(page, "c") == "open"
    await page.evaluate("hb.c.client.close()")


async def test_heartbeat_false_never_pings(open_page: PageFactory, server: TestServer) -> None:
    page = (await open_page()).page
    off = await start(page, "off", server.url, {"heartbeat": False})
    on = await start(page, "on", server.url, {})
    assert off["heartbeat"] is False
    assert on["heartbeat"] == {"interval": 500, "timeout": 2000}

    # Three pings of the other client's (1.5 s of silence): the disabled one sent none.
    await until(page, "log.pongsIn.length >= 3", "on")
    logs = {name: await log_of(page, name) for name in ("off", "on")}
    assert logs["off"]["pingsOut"] == []
    assert len(logs["on"]["pongsIn"]) <= pings_in(server) <= len(logs["on"]["pingsOut"])
    assert await state(page, "off") == "open"
    assert event_types(logs["off"]) == ["open"]
    await page.evaluate("Promise.all([hb.on.client.close(), hb.off.client.close()])")


async def test_invalid_heartbeat_options_throw_range_error(open_page: PageFactory) -> None:
    page = (await open_page()).page
    result = await page.evaluate(
        """async () => {
            const { WshubClient, heartbeatTiming } = await import("/wshub.js");
            const attempt = (heartbeat) => {
                try {
                    return new WshubClient("/ws", { heartbeat }).heartbeat;
                } catch (error) {
                    return error.name;
                }
            };
            const invalid = [
                { interval: 0 }, { interval: -5 }, { timeout: 0 }, { interval: NaN },
                { timeout: Infinity }, { interval: 2 ** 31 }, { interval: "1000" },
                { timeout: true }, 1000, "on", [], [1000, 500],
            ];
            const valid = [
                undefined, true, false, null, {}, { interval: 1000 }, { timeout: 500 },
                { interval: 10000, timeout: 7000 }, { interval: null, timeout: undefined },
            ];
            return {
                invalid: invalid.map(attempt),
                valid: valid.map(attempt),
                derived: [heartbeatTiming(true, 4000), heartbeatTiming({}, 60000),
                          heartbeatTiming(true, undefined), heartbeatTiming(false, 500)],
            };
        }"""
    )
    assert result["invalid"] == ["RangeError"] * 12
    # Before any welcome, derived values come from the protocol's default interval (30000).
    assert result["valid"] == [
        {"interval": 30000, "timeout": 15000},
        {"interval": 30000, "timeout": 15000},
        False,
        False,
        {"interval": 30000, "timeout": 15000},
        {"interval": 1000, "timeout": 2000},
        {"interval": 30000, "timeout": 500},
        {"interval": 10000, "timeout": 7000},
        {"interval": 30000, "timeout": 15000},
    ]
    assert result["derived"] == [
        {"interval": 4000, "timeout": 2000},
        {"interval": 60000, "timeout": 30000},
        {"interval": 30000, "timeout": 15000},
        False,
    ]


async def test_no_timer_runs_on_once_the_client_is_closed(
    server: TestServer, proxy: FreezableProxy, open_page: PageFactory
) -> None:
    page = (await open_page()).page
    await page.evaluate(TRACK_TIMERS)
    live = "window.wshubTimers.size"
    heartbeat = {"interval": 100, "timeout": 200}

    # close() while open, with the heartbeat running.
    await start(page, "open", server.url, {"heartbeat": heartbeat})
    await until(page, "log.pongsIn.length >= 2", "open")
    assert await page.evaluate(live) == 1  # the heartbeat's timer
    await page.evaluate("hb.open.client.close()")
    assert await state(page, "open") == "closed"
    assert await page.evaluate(live) == 0

    # The heartbeat finds the connection dead and reconnecting is off: closed for good.
    await start(page, "dead", proxied(proxy, server), {"heartbeat": heartbeat, "reconnect": False})
    proxy.freeze()
    await until(page, "c.state === 'closed'", "dead")
    last_close = await page.evaluate("hb.dead.client.lastClose")
    assert last_close == {"code": 4000, "reason": "heartbeat timeout"}
    assert event_types(await log_of(page, "dead")) == ["open", "close"]
    assert await page.evaluate(live) == 0

    # Dead while reconnecting is on: the reconnect timer is all that runs, and close() ends it.
    slow = {"heartbeat": heartbeat, "reconnect": {"minDelay": 60000, "maxDelay": 60000}}
    await start(page, "waiting", proxied(proxy, server), slow)
    proxy.freeze()
    await until(page, "c.state === 'reconnecting'", "waiting")
    assert await page.evaluate(live) == 1
    await page.evaluate("hb.waiting.client.close()")
    assert await state(page, "waiting") == "closed"
    assert await page.evaluate(live) == 0
