"""In-process :class:`~wshub.interfaces.Presence`. Several hubs given the same
:class:`MemoryPresenceState` share it, as nodes of one cluster inside one process (tests)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["MemoryPresence", "MemoryPresenceState"]


class MemoryPresenceState:
    def __init__(self) -> None:
        # user -> {conn_id}
        self.users: dict[str, set[str]] = {}
        # channel -> user -> {conn_id}
        self.channels: dict[str, dict[str, set[str]]] = {}
        # conn_id -> node_id, so a node's entries can be removed together
        self.owner: dict[str, str] = {}
        self.nodes: list[str] = []


class MemoryPresence:
    def __init__(self, state: MemoryPresenceState | None = None) -> None:
        self._state = state or MemoryPresenceState()
        self._node = ""

    async def start(
        self, node_id: str, on_departed: Callable[[str, str], None] | None = None
    ) -> None:
        """``on_departed`` is never called: in one process, no node dies alone."""
        self._node = node_id
        self._state.nodes.append(node_id)

    async def nodes(self) -> list[str]:
        return list(self._state.nodes)

    async def close(self) -> None:
        st = self._state
        if self._node in st.nodes:
            st.nodes.remove(self._node)
        mine = {c for c, node in st.owner.items() if node == self._node}
        for conns in st.users.values():
            conns -= mine
        for users in st.channels.values():
            for conns in users.values():
                conns -= mine
        for c in mine:
            del st.owner[c]
        st.users = {u: c for u, c in st.users.items() if c}
        st.channels = {
            ch: {u: c for u, c in users.items() if c} for ch, users in st.channels.items()
        }
        st.channels = {ch: users for ch, users in st.channels.items() if users}

    async def connect(self, user_id: str, conn_id: str) -> None:
        self._state.users.setdefault(user_id, set()).add(conn_id)
        self._state.owner[conn_id] = self._node

    async def disconnect(self, user_id: str, conn_id: str) -> None:
        conns = self._state.users.get(user_id)
        if conns is not None:
            conns.discard(conn_id)
            if not conns:
                del self._state.users[user_id]
        if not any(conn_id in users.get(user_id, ()) for users in self._state.channels.values()):
            self._state.owner.pop(conn_id, None)

    async def connections(self, user_id: str) -> int:
        return len(self._state.users.get(user_id, ()))

    async def join(self, channel: str, user_id: str, conn_id: str) -> bool:
        users = self._state.channels.setdefault(channel, {})
        conns = users.setdefault(user_id, set())
        first = not conns
        conns.add(conn_id)
        self._state.owner.setdefault(conn_id, self._node)
        return first

    async def leave(self, channel: str, user_id: str, conn_id: str) -> bool:
        users = self._state.channels.get(channel)
        if not users or conn_id not in users.get(user_id, ()):
            return False
        conns = users[user_id]
        conns.discard(conn_id)
        if conns:
            return False
        del users[user_id]
        if not users:
            del self._state.channels[channel]
        return True

    async def members(self, channel: str) -> list[str]:
        return list(self._state.channels.get(channel, {}))
