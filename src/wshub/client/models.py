"""What the client hands to the application: parsed envelopes, channel messages, gaps and
connection state changes. Plain frozen dataclasses; parsing is pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

import orjson

from ..types import JSON, JSONObject

__all__ = ["ChannelMessage", "ConnectionState", "Envelope", "Gap", "StateChange"]


@dataclass(frozen=True, slots=True)
class Envelope:
    """One server message: ``type``, ``payload`` (``{}`` when missing), the ``id`` of the request
    it answers, and ``offset`` when it belongs to the user's own stream."""

    type: str
    payload: JSONObject
    id: str | None = None
    offset: int | None = None

    @classmethod
    def parse(cls, raw: str | bytes) -> Envelope:
        """Parse a text frame. Raises ``ValueError`` when it is not a protocol v1 envelope."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        type_ = obj.get("type")
        if not isinstance(type_, str):
            raise ValueError("missing 'type'")
        payload = obj.get("payload")
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise ValueError("'payload' is not an object")
        id_ = obj.get("id")
        offset = obj.get("offset")
        return cls(
            type_,
            payload,
            id_ if isinstance(id_, str) else None,
            offset if isinstance(offset, int) and not isinstance(offset, bool) else None,
        )


@dataclass(frozen=True, slots=True)
class ChannelMessage:
    """A publication on a channel: its ``data``, its ``offset`` in the channel, when it was
    published (ms since the epoch) and by whom (``sender``: a user id, or None for the server)."""

    channel: str
    data: JSON
    offset: int
    timestamp: int | None = None
    sender: str | None = None

    @classmethod
    def from_payload(cls, payload: JSONObject) -> ChannelMessage:
        """From a ``message`` payload. Raises ``ValueError`` without ``channel`` and ``offset``."""
        channel = payload.get("channel")
        offset = payload.get("offset")
        if not isinstance(channel, str) or not isinstance(offset, int):
            raise ValueError("a message needs 'channel' and 'offset'")
        ts = payload.get("timestamp")
        sender = payload.get("from")
        return cls(
            channel,
            payload.get("data"),
            offset,
            ts if isinstance(ts, int) else None,
            sender if isinstance(sender, str) else None,
        )


@dataclass(frozen=True, slots=True)
class Gap:
    """A stream skipped offsets, or could not be resumed without loss.

    ``stream`` is ``"channel"`` (``name`` is the channel) or ``"user"`` (``name`` is the user
    id). ``since``/``epoch`` is where the client asked to resume (the last offset it had without
    a gap); ``offset``/``current_epoch`` is where the stream stands now. ``missing`` is the
    range of offsets (first, last, inclusive) known to be missing, when known.

    ``lost`` False: a jump was seen on a live stream (a ``message`` at offset 7 after 5); the
    client is resuming from ``since`` on the same connection to fill it, holds back what came
    after the gap meanwhile, and delivers everything in order. Nothing is lost unless another
    ``Gap`` with ``lost`` True follows for that stream.

    ``lost`` True: the server answered ``recovered: false`` (or its replay skipped offsets too):
    whatever it still keeps after ``since`` (all it keeps, when the epoch changed) is delivered
    all the same; anything older is lost.
    """

    stream: Literal["channel", "user"]
    name: str
    since: int
    epoch: str | None
    offset: int
    current_epoch: str
    missing: tuple[int, int] | None = None
    lost: bool = True

    @property
    def epoch_changed(self) -> bool:
        """True when the server lost the stream (a restart without a durable store, a reset)."""
        return self.epoch is not None and self.epoch != self.current_epoch


class ConnectionState(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class StateChange:
    """Passed to ``on_state``. ``code``/``reason`` describe the close that caused
    ``RECONNECTING``/``CLOSED``; ``attempt`` and ``delay`` (seconds) the next reconnect attempt."""

    state: ConnectionState
    code: int | None = None
    reason: str = ""
    attempt: int = 0
    delay: float = 0.0
