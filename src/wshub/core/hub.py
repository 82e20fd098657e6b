"""The hub: who is connected, who listens to what, and getting every message to the right sockets.

The hub never awaits a client. Fan-out encodes a message once into a :class:`Frame` and hands it
to each connection's non-blocking ``send``; the transport behind it writes when it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel

from ..config import Settings
from ..errors import (
    NOT_STARTED,
    AuthFailed,
    BackendUnavailable,
    Forbidden,
    HubNotStarted,
    InvalidMessage,
    MessageTooLarge,
    RateLimited,
)
from ..interfaces import (
    Append,
    Authenticator,
    Broker,
    ChannelHook,
    Connection,
    Presence,
    Retention,
    Store,
)
from ..protocol import RESERVED_TYPES, CloseCode, ErrorCode, Frame, encode, now_ms
from ..types import JSON, ConnectionId, JSONObject, Principal, StoredMessage, StreamPosition, UserId
from .commit import GroupCommit
from .delivery import StreamState, StreamTable
from .expiry import TokenDeadlines
from .fanout import LocalFanout
from .permissions import ChannelKind, channel_kind
from .policy import ChannelPolicy
from .recovery import read_gap
from .router import Handler, Route, Router
from .session import Session
from .stats import HubStats
from .streams import (
    StreamKey,
    StreamKind,
    channel_stream,
    pack,
    parse_topic,
    unpack,
    user_stream,
)

__all__ = ["Delivery", "Hub", "HubStats", "OverflowPolicy"]

logger = logging.getLogger("wshub.hub")

H = TypeVar("H", bound=Handler)
OverflowPolicy = Literal["disconnect", "drop"]

BROADCAST_TOPIC = "*"
#: Hub-to-hub commands (a user disconnected or revoked), received by every node.
CONTROL_TOPIC = "ctl"
#: The handshake headers a session keeps (``Session.headers``), for the application's hooks.
SESSION_HEADERS = frozenset(
    {"origin", "user-agent", "cookie", "x-forwarded-for", "x-real-ip", "accept-language"}
)
#: Stored messages per page of a catch-up (see Hub._replay).
REPLAY_PAGE = 200
#: Features of protocol 1.1 this hub has, announced in ``welcome``.
FEATURES = ("token_refresh",)

#: Called when a hub append completes: its position and client frame, or the exception.
_Done = Callable[[StreamPosition | None, BaseException | None, Frame | None], None]


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of a message to a user: handed to a live connection, or stored for later."""

    delivered: bool
    queued: bool
    offset: int


def _dumps(value: JSONObject) -> bytes:
    """orjson.dumps, with what it cannot encode (nesting over 254 levels, integers past 64
    bits, lone surrogates) answered as the caller's mistake: ``invalid_message`` / HTTP 422."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise InvalidMessage(f"payload: cannot be encoded as JSON ({exc})") from None


def _revocation_stream(uid: UserId) -> StreamKey:
    """Where a user's revocation time is kept: the newest message of a one-message stream."""
    return StreamKey(StreamKind.REVOCATION, uid)


class _RefuseAll:
    async def authenticate(self, token: str) -> Principal:
        raise AuthFailed("Authentication is not configured on this server")


class Hub:
    """The real-time hub. One per process (per node of a cluster).

    Build it with :func:`wshub.create_hub`, which picks the store, broker and authenticator the
    settings name; the core itself chooses no implementation.

    Application code calls :meth:`send_to_user`, :meth:`notify_user`, :meth:`publish`,
    :meth:`broadcast` and :meth:`is_user_connected`, and registers its own message types with
    :meth:`on`. Transports (``wshub.asgi``) call :meth:`open_session`, :meth:`start_session` and
    :meth:`close_session`. Start and stop it with :meth:`lifespan` or ``async with hub``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        broker: Broker,
        presence: Presence,
        authenticator: Authenticator | None = None,
        overflow: OverflowPolicy = "disconnect",
    ) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.presence_registry = presence
        self.authenticator: Authenticator = authenticator or _RefuseAll()
        self.overflow: OverflowPolicy = overflow
        self.node_id = uuid.uuid4().hex[:12]
        self.router = Router()
        self.stats = HubStats()
        self.local = LocalFanout(self.stats, self._on_overflow)
        self._channels = self.local.channels
        self._users = self.local.users
        self.sessions: dict[ConnectionId, Session] = {}
        self._per_ip: dict[str, int] = {}
        #: Application message types sent to clients, for the AsyncAPI document.
        self.server_messages: dict[str, tuple[type[BaseModel], str]] = {}
        self._seq = itertools.count(1)
        # messageIds of chats: unique cluster-wide (the node id is random), cheap to make
        self._message_ids = itertools.count(1)
        self._started = False
        self._stopping = False
        self._warned_not_started = False
        # Set whenever no connection is open; drain() and tests await it.
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Broker subscribe/unsubscribe calls per topic, run one after the other, so a quick
        # unsubscribe + subscribe cannot end unsubscribed; subscribers await theirs.
        self._topic_ops: dict[str, asyncio.Task[None]] = {}
        # Which local session gets which frame of each stream, in offset order.
        self.table = StreamTable(
            deliver=self._deliver,
            read=lambda topic, since, limit: self.store.read(topic, since, limit),
            spawn=self._spawn,
        )
        # Every append goes through it: one store step per loop turn's worth of appends.
        self.commits = GroupCommit(store, started=self._appends_started)
        # Whether the store publishes each append itself, atomically (set at start).
        self._atomic = False
        # A broker that connects this node to no other: nothing to publish stream messages to.
        self._solo = bool(getattr(broker, "solo", False))
        # What welcome announces: deflate only where the native transport negotiates it.
        deflate = settings.compression == "deflate" and settings.transport == "native"
        self._features = [*FEATURES, "deflate"] if deflate else list(FEATURES)
        # Every connection's token expiry, on one timer.
        self.deadlines = TokenDeadlines(
            window=settings.token_refresh_window,
            expiring=self._token_expiring,
            expired=self._token_expired,
        )
        # Per user: the revocation time (whole seconds) read from the store, or 0 for none.
        self._revoked: dict[UserId, int] = {}
        #: Broker topics a transport handles itself (the SSE fallback's ``sse:<node id>``):
        #: topic -> called with the body of each ephemeral message (``pack(0, body)``) on it.
        self.topic_handlers: dict[str, Callable[[bytes], None]] = {}
        #: Whether handlers may start running outside a task (every backend in-process).
        self.eager = all(getattr(b, "eager_safe", True) for b in (store, broker, presence))
        s = self.settings
        self._inbox = Retention(size=s.inbox_size, ttl=s.inbox_ttl)
        self.policy = ChannelPolicy(Retention(size=s.history_size, ttl=s.history_ttl))
        for pattern, spec in s.channel_retention.items():
            self.set_retention(pattern, size=spec.size, ttl=spec.ttl)
        from .handlers import register_builtin_handlers

        register_builtin_handlers(self.router)
        # Sessions answer the built-in ping directly (unless an application replaces it).
        self._ping_route = self.router.get("ping")

    # -- what sessions may ask (SessionHost) -------------------------------------------------

    @property
    def ping_route(self) -> Route | None:
        return self._ping_route

    def before_send(self, session: Session) -> None:
        if self.local.batches:
            self.local.send_pending_to(session)

    def overflowed(self, session: Session) -> None:
        self._on_overflow(session)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        await self.store.start()
        publish_with = getattr(self.store, "publish_with", None)
        self._atomic = bool(publish_with(self.broker)) if publish_with is not None else False
        await self.presence_registry.start(self.node_id, self._announce_leave)
        await self.broker.start(self._on_broker_message, self._resync)
        await self.broker.subscribe(BROADCAST_TOPIC)
        await self.broker.subscribe(CONTROL_TOPIC)
        self._started = True
        self._stopping = False
        logger.info("hub %s started", self.node_id)

    async def stop(self, timeout: float | None = None) -> None:
        """Close every connection with 1001 (queued frames first), wait for them to go (at most
        ``WS_SHUTDOWN_TIMEOUT``), then close the broker and the store."""
        if not self._started:
            return
        self._stopping = True
        await self.drain(timeout)
        await self.commits.flush()
        await self._settle_tasks()
        await self.broker.close()
        await self.presence_registry.close()
        await self.store.close()
        self._started = False
        logger.info("hub %s stopped", self.node_id)

    async def drain(self, timeout: float | None = None) -> None:
        """Close all connections with 1001 and wait until their transports let go of them."""
        self._stopping = True
        for session in list(self.sessions.values()):
            session.close(CloseCode.GOING_AWAY, "server shutting down")
        if timeout is None:
            timeout = self.settings.shutdown_timeout / 1000
        if not await self.wait_idle(timeout):
            logger.warning("%d connection(s) still open after drain", len(self.sessions))

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no connection is open; False if ``timeout`` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def healthy(self, timeout: float = 2.0) -> dict[str, bool]:
        """Whether each backend answers now (``store``, ``broker``, ``presence``); a backend
        without a ``healthy()`` check counts as healthy."""

        async def check(backend: object) -> bool:
            probe = getattr(backend, "healthy", None)
            if probe is None:
                return True
            try:
                return bool(await asyncio.wait_for(probe(), timeout))
            except Exception:
                return False

        names = ("store", "broker", "presence")
        backends = (self.store, self.broker, self.presence_registry)
        results = await asyncio.gather(*(check(b) for b in backends))
        return dict(zip(names, results, strict=True))

    @property
    def accepting(self) -> bool:
        """False while shutting down: transports refuse new connections."""
        return self._started and not self._stopping

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Use as ``FastAPI(lifespan=hub.lifespan)`` or ``Starlette(lifespan=hub.lifespan)``."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # -- application hooks -----------------------------------------------------------------

    def on(self, type_: str, *, requires_auth: bool = False) -> Callable[[H], H]:
        """Register a handler for an application message type::

            class Typing(BaseModel):
                channel: str

            @hub.on("typing", requires_auth=True)
            async def typing(ctx: Context, payload: Typing) -> None:
                await ctx.hub.publish(payload.channel, {"typing": ctx.user_id})

        The payload is validated against the annotated model; failures answer
        ``invalid_message`` naming the field.
        """
        return self.router.on(type_, requires_auth=requires_auth)

    def describe(self, type_: str, model: type[BaseModel], summary: str = "") -> None:
        """Document a message type the application sends (``send_to_user(type_, ...)``), so it
        appears in the AsyncAPI document with its payload model."""
        self.server_messages[type_] = (model, summary or (model.__doc__ or "").strip())

    def authorize_channel(self, hook: ChannelHook) -> ChannelHook:
        """Register ``hook(principal, channel) -> bool`` (sync or async) deciding subscriptions to
        ``private-…`` channels that the credential's ``channels`` claim does not grant."""
        self.policy.add_subscribe_hook(hook)
        return hook

    def publish_policy(self, hook: ChannelHook) -> ChannelHook:
        """Replace the default publish policy (authenticated subscribers of non-private
        channels) with ``hook(principal, channel) -> bool``."""
        self.policy.set_publish_hook(hook)
        return hook

    def set_retention(
        self, pattern: str, *, size: int | None = None, ttl: float | None = None
    ) -> None:
        """History for the channel ``pattern`` names (``chat-*``: every channel starting with
        ``chat-``), instead of ``WS_HISTORY_SIZE`` / ``WS_HISTORY_TTL``. ``None`` keeps the
        default for that bound. The longest matching pattern wins."""
        self.policy.set_retention(pattern, size=size, ttl=ttl)

    def retention_for(self, channel: str) -> Retention:
        return self.policy.retention_for(channel)

    # -- application API -------------------------------------------------------------------

    async def publish(self, channel: str, data: JSON, *, sender: str | None = None) -> int:
        """Publish ``data`` on ``channel``: store it in history, deliver it to every subscriber.
        Returns the publication's offset, once it is durable. Raises
        :class:`~wshub.errors.MessageTooLarge` for more than a connection can carry."""
        body = _dumps({"channel": channel, "data": data, "timestamp": now_ms(), "from": sender})
        self._check_size(body)
        pos, _ = await self._append_now(channel_stream(channel), body, self.retention_for(channel))
        self.stats.publications += 1
        return pos.offset

    def publish_for(
        self, session: Session, channel: str, data: JSON, *, msg_id: str | None = None
    ) -> None:
        """A client's ``publish``, pipelined: queued for the next group commit, its
        ``published`` reply sent in its place in the connection's reply order once durable."""
        body = _dumps(
            {"channel": channel, "data": data, "timestamp": now_ms(), "from": session.user_id}
        )
        self._check_size(body)
        self._check_budget(session, body)
        reply = session.reserve()

        def done(pos: StreamPosition | None, exc: BaseException | None, _: Frame | None) -> None:
            if pos is None:
                session.fill(reply, self._error_frame(session, exc, msg_id))
                return
            self.stats.publications += 1
            self.stats.out_by_type["published"] += 1
            answer = {"channel": channel, "offset": pos.offset}
            session.fill(reply, Frame(encode("published", answer, id=msg_id)))

        self._append(channel_stream(channel), body, self.retention_for(channel), done)

    async def send_to_user(self, user_id: str, type_: str, payload: JSONObject) -> Delivery:
        """Send a message to every connection of a user; store it for later when none is live.

        The message joins the user's stream and carries its ``offset``."""
        if type_ in RESERVED_TYPES:
            raise ValueError(f"{type_!r} is a type the server itself sends")
        uid = UserId(user_id)
        envelope = _dumps({"type": type_, "payload": payload})
        self._check_size(envelope)
        pos, _ = await self._append_now(user_stream(uid), envelope, self._inbox)
        self.stats.user_messages += 1
        local = self.connection_count(uid)
        self.stats.out_by_type[type_] += local
        delivered = local > 0 or (
            not self._solo and await self.presence_registry.connections(uid) > 0
        )
        return Delivery(delivered=delivered, queued=not delivered, offset=pos.offset)

    def chat_for(
        self, session: Session, recipient: str, message: str, *, msg_id: str | None = None
    ) -> None:
        """A client's ``chat``, pipelined like :meth:`publish_for`; ``chat_received`` follows
        once the message is durable in the recipient's stream."""
        uid = UserId(recipient)
        message_id = f"{self.node_id}{next(self._message_ids):x}"
        timestamp = now_ms()
        envelope = _dumps(
            {
                "type": "chat",
                "payload": {
                    "messageId": message_id,
                    "from": session.user_id,
                    "message": message,
                    "timestamp": timestamp,
                },
            }
        )
        self._check_size(envelope)
        self._check_budget(session, envelope)
        reply = session.reserve()

        def answer(delivered: bool) -> Frame:
            self.stats.out_by_type["chat_received"] += 1
            body: JSONObject = {
                "messageId": message_id,
                "recipientId": recipient,
                "delivered": delivered,
                "queued": not delivered,
                "timestamp": timestamp,
            }
            return Frame(encode("chat_received", body, id=msg_id))

        async def ask_presence() -> None:
            try:
                online = await self.presence_registry.connections(uid) > 0
            except Exception as exc:
                session.fill(reply, self._error_frame(session, exc, msg_id))
                return
            session.fill(reply, answer(online))

        def done(pos: StreamPosition | None, exc: BaseException | None, _: Frame | None) -> None:
            if pos is None:
                session.fill(reply, self._error_frame(session, exc, msg_id))
                return
            self.stats.user_messages += 1
            local = self.connection_count(uid)
            self.stats.out_by_type["chat"] += local
            if local or self._solo:
                session.fill(reply, answer(local > 0))
            else:
                self._spawn(ask_presence())

        self._append(user_stream(uid), envelope, self._inbox, done)

    async def notify_user(
        self,
        user_id: str,
        title: str,
        message: str,
        type: Literal["info", "warning", "error", "success"] = "info",
        **extra: JSON,
    ) -> Delivery:
        """Send a ``notification`` (``title``, ``message``, ``type`` and any extra fields)."""
        payload: JSONObject = {**extra, "title": title, "message": message, "type": type}
        return await self.send_to_user(user_id, "notification", payload)

    async def broadcast(self, message: str) -> int:
        """Send a ``system_message`` to every connection; returns how many were local."""
        frame = Frame(encode("system_message", {"message": message, "timestamp": now_ms()}))
        count = self.local.broadcast(frame, list(self.sessions.values()))
        self.stats.out_by_type["system_message"] += count
        if not self._solo:
            await self.broker.publish(BROADCAST_TOPIC, pack(0, frame.data))
        return count

    async def disconnect_user(
        self, user_id: str, reason: str = "disconnected", *, revoke: bool = False
    ) -> int:
        """Close every connection of the user, on every node, with 4002 and ``reason``. With
        ``revoke``, every token of the user issued at or before now (in whole seconds), or
        without ``iat``, is refused from now on, on every node and after restarts (kept in the
        store). Returns how many connections the user had, cluster-wide."""
        uid = UserId(user_id)
        revoked = 0
        if revoke:
            revoked = int(time.time())
            await self._append_now(
                _revocation_stream(uid), b"%d" % revoked, Retention(size=1, ttl=None)
            )
        connections = self.connection_count(uid)
        if not self._solo:
            connections = max(connections, await self.presence_registry.connections(uid))
        command = {"op": "disconnect", "userId": uid, "reason": reason, "revoked": revoked}
        self._control(command)
        if not self._solo:
            await self.broker.publish(CONTROL_TOPIC, pack(0, orjson.dumps(command)))
        return connections

    async def is_user_connected(self, user_id: str) -> bool:
        """Whether the user has at least one live connection, on any node."""
        if self._users.get(UserId(user_id)):
            return True
        return await self.presence_registry.connections(user_id) > 0

    async def user_connections(self, user_id: str) -> int:
        """How many live connections the user has, on every node."""
        return await self.presence_registry.connections(user_id)

    def connection_count(self, user_id: str) -> int:
        """The user's live connections on this node."""
        return len(self._users.get(UserId(user_id), ()))

    def sessions_of(self, user_id: str) -> Sequence[Session]:
        """The user's live connections on this node."""
        return list(self._users.get(UserId(user_id), ()))

    async def presence(self, channel: str) -> list[UserId]:
        """Users with at least one connection subscribed to a ``presence-…`` channel."""
        return [UserId(u) for u in await self.presence_registry.members(channel)]

    async def history(
        self, channel: str, since: int = 0, limit: int | None = None
    ) -> tuple[list[JSONObject], StreamPosition]:
        """Stored publications of ``channel`` after offset ``since``, oldest first."""
        messages, pos = await self.store.read(channel_stream(channel).topic, since, limit)
        out = []
        for m in messages:
            item: JSONObject = orjson.loads(m.data)
            item["offset"] = m.offset
            out.append(item)
        return out, pos

    def channel_names(self) -> list[str]:
        return list(self._channels)

    def subscriber_count(self, channel: str) -> int:
        return len(self._channels.get(channel, ()))

    def user_ids(self) -> list[UserId]:
        return list(self._users)

    def queued_bytes(self) -> int:
        """Bytes waiting to be written to this node's clients."""
        total = 0
        for session in self.sessions.values():
            outbox = getattr(session.conn, "outbox", None)
            total += (
                outbox.pending_bytes
                if outbox is not None
                else getattr(session.conn, "pending_bytes", 0)
            )
        return total

    async def nodes(self) -> list[str]:
        """Ids of the live nodes of the cluster (just this one without a shared broker)."""
        return await self.presence_registry.nodes()

    # -- transport side --------------------------------------------------------------------

    async def verify_token(self, token: str) -> Principal:
        """Verify a credential with the configured authenticator (raises ``AuthFailed``),
        refusing one issued at or before its user's revocation (or without ``iat`` then)."""
        principal = await self.authenticator.authenticate(token)
        revoked = await self._revoked_until(principal.user_id)
        if revoked and (principal.issued_at is None or principal.issued_at < revoked + 1):
            raise AuthFailed("Token revoked")
        return principal

    async def admit(self, ip: str | None, principal: Principal | None) -> tuple[int, str] | None:
        """Whether a handshake may become a connection: ``None``, or the HTTP status and reason
        to refuse it with (shutting down, too many connections from the address or user)."""
        if not self._started:
            if not self._warned_not_started:
                self._warned_not_started = True
                logger.warning("refusing connections: %s", NOT_STARTED)
            return 503, NOT_STARTED
        if not self.accepting:
            return 503, "server is shutting down"
        settings = self.settings
        cap = settings.max_connections_per_ip
        if cap and ip is not None and self._per_ip.get(ip, 0) >= cap:
            return 429, "too many connections from this address"
        if principal is not None and not await self._user_has_room(principal.user_id):
            return 429, "too many connections for this user"
        return None

    async def _user_has_room(self, user_id: str) -> bool:
        cap = self.settings.max_connections_per_user
        return not cap or await self.presence_registry.connections(user_id) < cap

    def open_session(
        self,
        conn: Connection,
        *,
        remote: str | None = None,
        ip: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Session:
        """Register a newly accepted connection. Call :meth:`start_session` next."""
        conn_id = ConnectionId(f"{self.node_id}-{next(self._seq)}")
        if headers:  # what hooks may look at; never a credential (authorization) or the rest
            headers = {k: v for k, v in headers.items() if k in SESSION_HEADERS}
        session = Session(self, conn, id=conn_id, remote=remote, headers=headers)
        session.ip = ip
        if ip is not None:
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self.sessions[conn_id] = session
        self._idle.clear()
        self.stats.connections_opened += 1
        if self.settings.require_auth:
            session.arm_auth_deadline(self.settings.auth_timeout / 1000, self._auth_deadline)
        session.log.debug("connected from %s", remote)
        return session

    async def start_session(self, session: Session, principal: Principal | None = None) -> None:
        """Send ``welcome`` and, for a connection authenticated at the handshake, what follows
        ``authenticate``."""
        session.send(
            "welcome",
            {
                "connectionId": session.id,
                "userId": principal.user_id if principal else None,
                "heartbeatInterval": self.settings.heartbeat_interval,
                "serverTime": now_ms(),
                "protocol": 1,
                "features": self._features,
            },
        )
        if principal is not None:
            try:
                await self.authenticate_session(session, principal)
            except Forbidden as exc:
                # The user's connection cap passed at the handshake, and filled up just after
                # (another node, a concurrent handshake): not a half-authenticated connection.
                session.send_error(exc.code, exc.message)
                session.close(CloseCode.POLICY_VIOLATION, "too many connections for this user")
            except BackendUnavailable as exc:
                session.log.warning("closing: cannot authenticate now: %s", exc)
                session.close(CloseCode.TRY_AGAIN_LATER, "service temporarily unavailable")

    def close_session(self, session: Session) -> None:
        """Forget a connection whose transport has closed. Idempotent."""
        session.open = False
        if self.sessions.pop(session.id, None) is None:
            return
        ip = session.ip
        if ip is not None:
            left = self._per_ip.get(ip, 1) - 1
            if left > 0:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)
        session.detach()
        self.deadlines.disarm(session)
        for channel in list(session.channels):
            self._leave_channel(session, channel)
        uid = session.user_id
        if uid is not None:
            self._unbind_user(session, uid)
        self.stats.connections_closed += 1
        session.log.debug("disconnected")
        if not self.sessions:
            self._idle.set()

    # -- built-in operations (called by core.handlers) -------------------------------------

    async def authenticate_session(
        self,
        session: Session,
        principal: Principal,
        *,
        since: int | None = None,
        epoch: str | None = None,
        msg_id: str | None = None,
    ) -> None:
        """Bind a connection to a user and send what the user's stream holds for it:
        undelivered messages (no ``since``) or everything after ``since``.

        The connection may close during any ``await`` here; after each one nothing is
        registered for a closed connection (no user, no presence entry left behind)."""
        current = session.principal
        if current is not None:
            if current.user_id != principal.user_id:
                raise Forbidden("This connection is authenticated as another user")
            await self._refresh(session, principal, since, epoch, msg_id)
            return
        uid = principal.user_id
        if not await self._user_has_room(uid):
            raise Forbidden(
                f"Too many connections for this user ({self.settings.max_connections_per_user})"
            )
        if not session.open:
            return
        key = user_stream(uid)
        session.principal = principal
        session.disarm_auth_deadline()
        users = self._users.get(uid)
        if users is None:
            users = self._users[uid] = set()
            self._topic_op(key.topic, self.broker.subscribe)
        users.add(session)
        # Live messages from the moment the session is registered wait for the replay.
        self.table.hold(session, key)
        try:
            await self._topic_ready(key.topic)
            await self.presence_registry.connect(uid, session.id)
            if not session.open:
                # close_session ran during the awaits; its disconnect may have gone first
                self._spawn(self.presence_registry.disconnect(uid, session.id))
                return
            await self._catch_up_user(session, uid, since, epoch, msg_id)
        except BaseException:
            if session.open and session.principal is principal:
                # Told it failed, the client is not the user's live connection: it must not
                # receive the user's messages, nor count as "delivered" to, nor move the cursor.
                self._unbind_user(session, uid)
                session.principal = None
                if self.settings.require_auth:
                    session.arm_auth_deadline(
                        self.settings.auth_timeout / 1000, self._auth_deadline
                    )
            raise
        # armed after the reply, so token_expiring never comes before authenticated
        if session.open and session.principal is principal:
            self.deadlines.arm(session, principal.expires_at)

    def _unbind_user(self, session: Session, uid: UserId) -> None:
        """``session`` is no longer one of the user's connections here (closed, or its
        authentication failed half-way): out of the user's table, stream and presence."""
        key = user_stream(uid)
        self.table.drop(session, key)
        users = self._users.get(uid)
        if users is not None:
            users.discard(session)
            if not users:
                del self._users[uid]
                self._topic_op(key.topic, self.broker.unsubscribe)
                self.table.close(key)
        self._spawn(self.presence_registry.disconnect(uid, session.id))

    async def _refresh(
        self,
        session: Session,
        principal: Principal,
        since: int | None,
        epoch: str | None,
        msg_id: str | None,
    ) -> None:
        """A new token of the same user: new claims and expiry, same stream and subscriptions,
        except private ones the new token no longer allows (ended with ``unsubscribed``)."""
        session.principal = principal
        # at once: the old deadline must not close a connection whose refresh is under way
        self.deadlines.arm(session, principal.expires_at)
        for channel in sorted(session.channels):
            if channel_kind(channel) is not ChannelKind.PRIVATE:
                continue
            try:
                await self.policy.check_subscribe(principal, channel)
            except Forbidden:
                if self.unsubscribe(session, channel):
                    session.send(
                        "unsubscribed", {"channel": channel, "server": True, "reason": "forbidden"}
                    )
            if not session.open:
                return
        if since is None:
            pos = await self.store.position(user_stream(principal.user_id).topic)
            session.send(
                "authenticated", self._auth_payload(session, pos, None, refreshed=True), id=msg_id
            )
        else:  # e.g. authenticated at the handshake, now asking to resume exactly
            await self._catch_up_user(
                session, principal.user_id, since, epoch, msg_id, refreshed=True
            )

    async def _catch_up_user(
        self,
        session: Session,
        uid: UserId,
        since: int | None,
        epoch: str | None,
        msg_id: str | None,
        *,
        refreshed: bool = False,
    ) -> None:
        """Reply ``authenticated`` and send the user's stream from the delivery cursor (or from
        ``since``), holding back live messages until the replay is out."""
        key = user_stream(uid)
        self.table.hold(session, key)
        try:
            start = since if since is not None else await self.store.cursor(key.topic)
            messages, pos, recovered = await read_gap(
                self.store, key.topic, start, epoch, resuming=since is not None, limit=REPLAY_PAGE
            )
        except BaseException:
            self.table.drop(session, key)
            raise
        if not session.open:
            self.table.drop(session, key)
            return
        payload = self._auth_payload(session, pos, recovered, refreshed=refreshed)
        session.send("authenticated", payload, id=msg_id)
        await self._replay(session, key, pos, messages, cursor=True)

    async def subscribe(
        self,
        session: Session,
        channel: str,
        *,
        since: int | None = None,
        epoch: str | None = None,
        msg_id: str | None = None,
    ) -> None:
        await self.policy.check_subscribe(session.principal, channel)
        if not session.open:
            return
        key = channel_stream(channel)
        already = channel in session.channels
        if not already:
            if len(session.channels) >= self.settings.max_subscriptions:
                raise Forbidden(
                    f"Subscription limit reached ({self.settings.max_subscriptions} channels)"
                )
            subscribers = self._channels.get(channel)
            if subscribers is None:
                subscribers = self._channels[channel] = set()
                self._topic_op(key.topic, self.broker.subscribe)
            self.local.flush_channel(channel)
            subscribers.add(session)
            session.channels.add(channel)
        self.table.hold(session, key)
        try:
            # The node must hear other nodes' publications before the stream is read, or one
            # made in between would be neither replayed nor delivered.
            await self._topic_ready(key.topic)
            messages: Sequence[StoredMessage] = ()
            recovered: bool | None = None
            if since is None:
                pos = await self.store.position(key.topic)
            else:
                messages, pos, recovered = await read_gap(
                    self.store, key.topic, since, epoch, resuming=True, limit=REPLAY_PAGE
                )
        except BaseException:
            self.table.drop(session, key)
            if not already and session.open:
                self._leave_channel(session, channel)
            raise
        if not session.open:  # closed meanwhile: close_session left the channel for it
            self.table.drop(session, key)
            return
        payload: JSONObject = {"channel": channel, "offset": pos.offset, "epoch": pos.epoch}
        if recovered is not None:
            payload["recovered"] = recovered
        session.send("subscribed", payload, id=msg_id)
        if not await self._replay(session, key, pos, messages, cursor=False):
            return
        if not already and channel_kind(channel) is ChannelKind.PRESENCE:
            await self._presence_join(channel, session)

    async def _replay(
        self,
        session: Session,
        key: StreamKey,
        pos: StreamPosition,
        messages: Sequence[StoredMessage],
        *,
        cursor: bool,
    ) -> bool:
        """Send a catch-up's stored messages (read ``REPLAY_PAGE`` at a time) as the client
        takes them: after each quarter of ``WS_OUTBOX_MAX_BYTES`` (or of
        ``WS_OUTBOX_MAX_MESSAGES``) queued, wait until its queue is back under that (a backlog
        larger than the outbox would otherwise close it as a slow consumer on every resume,
        for ever). Then what arrived live meanwhile, which waits, at
        most ``WS_OUTBOX_MAX_MESSAGES`` frames: a client that cannot keep up is closed with
        1013 and resumes from where it got. ``cursor``: the user's delivery cursor follows.
        Returns False when the session went away."""
        drained = getattr(session.conn, "drained", None)
        budget = self.settings.outbox_max_bytes // 4
        frames_budget = max(1, self.settings.outbox_max_messages // 4)
        sent = queued = frames = 0
        while True:
            for m in messages:
                frame = Frame(key.frame_data(m.data, m.offset))
                if (
                    drained is not None
                    and queued
                    and (queued + len(frame.data) > budget or frames >= frames_budget)
                ):
                    if cursor:
                        self.commits.advance_cursor(key.topic, sent)
                    await drained(budget)
                    if not self._replay_goes_on(session, key):
                        return False
                    queued = frames = 0
                session.send_frame(frame)
                sent = m.offset
                queued += len(frame.data)
                frames += 1
            if len(messages) < REPLAY_PAGE:
                break
            try:
                messages, _ = await self.store.read(key.topic, sent, REPLAY_PAGE)
            except BaseException:
                self.table.drop(session, key)
                raise
            if not self._replay_goes_on(session, key):
                return False
        last = self.table.release(session, key, pos, (), session.send_frame, sent=sent)
        if cursor and last:
            self.commits.advance_cursor(key.topic, last)
        return True

    def _replay_goes_on(self, session: Session, key: StreamKey) -> bool:
        if not session.open:
            self.table.drop(session, key)
            return False
        if self.table.held_for(session, key) > self.settings.outbox_max_messages:
            self.table.drop(session, key)
            session.log.warning("closing: live messages outran its replay")
            session.close(CloseCode.TRY_AGAIN_LATER, "replay too slow", drain=False)
            return False
        return True

    def unsubscribe(self, session: Session, channel: str) -> bool:
        """Remove a subscription; False when the connection was not subscribed."""
        if channel not in session.channels:
            return False
        self._leave_channel(session, channel)
        return True

    async def check_publish(self, session: Session, channel: str) -> None:
        await self.policy.check_publish(
            session.principal, channel, subscribed=channel in session.channels
        )

    # -- internals -------------------------------------------------------------------------

    def _channel_event(self, channel: str, type_: str, payload: JSONObject) -> None:
        """An ephemeral frame (no offset, not stored) to every subscriber of ``channel``."""
        frame = Frame(encode(type_, payload))
        for s in list(self._channels.get(channel, ())):
            s.send_frame(frame)
        if not self._solo:
            self._spawn(self.broker.publish(channel_stream(channel).topic, pack(0, frame.data)))

    def _leave_channel(self, session: Session, channel: str) -> None:
        self.local.flush_channel(channel)
        session.channels.discard(channel)
        key = channel_stream(channel)
        self.table.drop(session, key)
        subscribers = self._channels.get(channel)
        if subscribers is not None:
            subscribers.discard(session)
            if not subscribers:
                del self._channels[channel]
                self._topic_op(key.topic, self.broker.unsubscribe)
                self.table.close(key)
        if channel_kind(channel) is ChannelKind.PRESENCE and session.user_id is not None:
            self._spawn(self._presence_leave(channel, session.user_id, session.id))

    async def _presence_join(self, channel: str, session: Session) -> None:
        uid = session.user_id
        if uid is None or not await self.presence_registry.join(channel, uid, session.id):
            return
        if session.open and channel in session.channels:
            self._channel_event(channel, "presence_join", {"channel": channel, "userId": uid})
        else:  # left (or closed) while joining: its leave may have run before the join
            await self._presence_leave(channel, uid, session.id)

    async def _presence_leave(self, channel: str, uid: UserId, conn_id: str) -> None:
        if await self.presence_registry.leave(channel, uid, conn_id):
            self._announce_leave(channel, uid)

    def _announce_leave(self, channel: str, user_id: str) -> None:
        """``presence_leave`` to the channel's subscribers on every node: after a user's last
        ``leave``, or when the presence registry reports a member gone with a dead node (once,
        cluster-wide, to the node whose heartbeat removed it)."""
        self._channel_event(channel, "presence_leave", {"channel": channel, "userId": user_id})

    def _auth_payload(
        self,
        session: Session,
        pos: StreamPosition,
        recovered: bool | None,
        *,
        refreshed: bool = False,
    ) -> JSONObject:
        payload: JSONObject = {
            "userId": session.user_id,
            "connectionId": session.id,
            "offset": pos.offset,
            "epoch": pos.epoch,
        }
        if recovered is not None:
            payload["recovered"] = recovered
        if refreshed:
            payload["refreshed"] = True
        return payload

    def _on_overflow(self, session: Session) -> None:
        self.stats.overflows += 1
        if self.overflow == "drop":
            self.stats.dropped += 1
            return
        session.log.warning("closing slow consumer: outbound queue full")
        session.close(CloseCode.TRY_AGAIN_LATER, "slow consumer", drain=False)

    def _check_size(self, body: bytes) -> None:
        """A message no connection could take (its frame over the outbound limit) is refused
        before it is stored: stored, it would close its recipients as slow consumers on every
        delivery, and nothing after it in a user's stream would ever arrive."""
        limit = self.settings.outbox_max_bytes - 128  # the envelope's fields and frame header
        if len(body) > limit:
            raise MessageTooLarge(
                f"message is {len(body)} bytes; a connection carries at most {limit}"
                " (WS_OUTBOX_MAX_BYTES)"
            )

    def _check_budget(self, session: Session, body: bytes) -> None:
        """What a connection has stored is bounded (``WS_STORE_RATE``): past it, refused."""
        if not session.may_store(len(body)):
            self.stats.rate_limited += 1
            raise RateLimited(
                f"Storing more than {self.settings.store_rate} bytes per second for this "
                "connection; slow down"
            )

    def _token_expiring(self, session: Session, expires_at: float) -> None:
        if session.open:
            session.send("token_expiring", {"expiresAt": int(expires_at * 1000)})

    def _token_expired(self, session: Session) -> None:
        if session.open:
            session.log.info("closing: token expired")
            session.close(CloseCode.TOKEN_EXPIRED, "token expired")

    async def _revoked_until(self, uid: UserId) -> int:
        """The user's revocation time (whole seconds), 0 for none: from this node's cache, kept
        up to date by other nodes' commands, else from the store."""
        known = self._revoked.get(uid)
        if known is not None:
            return known
        messages, _ = await self.store.read(_revocation_stream(uid).topic, 0)
        revoked = int(messages[-1].data) if messages else 0
        if len(self._revoked) > 100_000:  # a cache: users who come back are read again
            self._revoked.clear()
        self._revoked[uid] = revoked
        return revoked

    def _control(self, command: JSONObject) -> None:
        """A hub-to-hub command, from this node or another."""
        if command.get("op") != "disconnect" or not isinstance(command.get("userId"), str):
            logger.warning("ignoring an unknown hub command")
            return
        uid = UserId(command["userId"])
        revoked = command.get("revoked")
        if isinstance(revoked, int) and revoked > self._revoked.get(uid, 0):
            self._revoked[uid] = revoked
        reason = str(command.get("reason") or "disconnected")[:120]
        for session in self.sessions_of(uid):
            session.log.info("closing: disconnected by the server (%s)", reason)
            session.close(CloseCode.DISCONNECTED, reason)

    def _resync(self) -> None:
        """The broker lost messages: read the streams again, forget cached revocations."""
        self._revoked.clear()
        self.table.resync()

    def _auth_deadline(self, session: Session) -> None:
        if session.principal is None and session.open:
            session.log.info("closing: not authenticated in time")
            session.close(CloseCode.POLICY_VIOLATION, "authentication required")

    def _error_frame(
        self, session: Session, exc: BaseException | None, msg_id: str | None
    ) -> Frame:
        """The ``error`` reply for a pipelined message whose work failed."""
        self.stats.errors_sent += 1
        self.stats.out_by_type["error"] += 1
        if isinstance(exc, BackendUnavailable):
            self.stats.backend_errors += 1
            session.log.warning("backend unavailable: %s", exc)
            body = {"code": ErrorCode.INTERNAL_ERROR, "message": "Service temporarily unavailable"}
        else:
            session.log.error("append failed", exc_info=exc)
            body = {"code": ErrorCode.INTERNAL_ERROR, "message": "Internal server error"}
        return Frame(encode("error", body, id=msg_id))

    # -- appends and delivery --------------------------------------------------------------

    def _append(self, key: StreamKey, body: bytes, retention: Retention, done: _Done) -> None:
        """Queue ``body`` for ``key``'s stream in the next group commit. Once durable it is
        delivered here (in offset order), published to the other nodes, and ``done`` is told."""
        if not self._started:
            raise HubNotStarted()
        topic = key.topic
        # Who tells the other nodes: the store in the same step, or this node after the commit
        # (a revocation is bookkeeping: nobody listens to it).
        published = key.kind is not StreamKind.REVOCATION and not self._solo
        by_store = published and self._atomic
        after_commit = published and not self._atomic

        def committed(pos: StreamPosition | None, exc: BaseException | None) -> None:
            if pos is None:
                self.table.committed(topic, 0, None)
                done(None, exc, None)
                return
            frame = Frame(key.frame_data(body, pos.offset))
            self.table.committed(topic, pos.offset, frame)
            if after_commit:
                self._spawn(self.broker.publish(topic, pack(pos.offset, body)))
            done(pos, None, frame)

        self.commits.append(Append(topic, body, retention, topic if by_store else None), committed)

    async def _append_now(
        self, key: StreamKey, body: bytes, retention: Retention
    ) -> tuple[StreamPosition, Frame]:
        future: asyncio.Future[tuple[StreamPosition, Frame]] = (
            asyncio.get_running_loop().create_future()
        )

        def done(
            pos: StreamPosition | None, exc: BaseException | None, frame: Frame | None
        ) -> None:
            if future.done():
                return
            if pos is None or frame is None:
                future.set_exception(exc or BackendUnavailable("append failed"))
            else:
                future.set_result((pos, frame))

        self._append(key, body, retention, done)
        return await future

    def _appends_started(self, appends: list[Append]) -> None:
        table = self.table
        for item in appends:
            table.submitted(item.stream)

    def _deliver(self, state: StreamState, offset: int, frame: Frame) -> None:
        """Hand one frame of a stream to this node's listeners (the table calls it in offset
        order); a user's delivery cursor follows what a live connection was handed."""
        if state.key.is_channel:
            self.stats.out_by_type["message"] += self.local.fanout(state, offset, frame)
        elif self.local.deliver_user(state, offset, frame):
            self.commits.advance_cursor(state.key.topic, offset)

    def _on_broker_message(self, topic: str, data: bytes) -> None:
        """A message published by another node (or by the store for this one)."""
        try:
            offset, body = unpack(data)
        except ValueError:
            logger.warning("dropping a malformed broker message on %r", topic)
            return
        if topic == BROADCAST_TOPIC:
            self.local.broadcast(Frame(body), list(self.sessions.values()))
            return
        if topic == CONTROL_TOPIC:
            try:
                command = orjson.loads(body)
            except orjson.JSONDecodeError:
                command = None
            if isinstance(command, dict):
                self._control(command)
            return
        if offset:
            state = self.table.get(topic)
            if state is not None:
                self.table.received(topic, offset, Frame(state.key.frame_data(body, offset)))
            return
        handler = self.topic_handlers.get(topic)
        if handler is not None:
            handler(body)
            return
        key = parse_topic(topic)  # an ephemeral channel event (presence)
        if key is not None and key.is_channel:
            frame = Frame(body)
            for s in list(self._channels.get(key.name, ())):
                s.send_frame(frame)

    def _topic_op(self, topic: str, operation: Callable[[str], Awaitable[None]]) -> None:
        previous = self._topic_ops.get(topic)

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await operation(topic)

        task = asyncio.ensure_future(run())
        self._topic_ops[topic] = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        task.add_done_callback(partial(self._topic_op_done, topic))

    def _topic_op_done(self, topic: str, task: asyncio.Task[None]) -> None:
        if self._topic_ops.get(topic) is task:
            del self._topic_ops[topic]

    async def _topic_ready(self, topic: str) -> None:
        """Wait until the broker calls queued for ``topic`` are done (errors are logged by the
        task's own callback; a subscriber then still gets what this node publishes)."""
        task = self._topic_ops.get(topic)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def _settle_tasks(self) -> None:
        """Let background bookkeeping (presence, broker subscriptions) finish before closing."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        """Run a broker bookkeeping call in the background, keeping a reference until done."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background broker call failed", exc_info=task.exception())
