"""What plugs into the hub: small Protocols, each with the guarantees an implementation owes.

Implementations live in ``wshub.stores``, ``wshub.brokers``, ``wshub.auth`` and the transport
adapters (``wshub.asgi``); every store and broker passes the shared contract suite in
``tests/contracts/``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .types import Principal, StoredMessage, StreamPosition

if TYPE_CHECKING:
    from .protocol import Frame, FrameBatch

__all__ = [
    "Append",
    "Authenticator",
    "Broker",
    "BrokerHandler",
    "Connection",
    "Presence",
    "Retention",
    "Store",
]


@runtime_checkable
class Connection(Protocol):
    """One client connection as the hub sees it: a place to put encoded frames, and a way out.

    Guarantees an implementation owes:

    - ``send`` never blocks and never awaits the client. It queues the frame behind the frames
      queued before it and returns ``True``; it returns ``False`` without queueing when the
      connection's outbound limit would be exceeded (the hub then applies its overflow policy).
      After ``close`` it drops frames and returns ``True``.
    - ``send_batch`` is ``send`` for every frame of the batch, in order, all or none.
    - ``close`` never blocks; it is idempotent. With ``drain=True`` the frames already queued are
      written before the close frame (bounded by the implementation's own timeout); otherwise
      they are dropped.
    """

    def send(self, frame: Frame) -> bool: ...

    def send_batch(self, batch: FrameBatch) -> bool: ...

    def close(self, code: int = 1000, reason: str = "", *, drain: bool = True) -> None: ...


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a stream a store keeps: at most ``size`` messages, none older than ``ttl``.

    ``size == 0`` keeps nothing (offsets still advance); ``ttl`` in seconds, ``None`` = no limit.
    """

    size: int | None
    ttl: float | None


@dataclass(frozen=True, slots=True)
class Append:
    """One message for :meth:`Store.append_batch`: ``data`` at the end of ``stream``.

    ``topic``: when the store publishes atomically (:meth:`Store.publish_with` said yes), the
    broker topic to publish the message on, in the same step as the append, as
    ``<offset>:<data>`` (``wshub.core.streams.pack``); ``None`` publishes nothing.
    """

    stream: str
    data: bytes
    retention: Retention
    topic: str | None = None


class Store(Protocol):
    """Streams of messages with offsets, and per-stream delivery cursors.

    A stream is named by an opaque string (the hub uses one per channel and one per user).
    Guarantees:

    - ``append`` assigns offsets 1, 2, 3, ... per stream, with no gap and no repeat, also when
      several processes share the store; when it returns, the message is as durable as the
      store promises (memory: until the process exits; SQLite: committed to disk).
    - ``read`` returns messages with offset > ``since`` in offset order, together with the stream's
      position at the moment of the read; messages dropped by retention are simply absent.
    - A stream's ``epoch`` stays the same for as long as the store keeps that stream's data.
    - Cursors only move forward: ``advance_cursor`` to a lower offset is a no-op.
    - Concurrent ``append`` calls return in the order their offsets were assigned.
    - ``append_batch`` is ``append`` for every item, in order, as one step of the engine (one
      SQLite transaction, one Redis round trip): it returns one result per item, a
      :class:`StreamPosition` or the :class:`~wshub.errors.BackendUnavailable` that item failed
      with (one bad item fails alone). ``cursors`` (stream -> offset) are advanced in the same
      step, as ``advance_cursor`` would. Nothing is returned before all of it is durable.
    - ``publish_with(broker)`` returns True when this store can publish each appended message
      on ``broker`` atomically with its append (same engine): then every node subscribed to a
      stream's topic receives its messages in offset order, and the hub publishes nothing
      itself for them. A store that cannot answers False (the hub then publishes after the
      commit, and nodes close the gaps that crossing publications leave by reading).
    - Optional: ``async def healthy() -> bool`` answers whether the engine is reachable now
      (``/readyz`` asks), and ``eager_safe = False`` when calls must run inside a task of their
      own (redis-py's timeouts), which stops the native transport from starting handlers eagerly.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def append(self, stream: str, data: bytes, retention: Retention) -> StreamPosition: ...

    async def append_batch(
        self, appends: Sequence[Append], cursors: Mapping[str, int] | None = None
    ) -> list[StreamPosition | Exception]: ...

    def publish_with(self, broker: Broker) -> bool: ...

    async def read(
        self, stream: str, since: int, limit: int | None = None
    ) -> tuple[Sequence[StoredMessage], StreamPosition]: ...

    async def position(self, stream: str) -> StreamPosition: ...

    async def cursor(self, stream: str) -> int: ...

    async def advance_cursor(self, stream: str, offset: int) -> None: ...


#: Called by a broker for every message another node (or this one) published on a topic.
BrokerHandler = Callable[[str, bytes], None]


class Broker(Protocol):
    """Fan-out between hub nodes. A node delivers to its own connections itself, then publishes
    once to the broker for the others (so local delivery never waits on the network).

    Guarantees:

    - ``publish(topic, data)`` hands ``data`` to the handler of every *other* node subscribed to
      ``topic``, at most once per node, in publish order per publishing node.
    - A node only receives topics it subscribed to, except the broadcast topic ``"*"`` which
      every node receives.
    - ``subscribe`` returns once the subscription is active: what is published after it
      returns reaches this node (the hub reads history only then, so nothing falls between).
    - ``start`` registers the single handler; it is called on the event loop and must not block.
      ``on_resync`` (optional) is called after the broker lost messages it cannot replay (its
      connection broke and came back): the hub then reads what it may have missed.
    """

    async def start(
        self, handler: BrokerHandler, on_resync: Callable[[], None] | None = None
    ) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    async def subscribe(self, topic: str) -> None: ...

    async def unsubscribe(self, topic: str) -> None: ...


class Presence(Protocol):
    """Who is connected, and who is in which presence channel, across every node.

    Entries are keyed by connection (``conn_id`` is unique cluster-wide) and belong to the node
    that added them. Guarantees:

    - Reads count only entries of live nodes: a node that has not been heard from for
      ``node_ttl`` seconds (it calls nothing, its heartbeat stopped: killed, partitioned) is gone,
      and so are its entries, with nobody cleaning up by hand.
    - ``join`` returns True when the connection is the user's first in the channel, cluster-wide;
      ``leave`` returns True when it was the user's last one.
    - ``close`` removes every entry of this node.
    - Members who vanish with a dead node (no ``leave`` was called) are reported once,
      cluster-wide, to one node's ``on_departed(channel, user_id)``, so that node can tell the
      channel's subscribers.
    """

    async def start(
        self, node_id: str, on_departed: Callable[[str, str], None] | None = None
    ) -> None: ...

    async def close(self) -> None: ...

    async def connect(self, user_id: str, conn_id: str) -> None: ...

    async def disconnect(self, user_id: str, conn_id: str) -> None: ...

    async def connections(self, user_id: str) -> int: ...

    async def join(self, channel: str, user_id: str, conn_id: str) -> bool: ...

    async def leave(self, channel: str, user_id: str, conn_id: str) -> bool: ...

    async def members(self, channel: str) -> list[str]: ...

    async def nodes(self) -> list[str]: ...


class Authenticator(Protocol):
    """Turns a credential into a :class:`Principal` or raises :class:`~wshub.errors.AuthFailed`.

    Must not block the event loop (fetching keys, reading sessions: await them).
    """

    async def authenticate(self, token: str) -> Principal: ...


#: An application hook deciding whether a principal may subscribe to / publish on a channel.
ChannelHook = Callable[[Principal | None, str], bool | Awaitable[bool]]
