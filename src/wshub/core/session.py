"""One connection's life: its identity, subscriptions, limits, and the handling of its messages."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import (
    BackendUnavailable,
    NotAuthenticated,
    ProtocolError,
    UnknownType,
)
from ..protocol import CloseCode, ErrorCode, Frame, decode, encode, now_ms
from ..types import (
    ConnectionId,
    JSONObject,
    Principal,
    StoredMessage,
    StreamPosition,
    UserId,
)
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..interfaces import Connection
    from .hub import Hub
    from .router import Route

__all__ = ["Context", "Session"]

logger = logging.getLogger("wshub.session")


class _SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Puts ``connection_id`` and ``user_id`` on every record, and in front of the message."""

    def __init__(self, session: Session) -> None:
        super().__init__(logger)
        self.session = session

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        session = self.session
        kwargs["extra"] = {"connection_id": session.id, "user_id": session.user_id}
        return f"[{session.id} user={session.user_id}] {msg}", kwargs


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
        "_floors",
        "_recovering",
        "channels",
        "conn",
        "headers",
        "hub",
        "id",
        "ip",
        "log",
        "open",
        "principal",
        "remote",
    )

    def __init__(
        self,
        hub: Hub,
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
        # Streams being caught up: live frames for them wait here, with their offsets, until the
        # replay has been sent (see Hub._catch_up).
        self._recovering: dict[str, list[tuple[int, Frame]]] = {}
        # Per stream: the offset a catch-up brought this connection to. Frames from other
        # nodes at or below it were in the replay already.
        self._floors: dict[str, int] = {}
        self._auth_timer: Any = None
        self._auth_failures = 0
        self.ip: str | None = None
        self.log = _SessionLog(self)

    # -- identity --------------------------------------------------------------------------

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
        if self.open:
            hub = self.hub
            local = hub.local
            if local.batches and self.channels:  # keep order with this turn's publications
                local.send_pending_to(self)
            if not self.conn.send(frame):
                hub._on_overflow(self)

    def send(
        self, type_: str, payload: JSONObject, *, id: str | None = None, offset: int | None = None
    ) -> None:
        """Encode and send one message to this connection only."""
        self.hub.stats.out_by_type[type_] += 1
        self.send_frame(Frame(encode(type_, payload, id=id, offset=offset)))

    def send_error(self, code: str, message: str, *, id: str | None = None) -> None:
        self.hub.stats.errors_sent += 1
        self.send("error", {"code": code, "message": message}, id=id)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", *, drain: bool = True) -> None:
        """Close the connection; the transport then calls :meth:`Hub.close_session`."""
        if not self.open:
            return
        self.open = False
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
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
        if route is hub._ping_route:  # the built-in keepalive: no payload, context or await
            stats.in_by_type[type_] += 1
            self.send("pong", {"timestamp": now_ms()}, id=msg_id)
            return None
        try:
            if route is None:
                stats.in_by_type["unknown"] += 1
                raise UnknownType(type_)
            stats.in_by_type[type_] += 1
            if self.principal is None and (
                route.requires_auth or (hub.settings.require_auth and type_ != "ping")
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
        return self._handle(route, Context(self, type_, msg_id), validated)

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

    # -- catching up a stream ------------------------------------------------------------------

    def hold_live(self, key: str) -> None:
        """From now on, live frames of stream ``key`` wait (with their offsets) for
        :meth:`replay`: a catch-up is starting."""
        self._recovering.setdefault(key, [])

    def release_live(self, key: str) -> None:
        """The catch-up of ``key`` failed: drop what was held."""
        self._recovering.pop(key, None)

    def replay(
        self,
        key: str,
        pos: StreamPosition,
        messages: Sequence[StoredMessage],
        envelope: Callable[[bytes, int], bytes],
    ) -> int:
        """Send stored ``messages``, then the live frames held meanwhile that are newer than
        ``pos``; end the catch-up. Returns the last offset sent (0 if none)."""
        last = 0
        for m in messages:
            self.send_frame(Frame(envelope(m.data, m.offset)))
            last = m.offset
        for offset, frame in self._recovering.pop(key, ()):
            if offset > pos.offset and offset > last:
                self.send_frame(frame)
                last = offset
        self._floors[key] = max(pos.offset, last)
        return last

    def forget_stream(self, key: str) -> None:
        """No longer following ``key`` (unsubscribed): drop its catch-up state and floor."""
        self._recovering.pop(key, None)
        self._floors.pop(key, None)

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
