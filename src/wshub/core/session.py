"""One connection's life: its identity, subscriptions, limits, and the handling of its messages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import (
    BackendUnavailable,
    NotAuthenticated,
    ProtocolError,
    UnknownType,
)
from ..protocol import CloseCode, ErrorCode, Frame, decode, encode, now_ms
from ..types import ConnectionId, JSONObject, Principal, UserId
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..config import Settings
    from ..interfaces import Connection
    from .hub import Hub
    from .router import Route, Router
    from .stats import HubStats

__all__ = ["Context", "Reply", "Session", "SessionHost"]


class SessionHost(Protocol):
    """What a session may ask of the hub that owns it, and nothing more."""

    settings: Settings
    stats: HubStats
    router: Router

    @property
    def ping_route(self) -> Route | None:
        """The built-in ``ping`` route (answered without a handler), unless replaced."""
        ...

    def before_send(self, session: Session) -> None:
        """Called before a frame goes to ``session`` directly: the host sends it what is queued
        for it first (this turn's channel publications), so its frames keep their order."""
        ...

    def overflowed(self, session: Session) -> None:
        """``session``'s outbound limit was hit: apply the overflow policy."""
        ...


class Reply:
    """A place in a connection's reply order, reserved when a message is handled and filled
    when its work completes (a publication's commit): replies go out in handling order even
    when later messages are answered first."""

    __slots__ = ("frames", "ready")

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.ready = False


logger = logging.getLogger("wshub.session")


class _SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Puts ``connection_id`` and ``user_id`` on every record, and in front of the message."""

    def __init__(self, session: Session) -> None:
        super().__init__(logger)
        self.session = session

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        session = self.session
        user = session.user_id
        if user is not None and not user.isprintable():
            user = UserId(repr(user))  # a token's sub with a newline must not forge log lines
        kwargs["extra"] = {"connection_id": session.id, "user_id": user}
        return f"[{session.id} user={user}] {msg}", kwargs


class Session:
    """The hub's side of one connection.

    Transports create it through :meth:`Hub.open_session`, feed it every client frame with
    :meth:`receive` (awaited, one at a time, so a connection's messages are handled in order), and
    end it with :meth:`Hub.close_session`. Everything a session sends goes through its
    :class:`~wshub.interfaces.Connection`, which never blocks.
    """

    __slots__ = (
        "__weakref__",
        "_auth_failures",
        "_auth_timer",
        "_bucket",
        "_drained",
        "_log",
        "_replies",
        "_stored",
        "channels",
        "conn",
        "headers",
        "hub",
        "id",
        "ip",
        "open",
        "principal",
        "remote",
    )

    def __init__(
        self,
        hub: Hub,  # the application's handle (ctx.hub); the session itself uses SessionHost
        conn: Connection,
        *,
        id: ConnectionId,
        remote: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.hub = hub
        self.conn = conn
        self.id = id
        self.remote = remote
        self.headers = headers or {}
        self.principal: Principal | None = None
        self.channels: set[str] = set()
        self.open = True
        settings = hub.settings
        self._bucket = TokenBucket(settings.rate_limit, settings.rate_burst)
        # Replies in handling order, while some of them wait for their work (see Reply).
        self._replies: deque[Reply] | None = None
        # The byte budget for what this connection has stored (made on first use).
        self._stored: TokenBucket | None = None
        self._drained: asyncio.Future[None] | None = None
        self._auth_timer: asyncio.TimerHandle | None = None
        self._auth_failures = 0
        self.ip: str | None = None
        self._log: _SessionLog | None = None  # made on first use: most connections log nothing

    # -- identity --------------------------------------------------------------------------

    @property
    def log(self) -> _SessionLog:
        """This connection's logger: every line names the connection and the user."""
        log = self._log
        if log is None:
            log = self._log = _SessionLog(self)
        return log

    @property
    def user_id(self) -> UserId | None:
        return self.principal.user_id if self.principal else None

    @property
    def is_open(self) -> bool:
        """Whether frames sent now can still reach the client (the seed's ``isSocketOpen``)."""
        return self.open

    def __repr__(self) -> str:
        return f"<Session {self.id} user={self.user_id} open={self.open}>"

    # -- sending ---------------------------------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        """Send one frame now (not a reply: it does not wait behind pending replies)."""
        if self.open:
            host = self.hub
            if self.channels:  # keep order with this turn's publications
                host.before_send(self)
            if not self.conn.send(frame):
                host.overflowed(self)

    def send(
        self, type_: str, payload: JSONObject, *, id: str | None = None, offset: int | None = None
    ) -> None:
        """Encode and send one reply to this connection only, behind the replies still pending."""
        self.hub.stats.out_by_type[type_] += 1
        frame = Frame(encode(type_, payload, id=id, offset=offset))
        if self._replies:
            reply = self.reserve()
            reply.frames.append(frame)
            reply.ready = True
        else:
            self.send_frame(frame)

    def reserve(self) -> Reply:
        """Reserve the next place in the reply order; :meth:`fill` it later."""
        reply = Reply()
        if self._replies is None:
            self._replies = deque()
        self._replies.append(reply)
        return reply

    def fill(self, reply: Reply, *frames: Frame) -> None:
        """``reply``'s frames are ready: send them, and every ready reply behind them, in
        order, as soon as the replies before them are out."""
        reply.frames.extend(frames)
        reply.ready = True
        replies = self._replies
        while replies and replies[0].ready:
            for frame in replies.popleft().frames:
                self.send_frame(frame)
        if not replies:
            self._replies = None
            drained = self._drained
            if drained is not None:
                self._drained = None
                if not drained.done():
                    drained.set_result(None)

    async def _after_replies(self, pending: Coroutine[Any, Any, None]) -> None:
        """Run ``pending`` (a handler) once every reply before it is out: a message that is not
        pipelined sees the effects of the messages handled before it."""
        try:
            while self._replies and self.open:
                if self._drained is None:
                    self._drained = asyncio.get_running_loop().create_future()
                await self._drained
        except BaseException:
            pending.close()
            raise
        if self.open:
            await pending
        else:
            pending.close()

    def detach(self) -> None:
        """The hub forgot this connection (its transport closed): nothing more goes out, and a
        handler waiting for earlier replies gives up."""
        self.open = False
        self.disarm_auth_deadline()
        self._replies = None
        drained = self._drained
        if drained is not None:
            self._drained = None
            if not drained.done():
                drained.set_result(None)

    def arm_auth_deadline(self, seconds: float, expired: Callable[[Session], None]) -> None:
        """Call ``expired(self)`` after ``seconds`` unless :meth:`disarm_auth_deadline` first."""
        self.disarm_auth_deadline()
        self._auth_timer = asyncio.get_running_loop().call_later(seconds, expired, self)

    def disarm_auth_deadline(self) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None

    def send_error(self, code: str, message: str, *, id: str | None = None) -> None:
        self.hub.stats.errors_sent += 1
        self.send("error", {"code": code, "message": message}, id=id)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", *, drain: bool = True) -> None:
        """Close the connection; the transport then calls :meth:`Hub.close_session`."""
        if not self.open:
            return
        self.open = False
        self.disarm_auth_deadline()
        self.conn.close(code, reason, drain=drain)

    # -- receiving -------------------------------------------------------------------------

    async def receive(self, raw: str | bytes) -> None:
        """Handle one client text frame. Never raises: every problem becomes an ``error`` frame."""
        pending = self.receive_nowait(raw)
        if pending is not None:
            await pending

    def receive_nowait(self, raw: str | bytes) -> Coroutine[Any, Any, None] | None:
        """The synchronous part of :meth:`receive`: decode, limits, routing, validation, and
        the built-in ``ping`` and every error answered at once. Returns the coroutine that runs
        the message's handler, or ``None`` when nothing is left to await. Never raises."""
        if not self.open:
            return None
        hub = self.hub
        stats = hub.stats
        stats.messages_in += 1
        try:
            incoming = decode(raw)
        except ProtocolError as exc:
            # Every frame costs a token, valid or not, so garbage cannot flood past the limit.
            msg_id = getattr(exc, "id", None)
            if self._bucket.take():
                self.send_error(exc.code, exc.message, id=msg_id)
            else:
                self._rate_limited(msg_id)
            return None
        type_, payload, msg_id = incoming
        if not self._bucket.take():
            self._rate_limited(msg_id)
            return None
        route = hub.router.get(type_)
        if route is hub.ping_route:  # the built-in keepalive: no payload, context or await
            stats.in_by_type[type_] += 1
            self.send("pong", {"timestamp": now_ms()}, id=msg_id)
            return None
        try:
            if route is None:
                stats.in_by_type["unknown"] += 1
                raise UnknownType(type_)
            stats.in_by_type[type_] += 1
            if self.principal is None and (
                route.requires_auth
                or (hub.settings.require_auth and type_ not in ("ping", "authenticate"))
            ):
                raise NotAuthenticated(f"Authenticate before sending {type_!r}")
            validated = route.validate(payload)
        except ProtocolError as exc:
            self.send_error(exc.code, exc.message, id=msg_id)
            return None
        except Exception:
            self.log.exception("failed before the handler")
            self.send_error(ErrorCode.INTERNAL_ERROR, "Internal server error", id=msg_id)
            return None
        handling = self._handle(route, Context(self, type_, msg_id), validated)
        if self._replies and not route.pipelined:
            return self._after_replies(handling)
        return handling

    def may_store(self, size: int) -> bool:
        """Whether ``size`` more bytes may be stored on this connection's behalf now
        (``WS_STORE_RATE`` / ``WS_STORE_BURST``); spends them when yes."""
        settings = self.hub.settings
        if not settings.store_rate:
            return True
        bucket = self._stored
        if bucket is None:
            bucket = self._stored = TokenBucket(settings.store_rate, settings.store_burst)
        return bucket.spend(size)

    def charge(self) -> bool:
        """Charge one token of this connection's rate limit for work that is not a message
        (a control frame, a fragment): ``True`` while within the limit. Past it the frame is
        not worth answering; once abuse persists the connection is closed with 1008 (and
        ``False`` is returned too)."""
        if self._bucket.take():
            return True
        if self._bucket.abusive and self.open:
            self.log.warning("closing: persistent rate-limit abuse (control frames)")
            self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded", drain=False)
        return False

    def _rate_limited(self, msg_id: str | None) -> None:
        """A message over the rate limit: an error, or the connection closed for abuse."""
        if self._bucket.abusive:
            self.log.warning("closing: persistent rate-limit abuse")
            self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded", drain=True)
            return
        self.hub.stats.rate_limited += 1
        self.send_error(
            ErrorCode.RATE_LIMITED,
            f"More than {self.hub.settings.rate_limit:g} messages per second; slow down",
            id=msg_id,
        )

    async def _handle(self, route: Route, ctx: Context, payload: BaseModel) -> None:
        hub = self.hub
        started = time.perf_counter()
        try:
            await route.handler(ctx, payload)
        except ProtocolError as exc:
            self.send_error(exc.code, exc.message, id=ctx.id)
        except BackendUnavailable as exc:
            hub.stats.backend_errors += 1
            self.log.warning("backend unavailable: %s", exc)
            self.send_error(ErrorCode.INTERNAL_ERROR, "Service temporarily unavailable", id=ctx.id)
        except Exception:
            self.log.exception("handler failed")
            self.send_error(ErrorCode.INTERNAL_ERROR, "Internal server error", id=ctx.id)
        finally:
            hub.stats.observe_handler(time.perf_counter() - started)

    def auth_failed(self) -> None:
        """Count a failed ``authenticate``; past ``WS_MAX_AUTH_ATTEMPTS`` the connection closes."""
        self._auth_failures += 1
        if self._auth_failures >= self.hub.settings.max_auth_attempts:
            self.log.warning("closing: too many failed authentication attempts")
            self.close(CloseCode.POLICY_VIOLATION, "too many failed authentication attempts")

    def receive_binary(self) -> None:
        """Binary frames are not part of protocol v1: answer with an error, keep the connection."""
        if self._bucket.take():
            self.send_error(
                ErrorCode.INVALID_MESSAGE, "Binary frames are not supported; send JSON text"
            )
        elif self._bucket.abusive:
            self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")


class Context:
    """What a handler gets besides its payload: the session, the hub, and a way to reply."""

    __slots__ = ("id", "session", "type")

    def __init__(self, session: Session, type_: str, id: str | None) -> None:
        self.session = session
        self.type = type_
        self.id = id

    @property
    def hub(self) -> Hub:
        return self.session.hub

    @property
    def principal(self) -> Principal | None:
        return self.session.principal

    @property
    def user_id(self) -> UserId | None:
        return self.session.user_id

    def reply(self, type_: str, payload: JSONObject) -> None:
        """Send a direct reply to this message; it carries the client's ``id``."""
        self.session.send(type_, payload, id=self.id)
