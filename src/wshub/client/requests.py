"""Requests awaiting their reply, by ``id``. No I/O: the client sends, this matches replies."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable

from .errors import ClientError, server_error
from .models import Envelope

__all__ = ["ReplyHook", "RequestTable"]

#: Runs in the reader when a request's (non-error) reply arrives, before any later frame is
#: handled: the place to update state that the frames right after the reply depend on.
ReplyHook = Callable[[Envelope], None]


class RequestTable:
    """Hands out request ids and resolves each request's future with the reply carrying its id.

    Ids are ``<random prefix>-<n>``, so they do not collide with ids an application (or a person
    typing JSON into ``wshub client``) chooses on the same connection.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(3)
        self._ids = itertools.count(1)
        self._pending: dict[str, tuple[asyncio.Future[Envelope], ReplyHook | None]] = {}

    def open(self, hook: ReplyHook | None = None) -> tuple[str, asyncio.Future[Envelope]]:
        """A new request: its id and the future its reply will resolve."""
        id_ = f"{self._prefix}-{next(self._ids)}"
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending[id_] = (future, hook)
        return id_, future

    def discard(self, id_: str) -> None:
        """Forget a request (answered, timed out or abandoned); a late reply is then unsolicited."""
        self._pending.pop(id_, None)

    def resolve(self, env: Envelope) -> bool:
        """If ``env`` answers a pending request: run its hook (not for ``error``), resolve its
        future (``error``: with the typed :class:`ServerError`) and return True."""
        if env.id is None:
            return False
        entry = self._pending.pop(env.id, None)
        if entry is None:
            return False
        future, hook = entry
        if future.done():
            return True
        if env.type == "error":
            future.set_exception(server_error(env.payload, id=env.id))
            return True
        if hook is not None:
            hook(env)
        future.set_result(env)
        return True

    def fail_all(self, error: ClientError) -> None:
        """Fail every pending request with ``error`` (the connection is gone)."""
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: no warning when the requester already left
