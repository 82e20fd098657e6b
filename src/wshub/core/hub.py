"""The hub: who is connected, who listens to what, and getting every message to the right sockets.

The hub never awaits a client. Fan-out encodes a message once into a :class:`Frame` and hands it
to each connection's non-blocking ``send``; the transport behind it writes when it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel

from ..config import Settings
from ..errors import AuthFailed, Forbidden, InvalidMessage
from ..interfaces import (
    Authenticator,
    Broker,
    ChannelHook,
    Connection,
    Presence,
    Retention,
    Store,
)
from ..protocol import RESERVED_TYPES, CloseCode, Frame, encode, now_ms, with_offset
from ..types import JSON, ConnectionId, JSONObject, Principal, StoredMessage, StreamPosition, UserId
from .fanout import LocalFanout, channel_key, message_envelope, user_key
from .permissions import ChannelKind, channel_kind
from .policy import ChannelPolicy
from .recovery import read_gap
from .router import Handler, Router
from .sequencer import Sequencer
from .session import Session
from .stats import HubStats

__all__ = ["Delivery", "Hub", "HubStats", "OverflowPolicy"]

logger = logging.getLogger("wshub.hub")

H = TypeVar("H", bound=Handler)
OverflowPolicy = Literal["disconnect", "drop"]

BROADCAST_TOPIC = "*"
_offset_header = struct.Struct("!Q")


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
        self._started = False
        self._stopping = False
        # Set whenever no connection is open; drain() and tests await it.
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Broker subscribe/unsubscribe calls per topic, run one after the other, so a quick
        # unsubscribe + subscribe cannot end unsubscribed; subscribers await theirs.
        self._topic_ops: dict[str, asyncio.Task[None]] = {}
        # Per channel: the last offset handed to local fan-out, and later ones waiting for a
        # missing earlier one (publications of several nodes can cross on the way).
        self.sequencer = Sequencer(
            deliver=self._deliver_now,
            listeners=self._listeners,
            read=lambda key, since, limit: self.store.read(key, since, limit),
            envelope=self._envelope,
            spawn=self._spawn,
        )
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

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        await self.store.start()
        await self.presence_registry.start(self.node_id, self._announce_leave)
        await self.broker.start(self._on_broker_message)
        await self.broker.subscribe(BROADCAST_TOPIC)
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
        Returns the publication's offset."""
        body = _dumps({"channel": channel, "data": data, "timestamp": now_ms(), "from": sender})
        key = channel_key(channel)
        pos = await self.store.append(key, body, self.retention_for(channel))
        frame = Frame(message_envelope(body, pos.offset))
        self.stats.publications += 1
        self.stats.out_by_type["message"] += self.sequencer.push(
            key, pos.offset, frame, remote=False
        )
        await self.broker.publish(key, _offset_header.pack(pos.offset) + frame.data)
        return pos.offset

    async def send_to_user(self, user_id: str, type_: str, payload: JSONObject) -> Delivery:
        """Send a message to every connection of a user; store it for later when none is live.

        The message joins the user's stream and carries its ``offset``."""
        if type_ in RESERVED_TYPES:
            raise ValueError(f"{type_!r} is a type the server itself sends")
        uid = UserId(user_id)
        key = user_key(uid)
        envelope = _dumps({"type": type_, "payload": payload})
        pos = await self.store.append(key, envelope, self._inbox)
        frame = Frame(with_offset(envelope, pos.offset))
        self.stats.user_messages += 1
        local = self.sequencer.push(key, pos.offset, frame, remote=False)
        self.stats.out_by_type[type_] += local
        await self.broker.publish(key, _offset_header.pack(pos.offset) + frame.data)
        if local:
            if self.sequencer.last.get(key, 0) >= pos.offset:  # handed over now, not held
                await self.store.advance_cursor(key, pos.offset)
            delivered = True
        else:  # a node holding a connection of the user delivers it (and moves the cursor)
            delivered = await self.presence_registry.connections(uid) > 0
        return Delivery(delivered=delivered, queued=not delivered, offset=pos.offset)

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
        await self.broker.publish(BROADCAST_TOPIC, _offset_header.pack(0) + frame.data)
        return count

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
        messages, pos = await self.store.read(channel_key(channel), since, limit)
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
        """Verify a credential with the configured authenticator (raises ``AuthFailed``)."""
        return await self.authenticator.authenticate(token)

    async def admit(self, ip: str | None, principal: Principal | None) -> tuple[int, str] | None:
        """Whether a handshake may become a connection: ``None``, or the HTTP status and reason
        to refuse it with (shutting down, too many connections from the address or user)."""
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
        session = Session(self, conn, id=conn_id, remote=remote, headers=headers)
        session.ip = ip
        if ip is not None:
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self.sessions[conn_id] = session
        self._idle.clear()
        self.stats.connections_opened += 1
        if self.settings.require_auth:
            loop = asyncio.get_running_loop()
            session._auth_timer = loop.call_later(
                self.settings.auth_timeout / 1000, self._auth_deadline, session
            )
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
            },
        )
        if principal is not None:
            await self.authenticate_session(session, principal)

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
        if session._auth_timer is not None:
            session._auth_timer.cancel()
            session._auth_timer = None
        for channel in list(session.channels):
            self._leave_channel(session, channel)
        uid = session.user_id
        if uid is not None:
            users = self._users.get(uid)
            if users is not None:
                users.discard(session)
                if not users:
                    del self._users[uid]
                    self._topic_op(user_key(uid), self.broker.unsubscribe)
                    self.sequencer.forget(user_key(uid))
            self._spawn(self.presence_registry.disconnect(uid, session.id))
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
        undelivered messages (no ``since``) or everything after ``since``."""
        current = session.principal
        if current is not None:
            if current.user_id != principal.user_id:
                raise AuthFailed("This connection is already authenticated as another user")
            session.principal = principal  # a refreshed token: new claims, same stream
            if since is None:
                pos = await self.store.position(user_key(principal.user_id))
                session.send("authenticated", self._auth_payload(session, pos, None), id=msg_id)
            else:  # e.g. authenticated at the handshake, now asking to resume exactly
                await self._catch_up_user(session, principal.user_id, since, epoch, msg_id)
            return
        uid = principal.user_id
        if not await self._user_has_room(uid):
            raise Forbidden(
                f"Too many connections for this user ({self.settings.max_connections_per_user})"
            )
        key = user_key(uid)
        session.principal = principal
        if session._auth_timer is not None:
            session._auth_timer.cancel()
            session._auth_timer = None
        # Live messages from the moment the session is registered wait for the replay.
        session.hold_live(key)
        users = self._users.get(uid)
        if users is None:
            users = self._users[uid] = set()
            self._topic_op(key, self.broker.subscribe)
        users.add(session)
        try:
            await self._topic_ready(key)
            await self.presence_registry.connect(uid, session.id)
        except BaseException:
            session.release_live(key)
            raise
        await self._catch_up_user(session, uid, since, epoch, msg_id)

    async def _catch_up_user(
        self,
        session: Session,
        uid: UserId,
        since: int | None,
        epoch: str | None,
        msg_id: str | None,
    ) -> None:
        """Reply ``authenticated`` and send the user's stream from the delivery cursor (or from
        ``since``), holding back live messages until the replay is out."""
        key = user_key(uid)
        session.hold_live(key)
        try:
            start = since if since is not None else await self.store.cursor(key)
            messages, pos, recovered = await read_gap(
                self.store, key, start, epoch, resuming=since is not None
            )
        except BaseException:
            session.release_live(key)
            raise
        session.send("authenticated", self._auth_payload(session, pos, recovered), id=msg_id)
        last = session.replay(key, pos, messages, with_offset)
        self.sequencer.caught_up(key, max(pos.offset, last))
        if last:
            await self.store.advance_cursor(key, last)

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
        key = channel_key(channel)
        already = channel in session.channels
        session.hold_live(key)
        if not already:
            if len(session.channels) >= self.settings.max_subscriptions:
                session.release_live(key)
                raise Forbidden(
                    f"Subscription limit reached ({self.settings.max_subscriptions} channels)"
                )
            subscribers = self._channels.get(channel)
            if subscribers is None:
                subscribers = self._channels[channel] = set()
                self._topic_op(key, self.broker.subscribe)
            self.local.flush_channel(channel)
            subscribers.add(session)
            session.channels.add(channel)
        try:
            # The node must hear other nodes' publications before the stream is read, or one
            # made in between would be neither replayed nor delivered.
            await self._topic_ready(key)
            messages: Sequence[StoredMessage] = ()
            recovered: bool | None = None
            if since is None:
                pos = await self.store.position(key)
            else:
                messages, pos, recovered = await read_gap(
                    self.store, key, since, epoch, resuming=True
                )
        except BaseException:
            session.release_live(key)
            if not already:
                self._leave_channel(session, channel)
            raise
        payload: JSONObject = {"channel": channel, "offset": pos.offset, "epoch": pos.epoch}
        if recovered is not None:
            payload["recovered"] = recovered
        self.sequencer.caught_up(key, pos.offset)
        session.send("subscribed", payload, id=msg_id)
        session.replay(key, pos, messages, message_envelope)
        if not already and channel_kind(channel) is ChannelKind.PRESENCE:
            await self._presence_join(channel, session)

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
        self._spawn(self.broker.publish(channel_key(channel), _offset_header.pack(0) + frame.data))

    def _leave_channel(self, session: Session, channel: str) -> None:
        self.local.flush_channel(channel)
        session.channels.discard(channel)
        session.forget_stream(channel_key(channel))
        subscribers = self._channels.get(channel)
        if subscribers is not None:
            subscribers.discard(session)
            if not subscribers:
                del self._channels[channel]
                self._topic_op(channel_key(channel), self.broker.unsubscribe)
                self.sequencer.forget(channel_key(channel))
        if channel_kind(channel) is ChannelKind.PRESENCE and session.user_id is not None:
            self._spawn(self._presence_leave(channel, session.user_id, session.id))

    async def _presence_join(self, channel: str, session: Session) -> None:
        uid = session.user_id
        if uid is not None and await self.presence_registry.join(channel, uid, session.id):
            self._channel_event(channel, "presence_join", {"channel": channel, "userId": uid})

    async def _presence_leave(self, channel: str, uid: UserId, conn_id: str) -> None:
        if await self.presence_registry.leave(channel, uid, conn_id):
            self._announce_leave(channel, uid)

    def _announce_leave(self, channel: str, user_id: str) -> None:
        """``presence_leave`` to the channel's subscribers on every node: after a user's last
        ``leave``, or when the presence registry reports a member gone with a dead node (once,
        cluster-wide, to the node whose heartbeat removed it)."""
        self._channel_event(channel, "presence_leave", {"channel": channel, "userId": user_id})

    def _auth_payload(
        self, session: Session, pos: StreamPosition, recovered: bool | None
    ) -> JSONObject:
        payload: JSONObject = {
            "userId": session.user_id,
            "connectionId": session.id,
            "offset": pos.offset,
            "epoch": pos.epoch,
        }
        if recovered is not None:
            payload["recovered"] = recovered
        return payload

    def _on_overflow(self, session: Session) -> None:
        self.stats.overflows += 1
        if self.overflow == "drop":
            self.stats.dropped += 1
            return
        session.log.warning("closing slow consumer: outbound queue full")
        session.close(CloseCode.TRY_AGAIN_LATER, "slow consumer", drain=False)

    def _auth_deadline(self, session: Session) -> None:
        session._auth_timer = None
        if session.principal is None and session.open:
            session.log.info("closing: not authenticated in time")
            session.close(CloseCode.POLICY_VIOLATION, "authentication required")

    def _on_broker_message(self, topic: str, data: bytes) -> None:
        """A message another node published: deliver it to this node's connections."""
        (offset,) = _offset_header.unpack_from(data)
        frame = Frame(data[_offset_header.size :])
        if topic == BROADCAST_TOPIC:
            self.local.broadcast(frame, list(self.sessions.values()))
        elif topic.startswith("c:"):
            channel = topic[2:]
            if offset:
                self.sequencer.push(topic, offset, frame, remote=True)
            else:
                for s in list(self._channels.get(channel, ())):
                    s.send_frame(frame)
        elif topic.startswith("u:"):
            self.sequencer.push(topic, offset, frame, remote=True)

    def _deliver_now(self, key: str, offset: int, frame: Frame, remote: bool) -> int:
        """Hand one frame of a stream to this node's listeners (called in offset order)."""
        if key.startswith("c:"):
            return self.local.fanout(key, key[2:], offset, frame, remote=remote)
        uid = UserId(key[2:])
        if not self.local.deliver_user(uid, key, offset, frame, remote=remote):
            return 0
        if remote:  # a local send_to_user advances the cursor itself, awaited
            self._spawn(self.store.advance_cursor(key, offset))
        return self.connection_count(uid)

    def _listeners(self, key: str) -> int:
        if key.startswith("c:"):
            return len(self._channels.get(key[2:], ()))
        return len(self._users.get(UserId(key[2:]), ()))

    @staticmethod
    def _envelope(key: str, data: bytes, offset: int) -> bytes:
        return message_envelope(data, offset) if key.startswith("c:") else with_offset(data, offset)

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
