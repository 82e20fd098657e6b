"""Closing the gap between what a client saw and what a stream holds: the rules (pure
functions) and the store read that applies them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..types import StoredMessage, StreamPosition

if TYPE_CHECKING:
    from ..interfaces import Store

__all__ = ["is_recovered", "read_gap", "replay_from"]


def replay_from(since: int, client_epoch: str | None, position: StreamPosition) -> int:
    """The offset after which to replay: ``since``, or 0 (everything kept) for another epoch."""
    if client_epoch is not None and client_epoch != position.epoch:
        return 0
    return since


def is_recovered(
    since: int,
    client_epoch: str | None,
    position: StreamPosition,
    messages: Sequence[StoredMessage],
) -> bool:
    """Whether ``messages`` (read after ``since``) close the client's gap completely.

    Not recovered when the epoch differs, when ``since`` is ahead of the stream, or when retention
    already dropped the message right after ``since``.
    """
    if client_epoch is not None and client_epoch != position.epoch:
        return False
    if since > position.offset:
        return False
    if since == position.offset:
        return True
    return bool(messages) and messages[0].offset == since + 1


async def read_gap(
    store: Store,
    key: str,
    since: int,
    epoch: str | None,
    *,
    resuming: bool,
    limit: int | None = None,
) -> tuple[Sequence[StoredMessage], StreamPosition, bool | None]:
    """What to replay of stream ``key`` for a client at ``since`` (in ``epoch``): the messages
    (the first ``limit`` of them), the stream's position, and whether they close the gap (None
    when not ``resuming``: a delivery cursor, not a client's position). Another epoch replays
    everything kept."""
    messages, pos = await store.read(key, since, limit)
    if not resuming:
        return messages, pos, None
    recovered = is_recovered(since, epoch, pos, messages)
    start = replay_from(since, epoch, pos)
    if start != since:
        messages, pos = await store.read(key, start, limit)
    return messages, pos, recovered
