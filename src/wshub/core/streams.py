"""Streams by name: the typed key of a channel's or a user's stream, and the one codec for what
travels between nodes.

Every stream the hub keeps is a :class:`StreamKey`: a channel's publications or a user's own
messages. Its ``topic`` (``"c:news"``, ``"u:alice"``) is the string stores, brokers and the hub's
tables are keyed by; :func:`parse_topic` is the only place that reads one back.

Between nodes a stream message travels as ``<offset>:<body>`` (:func:`pack` / :func:`unpack`):
the stored body and its offset, so an engine that appends and publishes in one step (a Redis
script) can build it without knowing the client envelope; offset 0 is an ephemeral frame (a
presence event, a broadcast) whose body is the whole client frame.
"""

from __future__ import annotations

from enum import Enum

from ..protocol import with_offset

__all__ = [
    "StreamKey",
    "StreamKind",
    "channel_stream",
    "message_envelope",
    "pack",
    "parse_topic",
    "unpack",
    "user_stream",
]


class StreamKind(Enum):
    CHANNEL = "c"
    USER = "u"
    #: The hub's own bookkeeping per user (a revocation time): stored, never delivered.
    REVOCATION = "r"


def message_envelope(body: bytes, offset: int) -> bytes:
    """The ``message`` envelope for a stored channel publication body (see :meth:`Hub.publish`)."""
    return b'{"type":"message","payload":%s,"offset":%d}}' % (body[:-1], offset)


class StreamKey:
    """A channel's or a user's stream. Equal keys have equal ``topic`` strings."""

    __slots__ = ("kind", "name", "topic")

    def __init__(self, kind: StreamKind, name: str) -> None:
        self.kind = kind
        self.name = name
        self.topic = f"{kind.value}:{name}"

    @property
    def is_channel(self) -> bool:
        return self.kind is StreamKind.CHANNEL

    def frame_data(self, body: bytes, offset: int) -> bytes:
        """The client frame for a stored body of this stream at ``offset``."""
        if self.kind is StreamKind.CHANNEL:
            return message_envelope(body, offset)
        return with_offset(body, offset)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StreamKey) and other.topic == self.topic

    def __hash__(self) -> int:
        return hash(self.topic)

    def __repr__(self) -> str:
        return f"StreamKey({self.topic!r})"


def channel_stream(channel: str) -> StreamKey:
    return StreamKey(StreamKind.CHANNEL, channel)


def user_stream(user_id: str) -> StreamKey:
    return StreamKey(StreamKind.USER, user_id)


def parse_topic(topic: str) -> StreamKey | None:
    """The stream a broker topic names, or None for a topic that is not a stream (``"*"``)."""
    kind, sep, name = topic.partition(":")
    if not sep:
        return None
    if kind == "c":
        return StreamKey(StreamKind.CHANNEL, name)
    if kind == "u":
        return StreamKey(StreamKind.USER, name)
    return None


def pack(offset: int, body: bytes) -> bytes:
    """What a node sends other nodes for one stream message (offset 0: an ephemeral frame)."""
    return b"%d:%s" % (offset, body)


def unpack(data: bytes) -> tuple[int, bytes]:
    """``(offset, body)`` from :func:`pack`'s bytes; ValueError for anything else."""
    sep = data.index(b":")
    return int(data[:sep]), data[sep + 1 :]
