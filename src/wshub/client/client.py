"""The asyncio client: requests and replies, subscriptions, the user stream, and reconnecting
without losing or repeating a message.

::

    async with Client("ws://localhost:5000/ws", token=token) as client:
        sub = await client.subscribe("news")
        await client.publish("news", {"hello": "world"})
        async for msg in sub:
            print(msg.offset, msg.data)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from ..types import JSON, JSONObject, StreamPosition
from ._dispatch import Callback, Dispatcher
from .backoff import ReconnectPolicy
from .delivery import Distributor
from .errors import (
    AuthenticationError,
    ClientClosedError,
    ClientError,
    ConnectionLostError,
    ForbiddenError,
    InternalServerError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
)
from .models import ChannelMessage, ConnectionState, Envelope, Gap, StateChange
from .requests import ReplyHook, RequestTable
from .streams import StreamState
from .subscription import MessageStream, Subscription

__all__ = ["Client", "TokenProvider"]

logger = logging.getLogger("wshub.client")

#: Returns the token to authenticate with; called before every (re)connection, on
#: ``token_expiring`` (to refresh the connection in place) and to resume the user stream after
#: a gap.
TokenProvider = Callable[[], str | Awaitable[str]]

# Errors after which another attempt may succeed; any other ClientError (a refused token, a
# refused handshake) would only repeat.
#: Error codes that say "not now" rather than "no": retried, not taken as a refusal.
_TRANSIENT = frozenset({"internal_error", "rate_limited", "unavailable"})

_RETRYABLE = (
    OSError,
    TimeoutError,
    EOFError,
    WebSocketException,
    ConnectionLostError,
    RateLimitedError,
    InternalServerError,
)


class Client:
    """A connection to a wshub server that survives drops.

    ``token`` (a string, or a plain or async callable returning one: called before every
    connection, when the server says ``token_expiring`` and before a reconnection after 4001;
    ``token_provider`` is the same as a callable ``token``) authenticates the connection with an
    ``authenticate`` message after ``welcome`` (``token_in_url=True``: as ``?token=`` in the
    handshake instead, which cannot resume the user stream exactly; see docs/client.md).
    :meth:`connect` returns once the connection is welcomed, authenticated and its subscriptions
    are restored; it raises if that first attempt fails.

    After an unexpected close the client reconnects with ``reconnect`` (a
    :class:`ReconnectPolicy`; False: never), re-authenticates and re-subscribes with ``since``
    and ``epoch`` so that every channel and the user stream continue where they stopped: each
    message reaches the application once, in order. A live stream whose offsets jump (a
    ``message`` at 7 after 5) is resumed from the last offset without a gap on the same
    connection, what came after the gap held back until the replay filled it. ``on_gap`` hears
    of every such jump (:class:`Gap` ``lost`` False) and of streams whose gap could not be
    closed (``lost`` True). Requests made while reconnecting wait for the connection (within their
    timeout); requests in flight when it drops raise :class:`ConnectionLostError`.

    Callbacks (``on``, ``subscribe(callback=...)``, ``on_state``, ``on_gap``) may be plain or
    coroutine functions; they run one at a time, in order, in a task of their own. ``on_frame``
    and ``on_send`` see every raw text frame received and sent, synchronously (for tools).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | TokenProvider | None = None,
        token_provider: TokenProvider | None = None,
        token_in_url: bool = False,
        reconnect: ReconnectPolicy | bool = True,
        request_timeout: float = 10.0,
        open_timeout: float = 10.0,
        user_position: StreamPosition | None = None,
        on_state: Callback[StateChange] | None = None,
        on_gap: Callback[Gap] | None = None,
        on_frame: Callable[[str], None] | None = None,
        on_send: Callable[[str], None] | None = None,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        if token is not None and token_provider is not None:
            raise ValueError("give token or token_provider, not both")
        if callable(token):
            token, token_provider = None, token
        self.url = url
        self._token = token
        self._token_provider = token_provider
        self._token_in_url = token_in_url
        if reconnect is True:
            reconnect = ReconnectPolicy()
        self._policy: ReconnectPolicy | None = reconnect or None
        self.request_timeout = request_timeout
        self.open_timeout = open_timeout
        self._on_state = on_state
        self._on_frame = on_frame
        self._on_send = on_send
        self._connect_options = dict(connect_options or {})

        #: The last ``welcome`` payload, and who the server says this connection is.
        self.welcome: JSONObject | None = None
        self.connection_id: str | None = None
        self.state = ConnectionState.CLOSED
        self.close_code: int | None = None
        self.close_reason = ""

        self._dispatcher = Dispatcher()
        user = (
            StreamState.resuming(user_position.offset, user_position.epoch)
            if user_position is not None
            else StreamState()
        )
        self._delivery = Distributor(
            self._dispatcher, user=user, on_gap=on_gap, fill=self._request_fill
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._requests = RequestTable()
        self._subscribing: set[str] = set()
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._welcome_waiter: asyncio.Future[Envelope] | None = None
        self._auth_waiter: asyncio.Future[Envelope] | None = None
        self._ready = asyncio.Event()
        self._done = asyncio.Event()
        self._started = False
        self._closing = False
        self._error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> Client:
        """Open the connection; return when it is welcomed, authenticated and subscribed.

        Raises :class:`AuthenticationError` for a refused token, or the network error of the
        attempt (``OSError``, ``TimeoutError``, ``websockets.InvalidStatus`` ...); it does not
        retry. A client connects once: after :meth:`close` make a new one.
        """
        if self._started:
            raise RuntimeError("this client has already been started")
        self._started = True
        self._dispatcher.start()
        self._set_state(StateChange(ConnectionState.CONNECTING))
        try:
            await self._open()
        except BaseException as exc:
            self._finish(exc)
            await self._dispatcher.stop()
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name="wshub-client-supervisor")
        return self

    async def close(self) -> None:
        """Close with 1000 (no reconnect), end every iterator, run the callbacks still queued."""
        if not self._done.is_set():
            self._closing = True
            sup = self._supervisor
            if sup is not None and sup is not asyncio.current_task():
                sup.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sup
            if self._ws is not None:
                await self._ws.close(1000)
                self.close_code, self.close_reason = self._ws.close_code, ""
            if self._reader is not None and self._reader is not asyncio.current_task():
                await asyncio.wait({self._reader})
            self._finish(None)
        await self._cancel_tasks()
        await self._dispatcher.stop()

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def wait_closed(self) -> None:
        """Wait until the client is closed for good (by :meth:`close` or by giving up)."""
        await self._done.wait()

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """Whether the connection is up and ready for requests."""
        return self._ready.is_set()

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    @property
    def error(self) -> BaseException | None:
        """Why the client closed by itself (a close code that forbids reconnecting, giving up,
        refused credentials); None while open and after :meth:`close`."""
        return self._error

    @property
    def user_id(self) -> str | None:
        """The user the server authenticated this client as."""
        return self._delivery.user_id

    @property
    def user_recovered(self) -> bool | None:
        """``recovered`` of the last user-stream resume (None: no resume yet)."""
        return self._delivery.user_recovered

    @property
    def user_position(self) -> StreamPosition | None:
        """Where the user stream stands for this client; store it to pass as ``user_position``
        to a later process's client."""
        return self._delivery.user.position

    @property
    def subscriptions(self) -> Mapping[str, Subscription]:
        return dict(self._delivery.subs)

    # -- requests ----------------------------------------------------------------------------

    async def request(
        self, type_: str, payload: JSONObject | None = None, *, timeout: float | None = None
    ) -> Envelope:
        """Send a message with a fresh ``id`` and return the reply carrying it.

        Waits for the connection first when reconnecting. Raises a :class:`ServerError` subclass
        for an ``error`` reply, :class:`RequestTimeoutError` after ``timeout`` seconds (default:
        ``request_timeout``) for both, :class:`ConnectionLostError` if the connection drops first.
        """
        return await self._call(type_, payload, timeout=timeout)

    async def ping(self, *, timeout: float | None = None) -> float:
        """Send ``ping``, await ``pong``; return the round trip in seconds."""
        started = time.perf_counter()
        await self._call("ping", None, timeout=timeout)
        return time.perf_counter() - started

    async def authenticate(self, token: str, *, timeout: float | None = None) -> JSONObject:
        """Authenticate with ``token`` (also used for every reconnection from now on); returns
        the ``authenticated`` payload. Raises :class:`AuthenticationError` for a bad token."""
        self._token, self._token_provider = token, None
        d = self._delivery
        reply = await self._call(
            "authenticate", d.auth_payload(token), timeout=timeout, hook=d.user_joined()
        )
        return reply.payload

    async def publish(self, channel: str, data: JSON, *, timeout: float | None = None) -> int:
        """Publish ``data`` on ``channel`` (by default the connection must be authenticated and
        subscribed to it); return the publication's offset."""
        reply = await self._call("publish", {"channel": channel, "data": data}, timeout=timeout)
        offset = reply.payload.get("offset")
        if not isinstance(offset, int):
            raise ClientError(f"malformed 'published' reply: {reply.payload!r}")
        return offset

    async def chat(self, recipient: str, text: str, *, timeout: float | None = None) -> JSONObject:
        """Send a direct message; return the ``chat_received`` payload (``messageId``,
        ``recipientId``, ``delivered``, ``queued``, ``timestamp``)."""
        reply = await self._call(
            "chat", {"recipientId": recipient, "message": text}, timeout=timeout
        )
        return reply.payload

    async def presence(self, channel: str, *, timeout: float | None = None) -> list[str]:
        """The users online in a ``presence-…`` channel."""
        reply = await self._call("presence", {"channel": channel}, timeout=timeout)
        users = reply.payload.get("users")
        return [u for u in users if isinstance(u, str)] if isinstance(users, list) else []

    async def send(self, type_: str, payload: JSONObject | None = None) -> None:
        """Send a message without an ``id`` and without waiting for anything."""
        msg: JSONObject = {"type": type_}
        if payload is not None:
            msg["payload"] = payload
        await self.send_raw(orjson.dumps(msg).decode())

    async def send_raw(self, text: str) -> None:
        """Send one text frame as it is (raises :class:`ConnectionLostError` when down)."""
        ws = self._ws
        if ws is None or not self._ready.is_set():
            raise ConnectionLostError("not connected")
        await self._send_text(ws, text)

    # -- subscriptions and the user stream ---------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        callback: Callback[ChannelMessage] | None = None,
        *,
        since: int | None = None,
        epoch: str | None = None,
        timeout: float | None = None,
    ) -> Subscription:
        """Subscribe to ``channel``; with ``since`` (and ``epoch``), first receive what was
        published after that offset. Returns once the server confirmed.

        Messages go to ``callback`` if given, else into the returned :class:`Subscription`,
        which is an async iterator. Raises ``ValueError`` if already subscribed to ``channel``,
        a :class:`ServerError` (``forbidden``, ``not_authenticated``, ...) if refused.
        """
        d = self._delivery
        if channel in d.subs or channel in self._subscribing:
            raise ValueError(f"already subscribed to {channel!r}")
        state = StreamState.resuming(since, epoch) if since is not None else StreamState()
        sub = Subscription(channel, state=state, callback=callback, unsubscribe=self._unsubscribe)
        self._subscribing.add(channel)
        try:
            await self._call(
                "subscribe", d.sub_payload(sub), timeout=timeout, hook=d.sub_joined(sub)
            )
        finally:
            self._subscribing.discard(channel)
        return sub

    async def unsubscribe(self, channel: str) -> None:
        """Unsubscribe from ``channel`` (see :meth:`Subscription.unsubscribe`)."""
        sub = self._delivery.subs.get(channel)
        if sub is not None:
            await self._unsubscribe(sub)

    def on(self, type_: str, callback: Callback[Envelope]) -> Callback[Envelope]:
        """Call ``callback(envelope)`` for every message of ``type_`` that is not a reply to a
        request nor a channel ``message``: ``chat``, ``notification``, your own user-stream types,
        ``system_message``, ``presence_join``, ``error`` without a request... ``"*"``: all of them.
        User-stream messages (with an envelope ``offset``) come once, in order, across
        reconnects. Returns ``callback``."""
        self._delivery.on(type_, callback)
        return callback

    def off(self, type_: str, callback: Callback[Envelope]) -> None:
        """Remove a callback added with :meth:`on`."""
        self._delivery.off(type_, callback)

    def user_messages(self) -> MessageStream:
        """An async iterator over the user stream (every envelope carrying an ``offset``) from
        now on. Create it before :meth:`connect` to also get the messages waiting for the user."""
        stream = MessageStream(self._delivery.streams.discard)
        if self._done.is_set():
            stream._end()
        else:
            self._delivery.streams.add(stream)
        return stream

    # -- internals: connecting ---------------------------------------------------------------

    async def _open(self) -> None:
        """One connection attempt: handshake, ``welcome``, authentication, subscriptions.
        Leaves nothing open when it raises."""
        token = await self._current_token()
        url = _with_query(self.url, token=token) if token and self._token_in_url else self.url
        loop = asyncio.get_running_loop()
        try:
            ws = await connect(url, open_timeout=self.open_timeout, **self._connect_options)
        except InvalidStatus as exc:
            raise _handshake_error(exc) from None
        self._ws = ws
        self._welcome_waiter = loop.create_future()
        self._auth_waiter = loop.create_future() if token and self._token_in_url else None
        self._reader = asyncio.create_task(self._read(ws), name="wshub-client-reader")
        try:
            async with asyncio.timeout(self.open_timeout):
                welcome = await self._welcome_waiter
                self.welcome = welcome.payload
                cid = welcome.payload.get("connectionId")
                self.connection_id = cid if isinstance(cid, str) else None
                if self._auth_waiter is not None:
                    await self._auth_waiter
                elif token:
                    d = self._delivery
                    await self._request("authenticate", d.auth_payload(token), hook=d.user_joined())
                await self._resubscribe()
        except BaseException:
            with contextlib.suppress(Exception):
                await ws.close(1000)
            await asyncio.wait({self._reader})
            raise
        self._ready.set()
        self._set_state(StateChange(ConnectionState.CONNECTED))

    async def _resubscribe(self) -> None:
        d = self._delivery
        subs = list(d.subs.values())
        if not subs:
            return
        results = await asyncio.gather(
            *(self._request("subscribe", d.sub_payload(s), hook=d.sub_joined(s)) for s in subs),
            return_exceptions=True,
        )
        for sub, result in zip(subs, results, strict=True):
            if isinstance(result, ServerError) and result.code in _TRANSIENT:
                # The server could not do it now (its store restarting): the connection is not
                # usable yet; the reconnect loop tries again, resuming every subscription.
                raise ConnectionLostError(
                    f"re-subscribing to {sub.channel!r} failed for now: {result}"
                ) from result
            if isinstance(result, ServerError):
                # Refused now (a token without the claim, a changed policy): end this one only.
                logger.warning("re-subscribing to %r failed: %s", sub.channel, result)
                d.remove(sub)
                sub._end(result)
            elif isinstance(result, BaseException):
                raise result

    async def _supervise(self) -> None:
        """Wait for the connection to drop, then reconnect (or give up) per the policy."""
        try:
            while True:
                assert self._reader is not None and self._ws is not None
                # wait(), not await: cancelling the supervisor must not cancel the reader.
                await asyncio.wait({self._reader})
                code, reason = self._ws.close_code, self._ws.close_reason or ""
                self.close_code, self.close_reason = code, reason
                if self._closing:
                    return
                policy = self._policy
                if policy is None or not policy.should_reconnect(code):
                    self._finish(
                        ClientClosedError(
                            f"closed by the server ({code})", code=code, reason=reason
                        )
                    )
                    return
                if not await self._reconnect(policy, code, reason):
                    return
        except Exception as exc:  # a bug: do not leave the application waiting forever
            logger.exception("client supervisor failed")
            self._finish(exc)

    async def _reconnect(self, policy: ReconnectPolicy, code: int | None, reason: str) -> bool:
        """Retry until connected (True) or the policy gives up (False, client finished)."""
        for attempt in itertools.count():
            if policy.gives_up(attempt):
                self._finish(
                    ClientClosedError(
                        f"gave up reconnecting after {attempt} attempt(s)", code=code, reason=reason
                    )
                )
                return False
            delay = policy.delay(attempt)
            self._set_state(
                StateChange(ConnectionState.RECONNECTING, code, reason, attempt + 1, delay)
            )
            await asyncio.sleep(delay)
            try:
                await self._open()
                return True
            except _RETRYABLE as exc:
                logger.info("reconnect attempt %d failed: %r", attempt + 1, exc)
            except ClientError as exc:  # refused credentials or similar: retrying cannot help
                logger.warning("not reconnecting: %s", exc)
                self._finish(exc)
                return False
            except Exception:  # e.g. a token provider that failed: maybe better next time
                logger.warning("reconnect attempt %d failed", attempt + 1, exc_info=True)
        raise AssertionError("unreachable")

    def _finish(self, error: BaseException | None) -> None:
        """The client is closed for good: end iterators, fail waiters, tell the application."""
        if self._done.is_set():
            return
        self._error = error
        self._ready.clear()
        self._done.set()
        end_with = error if isinstance(error, ClientError) else None
        closed = ClientClosedError(
            "the client is closed", code=self.close_code, reason=self.close_reason
        )
        self._requests.fail_all(closed)
        self._delivery.end_all(end_with)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._set_state(StateChange(ConnectionState.CLOSED, self.close_code, self.close_reason))

    async def _current_token(self) -> str | None:
        provider = self._token_provider
        if provider is None:
            return self._token
        token = provider()
        if inspect.isawaitable(token):
            token = await token
        return token

    # -- internals: requests -----------------------------------------------------------------

    async def _call(
        self,
        type_: str,
        payload: JSONObject | None,
        *,
        timeout: float | None,
        hook: ReplyHook | None = None,
    ) -> Envelope:
        """A request from the application: wait for the connection, then :meth:`_request`."""
        timeout = self.request_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                await self._wait_ready()
                return await self._request(type_, payload, hook=hook)
        except TimeoutError as exc:
            if isinstance(exc, RequestTimeoutError):
                raise
            raise RequestTimeoutError(f"no reply to {type_!r} within {timeout}s") from None

    async def _wait_ready(self) -> None:
        if self._ready.is_set():
            return
        if self._done.is_set() or not self._started:
            raise ClientClosedError(
                "the client is closed" if self._started else "call connect() first",
                code=self.close_code,
                reason=self.close_reason,
            )
        ready = asyncio.ensure_future(self._ready.wait())
        done = asyncio.ensure_future(self._done.wait())
        try:
            await asyncio.wait({ready, done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            done.cancel()
        if not self._ready.is_set():
            raise ClientClosedError(
                "the client is closed", code=self.close_code, reason=self.close_reason
            )

    async def _request(
        self, type_: str, payload: JSONObject | None, *, hook: ReplyHook | None = None
    ) -> Envelope:
        """Send with a fresh id on the current connection and await the reply (see
        :class:`RequestTable` for ``hook``)."""
        ws = self._ws
        if ws is None:
            raise ConnectionLostError("not connected")
        id_, future = self._requests.open(hook)
        msg: JSONObject = {"type": type_, "id": id_}
        if payload is not None:
            msg["payload"] = payload
        try:
            await self._send_text(ws, orjson.dumps(msg).decode())
            return await future
        finally:
            self._requests.discard(id_)

    async def _send_text(self, ws: ClientConnection, text: str) -> None:
        if self._on_send is not None:
            self._on_send(text)
        try:
            await ws.send(text)
        except ConnectionClosed as exc:
            raise ConnectionLostError(f"connection closed: {exc}") from None

    # -- internals: receiving ----------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        """Handle every frame of one connection in order; return when it closes."""
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    logger.warning("ignoring a binary frame (%d bytes)", len(raw))
                    continue
                try:
                    if self._on_frame is not None:
                        self._on_frame(raw)
                    self._handle(Envelope.parse(raw))
                except ValueError as exc:
                    logger.warning("ignoring a malformed frame (%s): %.200s", exc, raw)
                except Exception:
                    logger.exception("failed to handle a frame: %.200s", raw)
        except ConnectionClosed:
            pass
        finally:
            self._ready.clear()
            self._delivery.connection_lost()
            code = ws.close_code
            self._requests.fail_all(ConnectionLostError(f"connection closed ({code})"))
            for waiter in (self._welcome_waiter, self._auth_waiter):
                if waiter is not None and not waiter.done():
                    waiter.set_exception(ConnectionLostError(f"connection closed ({code})"))
                    waiter.exception()

    def _handle(self, env: Envelope) -> None:
        if self._requests.resolve(env):
            return
        if env.type == "welcome":
            if self._welcome_waiter is not None and not self._welcome_waiter.done():
                self._welcome_waiter.set_result(env)
        elif env.type == "token_expiring" and env.id is None:
            self._spawn(self._refresh_token(self._ws), "wshub-client-refresh")
        elif env.type == "authenticated" and env.id is None:
            # Right after welcome when the handshake carried the token: a join without since.
            self._delivery.user_joined(fresh=True)(env)
            if self._auth_waiter is not None and not self._auth_waiter.done():
                self._auth_waiter.set_result(env)
        self._delivery.deliver(env)

    async def _unsubscribe(self, sub: Subscription) -> None:
        self._delivery.remove(sub)
        was_active = not sub.ended
        sub._end()
        if was_active and self._ready.is_set():
            with contextlib.suppress(ConnectionLostError, ClientClosedError):
                await self._call("unsubscribe", {"channel": sub.channel}, timeout=None)

    # -- internals: keeping the connection's credentials and streams whole ---------------------

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_token(self, ws: ClientConnection | None) -> None:
        """``token_expiring``: authenticate again on this connection with a fresh token (the
        reply says ``refreshed: true``; subscriptions and streams go on as they were). Without
        a callable token there is nothing fresher to send: the server will close with 4001 and
        the reconnection is refused."""
        if self._token_provider is None:
            logger.warning("the token expires soon and no callable token was given to renew it")
            return
        try:
            async with asyncio.timeout(self.request_timeout):
                token = await self._current_token()
                if not token or ws is None or self._ws is not ws:
                    return
                d = self._delivery
                await self._request("authenticate", {"token": token}, hook=d.user_refreshed())
        except (ConnectionLostError, ClientClosedError):
            pass  # the reconnection authenticates with a fresh token anyway
        except Exception:
            logger.warning("refreshing the token failed", exc_info=True)

    def _request_fill(self, sub: Subscription | None) -> None:
        self._spawn(self._fill(self._ws, sub), "wshub-client-fill")

    async def _fill(self, ws: ClientConnection | None, sub: Subscription | None) -> None:
        """Resume a stream that jumped, on this connection, from its last contiguous offset
        (``subscribe`` again with ``since``, or for the user stream ``authenticate`` again with
        the same user's token and ``since``), then ``ping``: the replay comes right after the
        resume's reply, so it is complete when the ``pong`` is in."""
        d = self._delivery
        try:
            async with asyncio.timeout(self.request_timeout):
                if sub is None:
                    token = await self._current_token()
                    payload = d.user_fill_payload(token) if token else None
                    if payload is None or self._ws is not ws:
                        return
                    await self._request("authenticate", payload, hook=d.user_refilled())
                    await self._request("ping", None, hook=lambda _: d.user_fill_done())
                else:
                    payload = d.sub_fill_payload(sub)
                    if payload is None or self._ws is not ws:
                        return
                    await self._request("subscribe", payload, hook=d.sub_refilled(sub))
                    await self._request("ping", None, hook=lambda _: d.sub_fill_done(sub))
        except (ConnectionLostError, ClientClosedError):
            pass  # the next connection resumes from the same offset
        except Exception as exc:  # refused, timed out: hand on what is held, and say so
            logger.warning("could not fill a gap: %r", exc)
            if self._ws is ws:
                if sub is None:
                    d.user_fill_done(failed=True)
                else:
                    d.sub_fill_done(sub, failed=True)

    def _set_state(self, change: StateChange) -> None:
        self.state = change.state
        if self._on_state is not None:
            self._dispatcher.submit(self._on_state, change)


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _handshake_error(exc: InvalidStatus) -> Exception:
    """A refused handshake: 401/403 become typed errors, other 4xx a :class:`ClientError` (none is
    retried); 5xx, 408 and 429 stay as they are (retried)."""
    response = exc.response
    status = response.status_code
    detail = ""
    with contextlib.suppress(Exception):
        body = orjson.loads(response.body or b"{}")
        detail = str(body.get("error") or body.get("detail") or "")
    if status == 401:
        return AuthenticationError("auth_failed", detail or "handshake refused (HTTP 401)")
    if status == 403:
        return ForbiddenError("forbidden", detail or "handshake refused (HTTP 403)")
    if 400 <= status < 500 and status not in (408, 429):
        return ClientError(f"handshake refused (HTTP {status}) {detail}".strip())
    return exc
