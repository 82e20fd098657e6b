"""What the native connections of one hub share: :class:`NativeServer`.

One ``call_soon`` per loop turn flushes every connection that queued frames during it (one
``transport.write`` each), and one timer pings them all each ``WS_HEARTBEAT_INTERVAL``. Each
:class:`~wshub.transport.protocol.HubProtocol` class is bound to a server
(:func:`~wshub.transport.protocol.protocol_for`), or finds it by path (``register``).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING

from ..core.hub import Hub

if TYPE_CHECKING:
    from .protocol import HubProtocol

__all__ = ["NativeServer"]


class NativeServer:
    """The flushing and the heartbeat of one hub's native connections."""

    __slots__ = ("_beat", "_pending", "_scheduled", "connections", "hub")

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        #: Open connections, pinged by the heartbeat.
        self.connections: weakref.WeakSet[HubProtocol] = weakref.WeakSet()
        self._pending: list[HubProtocol] = []
        self._scheduled = False
        self._beat: asyncio.Task[None] | None = None

    # -- flushing ------------------------------------------------------------------------------

    def flush_soon(self, conn: HubProtocol, loop: asyncio.AbstractEventLoop) -> None:
        """Flush ``conn`` at the end of this loop turn, with every other connection that
        queued frames during it (instead of one ``call_soon`` per connection)."""
        self._pending.append(conn)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for conn in pending:
            conn._flush()

    # -- heartbeat -----------------------------------------------------------------------------

    def add(self, conn: HubProtocol) -> None:
        """An open connection: pinged from now on (the heartbeat starts with the first)."""
        self.connections.add(conn)
        if self._beat is None or self._beat.done():
            self._beat = asyncio.get_running_loop().create_task(self._heartbeat())

    def discard(self, conn: HubProtocol) -> None:
        self.connections.discard(conn)

    async def _heartbeat(self) -> None:
        """A ping each ``WS_HEARTBEAT_INTERVAL``; a connection that has not answered the
        previous one is terminated (:meth:`HubProtocol.ping`). Stops with the last connection."""
        interval = self.hub.settings.heartbeat_interval / 1000
        while self.connections:
            await asyncio.sleep(interval)
            for conn in list(self.connections):
                conn.ping()
