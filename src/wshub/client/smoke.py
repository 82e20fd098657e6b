"""``wshub smoke``: the protocol's scenarios (connect, authenticate, chat, channels, presence,
limits) against any running server, as a pass/fail table.

Every run uses fresh random user ids and channels, so runs do not see each other's messages.
Checks that need what was not given (a JWT secret, an API key) are skipped with the reason.
The broadcast check sends a ``system_message`` to every connection of the server.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..auth.jwt import issue_token
from ..types import JSONObject
from .client import Client
from .errors import UnknownTypeError
from .models import ChannelMessage, Envelope
from .subscription import MessageStream, Subscription

__all__ = ["CheckResult", "SmokeTest", "http_base", "render"]

Status = Literal["pass", "fail", "skip"]


class Skip(Exception):
    """Raised by a check that cannot run with what it was given."""


class CheckFailed(Exception):
    """Raised by a check whose expectation does not hold."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    status: Status
    seconds: float
    detail: str = ""


def http_base(ws_url: str) -> str:
    """``ws://host:port/ws`` → ``http://host:port`` (``wss`` → ``https``)."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class SmokeTest:
    """The checks, in order. :meth:`run` returns one :class:`CheckResult` per check."""

    url: str
    secret: str | None = None
    algorithm: str = "HS256"
    api_key: str | None = None
    clients: int = 0
    timeout: float = 5.0
    broadcast: bool = True
    console: Console = field(default_factory=Console)

    def __post_init__(self) -> None:
        self.run_id = secrets.token_hex(4)
        self.channel = f"smoke-{self.run_id}"
        self._stack = AsyncExitStack()

    # -- helpers ---------------------------------------------------------------------------

    def user(self, name: str) -> str:
        return f"smoke-{self.run_id}-{name}"

    def token(self, user: str) -> str:
        if self.secret is None:
            raise Skip("needs --secret or WS_JWT_SECRET")
        return issue_token(user, self.secret, algorithm=self.algorithm, ttl=600)

    async def connect(self, user: str | None = None) -> Client:
        """A connected client (authenticated as ``user``), closed at the end of the run."""
        token = self.token(user) if user is not None else None
        client = Client(
            self.url,
            token=token,
            reconnect=False,
            request_timeout=self.timeout,
            open_timeout=self.timeout,
        )
        await client.connect()
        self._stack.push_async_callback(client.close)
        return client

    async def connect_with_inbox(self, user: str) -> tuple[Client, MessageStream]:
        client = Client(
            self.url,
            token=self.token(user),
            reconnect=False,
            request_timeout=self.timeout,
            open_timeout=self.timeout,
        )
        inbox = client.user_messages()
        await client.connect()
        self._stack.push_async_callback(client.close)
        return client, inbox

    async def api(self, path: str, body: JSONObject) -> JSONObject:
        if self.api_key is None:
            raise Skip("needs --api-key or WS_API_KEY")
        async with httpx.AsyncClient(base_url=http_base(self.url), timeout=self.timeout) as http:
            r = await http.post(
                path, json=body, headers={"Authorization": f"Bearer {self.api_key}"}
            )
        expect(r.status_code == 200, f"POST {path}: HTTP {r.status_code} {r.text[:200]}")
        result: JSONObject = r.json()
        return result

    async def next_of(self, inbox: MessageStream, type_: str) -> Envelope:
        """The next user-stream message of ``type_`` (others are skipped)."""
        while True:
            env = await inbox.get()
            if env.type == type_:
                return env

    # -- the checks --------------------------------------------------------------------------

    async def check_welcome(self) -> str:
        client = await self.connect()
        w = client.welcome or {}
        expect(w.get("protocol") == 1, f"protocol is {w.get('protocol')!r}, not 1")
        expect(isinstance(w.get("connectionId"), str), "welcome has no connectionId")
        expect(w.get("userId") is None, "userId should be null before authentication")
        expect(isinstance(w.get("heartbeatInterval"), int), "welcome has no heartbeatInterval")
        return f"connection {w['connectionId']}, heartbeat {w['heartbeatInterval']} ms"

    async def check_ping(self) -> str:
        client = await self.connect()
        reply = await client.request("ping")
        expect(reply.type == "pong", f"got {reply.type!r}")
        expect(isinstance(reply.payload.get("timestamp"), int), "pong has no timestamp")
        return f"round trip {await client.ping() * 1000:.1f} ms"

    async def check_authenticate(self) -> str:
        alice = self.user("alice")
        token = self.token(alice)
        client = await self.connect()
        payload = await client.authenticate(token)
        expect(payload.get("userId") == alice, f"userId is {payload.get('userId')!r}")
        expect(isinstance(payload.get("epoch"), str), "authenticated has no epoch")
        return f"as {alice}"

    async def check_chat(self) -> str:
        alice, bob = self.user("alice"), self.user("bob")
        sender = await self.connect(alice)
        (_, inbox1), (_, inbox2) = [await self.connect_with_inbox(bob) for _ in range(2)]
        receipt = await sender.chat(bob, "hello from smoke")
        expect(receipt.get("delivered") is True, f"chat_received: {receipt}")
        for inbox in (inbox1, inbox2):
            env = await self.next_of(inbox, "chat")
            expect(env.payload.get("from") == alice, f"from is {env.payload.get('from')!r}")
            expect(env.payload.get("message") == "hello from smoke", "wrong message text")
        return "both of the recipient's connections got it"

    async def check_offline(self) -> str:
        alice, carol = self.user("alice"), self.user("carol")
        sender = await self.connect(alice)
        receipt = await sender.chat(carol, "while you were away")
        expect(receipt.get("queued") is True, f"not queued: {receipt}")
        expect(receipt.get("delivered") is False, f"delivered to nobody? {receipt}")
        _, inbox = await self.connect_with_inbox(carol)
        env = await self.next_of(inbox, "chat")
        expect(env.payload.get("message") == "while you were away", "wrong message text")
        return f"queued, delivered at connect (offset {env.offset})"

    async def check_pubsub(self) -> str:
        a = await self.connect(self.user("alice"))
        b = await self.connect(self.user("bob"))
        subs: list[Subscription] = [await c.subscribe(self.channel) for c in (a, b)]
        offset = await a.publish(self.channel, {"smoke": self.run_id})
        for sub in subs:
            msg = await sub.get()
            expect(msg.data == {"smoke": self.run_id}, f"data is {msg.data!r}")
            expect(msg.offset == offset, f"offset {msg.offset} != published {offset}")
        return f"{self.channel} offset {offset}, 2 subscribers"

    async def check_notification(self) -> str:
        if self.api_key is None:
            raise Skip("needs --api-key or WS_API_KEY")
        bob = self.user("bob")
        _, inbox = await self.connect_with_inbox(bob)
        body = {"title": "Smoke", "message": self.run_id, "type": "info"}
        result = await self.api(f"/api/users/{bob}/notify", body)
        expect(result.get("delivered") is True, f"notify: {result}")
        env = await self.next_of(inbox, "notification")
        expect(env.payload.get("message") == self.run_id, f"payload {env.payload}")
        return "POST /api/users/{id}/notify reached the user"

    async def check_broadcast(self) -> str:
        if not self.broadcast:
            raise Skip("--no-broadcast")
        if self.api_key is None:
            raise Skip("needs --api-key or WS_API_KEY")
        client = await self.connect()
        got: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        text = f"smoke {self.run_id}"

        def on_system(env: Envelope) -> None:
            if env.payload.get("message") == text and not got.done():
                got.set_result(env)

        client.on("system_message", on_system)
        result = await self.api("/api/broadcast", {"message": text})
        await got
        return f"system_message to {result.get('connections', '?')} connection(s)"

    async def check_unknown_type(self) -> str:
        client = await self.connect()
        type_ = f"smoke_{self.run_id}"
        try:
            await client.request(type_)
        except UnknownTypeError as exc:
            want = f"Unknown message type: {type_}"
            expect(exc.message == want, f"message is {exc.message!r}, not {want!r}")
            return exc.message
        raise CheckFailed("no error for an unknown type")

    async def check_invalid_json(self) -> str:
        client = await self.connect()
        got: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        client.on("error", lambda env: None if got.done() else got.set_result(env))
        await client.send_raw("{this is not json")
        env = await got
        code = env.payload.get("code")
        expect(code == "invalid_json", f"code is {code!r}")
        return f"invalid_json: {env.payload.get('message')}"

    async def check_fanout(self) -> str:
        n = self.clients
        channel = f"{self.channel}-fan"
        received = 0
        all_in = asyncio.Event()

        def count(_: ChannelMessage) -> None:
            nonlocal received
            received += 1
            progress.advance(deliveries)
            if received == n:
                all_in.set()

        with Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as progress:
            connecting = progress.add_task("connecting", total=n)
            deliveries = progress.add_task("delivered", total=n)
            limit = asyncio.Semaphore(50)

            async def one() -> None:
                async with limit:
                    client = await self.connect()
                    await client.subscribe(channel, count)
                    progress.advance(connecting)

            await asyncio.gather(*(one() for _ in range(n)))
            if self.secret is not None:
                publisher = await self.connect(self.user("alice"))
                await publisher.subscribe(channel, lambda _: None)
                await publisher.publish(channel, {"fanout": self.run_id})
            else:
                await self.api("/api/publish", {"channel": channel, "data": self.run_id})
            await all_in.wait()
        return f"{n} subscribers got the publication"

    # -- running -----------------------------------------------------------------------------

    def checks(self) -> list[tuple[str, Callable[[], Awaitable[str]]]]:
        checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            ("connect + welcome", self.check_welcome),
            ("ping / pong", self.check_ping),
            ("authenticate", self.check_authenticate),
            ("chat (2 connections)", self.check_chat),
            ("offline delivery", self.check_offline),
            ("subscribe / publish", self.check_pubsub),
            ("notification (HTTP)", self.check_notification),
            ("broadcast (HTTP)", self.check_broadcast),
            ("unknown type", self.check_unknown_type),
            ("invalid JSON", self.check_invalid_json),
        ]
        if self.clients > 0:
            checks.append((f"fan-out to {self.clients}", self.check_fanout))
        return checks

    async def run(self) -> list[CheckResult]:
        results: list[CheckResult] = []
        unreachable: str | None = None
        for name, check in self.checks():
            if unreachable is not None:
                results.append(CheckResult(name, "skip", 0.0, unreachable))
                continue
            result = await self._run_one(name, check)
            results.append(result)
            if name == "connect + welcome" and result.status == "fail":
                unreachable = "not run: cannot connect"
        return results

    async def _run_one(self, name: str, check: Callable[[], Awaitable[str]]) -> CheckResult:
        started = time.perf_counter()
        # Fan-out may take longer than one request: give it a timeout per 100 clients.
        limit = self.timeout * (1 + self.clients // 100 if "fan-out" in name else 1)
        status: Status = "pass"
        async with self._each():
            try:
                async with asyncio.timeout(limit):
                    detail = await check()
            except Skip as exc:
                status, detail = "skip", str(exc)
            except TimeoutError as exc:  # the check's limit, or a request's own timeout
                status, detail = "fail", str(exc) or f"timed out after {limit:g}s"
            except Exception as exc:
                status, detail = "fail", f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
        return CheckResult(name, status, time.perf_counter() - started, detail)

    @asynccontextmanager
    async def _each(self) -> AsyncIterator[None]:
        """Close the check's connections when it ends, whatever happened."""
        self._stack = AsyncExitStack()
        try:
            yield
        finally:
            await self._stack.aclose()


def render(results: list[CheckResult], url: str, elapsed: float) -> Table:
    table = Table(title=f"wshub smoke: {url}", title_justify="left")
    table.add_column("#", justify="right", style="bright_black")
    table.add_column("check")
    table.add_column("result")
    table.add_column("time", justify="right")
    table.add_column("detail", overflow="fold")
    marks = {"pass": "[green]PASS[/]", "fail": "[bold red]FAIL[/]", "skip": "[yellow]SKIP[/]"}
    for i, r in enumerate(results, 1):
        detail = f"[red]{r.detail}[/]" if r.status == "fail" else r.detail
        table.add_row(str(i), r.name, marks[r.status], f"{r.seconds * 1000:.0f} ms", detail)
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    table.caption = (
        f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped "
        f"in {elapsed:.2f}s"
    )
    table.caption_justify = "left"
    return table
