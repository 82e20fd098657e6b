"""Closing the gap between what a client saw and what a stream holds. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence

from ..types import StoredMessage, StreamPosition

__all__ = ["is_recovered", "replay_from"]


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
