"""A :class:`~wshub.interfaces.Presence` in PostgreSQL: who is connected, cluster-wide.

Two tables in the broker's schema (created by :func:`wshub.stores.postgres.connect_pool`):

- ``presence_nodes``: node id → time of its last heartbeat (the database's clock, so the nodes'
  clocks don't matter). Each node beats every ``node_ttl / 3`` seconds.
- ``presence_entries``: one row per connection of a user (``kind = 'u'``) or per connection of a
  user in a channel (``kind = 'c'``), with the node that wrote it.

Reads count only entries of nodes whose heartbeat is younger than ``node_ttl``. The heartbeat of
any node deletes the nodes older than that with their entries (``DELETE ... RETURNING``: exactly
one transaction removes a node), and returns the (channel, user) pairs whose last live
connection went with them: only that node reports them (``on_departed``), once, cluster-wide.
``join`` and ``leave`` take a transaction-scoped advisory lock on (channel, user), so "first" and
"last" hold when nodes race.

Each node keeps its own entries in memory too. When its heartbeat finds that the cluster gave it
up (cut off for longer than ``node_ttl``) or a write failed meanwhile, it writes them again,
replacing what the table held for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from ..errors import BackendUnavailable
from ..stores.postgres import (
    PG_DOWN,
    connect_pool,
    describe,
    parse_postgres_url,
    pg_errors,
    pool_healthy,
)

__all__ = ["PostgresPresence"]

logger = logging.getLogger("wshub.presence.postgres")

#: (kind, key, user, conn): one entry of this node.
_Entry = tuple[str, str, str, str]


class PostgresPresence:
    """Cluster-wide presence in PostgreSQL (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        node_ttl: float = 10.0,
        timeout: float = 1.5,
    ) -> None:
        if node_ttl <= 0:
            raise ValueError("node_ttl must be positive")
        parsed = parse_postgres_url(url)
        self.dsn = parsed.dsn
        self.schema = schema or parsed.schema
        self.where = f"PostgreSQL presence at {describe(self.dsn)}"
        self.node_ttl = node_ttl
        self.node_id = ""
        self._timeout = timeout
        self._pool: Any = None
        self._entries: dict[_Entry, None] = {}
        self._dirty = False
        self._beating: asyncio.Task[None] | None = None
        self._on_departed: Callable[[str, str], None] | None = None
        s = f'"{self.schema}"'
        self._nodes, self._table = f"{s}.presence_nodes", f"{s}.presence_entries"
        # the entries of live nodes only
        self._live = (
            f"{self._table} e JOIN {self._nodes} n ON n.node = e.node"
            " AND n.beat >= clock_timestamp() - make_interval(secs => $1)"
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(
        self, node_id: str, on_departed: Callable[[str, str], None] | None = None
    ) -> None:
        if self._pool is not None:
            return
        self.node_id = node_id
        self._on_departed = on_departed
        self._pool = await connect_pool(
            self.dsn, self.schema, self.where, timeout=self._timeout, max_size=4
        )
        try:
            await self._beat(first=True)
        except BaseException:
            self._pool.terminate()
            self._pool = None
            raise
        self._beating = asyncio.create_task(self._beat_forever(), name="wshub-postgres-presence")

    async def close(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
            self._beating = None
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            with pg_errors(self.where):
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(f"DELETE FROM {self._table} WHERE node = $1", self.node_id)
                    await conn.execute(f"DELETE FROM {self._nodes} WHERE node = $1", self.node_id)
        except BackendUnavailable as exc:
            logger.warning("%s: could not remove this node's entries: %s", self.where, exc)
        finally:
            self._entries.clear()
            try:
                await asyncio.wait_for(pool.close(), 5)
            except PG_DOWN:  # a TimeoutError too
                pool.terminate()

    async def healthy(self) -> bool:
        return await pool_healthy(self._pool)

    # -- Presence ------------------------------------------------------------------------------

    async def connect(self, user_id: str, conn_id: str) -> None:
        await self._add(("u", user_id, user_id, conn_id))

    async def disconnect(self, user_id: str, conn_id: str) -> None:
        await self._remove(("u", user_id, user_id, conn_id))

    async def connections(self, user_id: str) -> int:
        value = await self._fetchval(
            f"SELECT count(*) FROM {self._live} WHERE e.kind = 'u' AND e.key = $2",
            self.node_ttl,
            user_id,
        )
        return int(value)

    async def join(self, channel: str, user_id: str, conn_id: str) -> bool:
        return await self._add(("c", channel, user_id, conn_id))

    async def leave(self, channel: str, user_id: str, conn_id: str) -> bool:
        return await self._remove(("c", channel, user_id, conn_id))

    async def members(self, channel: str) -> list[str]:
        pool = self._running()
        with pg_errors(self.where):
            rows = await pool.fetch(
                f"SELECT DISTINCT e.user_id FROM {self._live} WHERE e.kind = 'c' AND e.key = $2",
                self.node_ttl,
                channel,
            )
        return [str(r[0]) for r in rows]

    async def nodes(self) -> list[str]:
        pool = self._running()
        with pg_errors(self.where):
            rows = await pool.fetch(
                f"SELECT node FROM {self._nodes}"
                " WHERE beat >= clock_timestamp() - make_interval(secs => $1)",
                self.node_ttl,
            )
        return [str(r[0]) for r in rows]

    # -- internals -----------------------------------------------------------------------------

    def _running(self) -> Any:
        if self._pool is None:
            raise BackendUnavailable(f"{self.where}: presence is not started")
        return self._pool

    async def _fetchval(self, query: str, *args: Any) -> Any:
        pool = self._running()
        with pg_errors(self.where):
            return await pool.fetchval(query, *args)

    async def _add(self, entry: _Entry) -> bool:
        """Write the entry; True when the user had no live connection there before."""
        self._entries[entry] = None
        kind, key, user, conn_id = entry
        pool = self._running()
        try:
            with pg_errors(self.where):
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                        f"{self.schema}|{kind}|{len(key)}|{key}|{user}",
                    )
                    before = await conn.fetchval(
                        f"SELECT count(*) FROM {self._live} WHERE e.kind = $2 AND e.key = $3"
                        " AND e.user_id = $4",
                        self.node_ttl,
                        kind,
                        key,
                        user,
                    )
                    await conn.execute(
                        f"INSERT INTO {self._table} (node, kind, key, user_id, conn)"
                        " VALUES ($1, $2, $3, $4, $5)"
                        " ON CONFLICT (kind, key, user_id, conn) DO UPDATE SET node = $1",
                        self.node_id,
                        kind,
                        key,
                        user,
                        conn_id,
                    )
        except BackendUnavailable:
            self._dirty = True
            raise
        return int(before) == 0

    async def _remove(self, entry: _Entry) -> bool:
        """Delete the entry; True when it was the user's last live connection there."""
        self._entries.pop(entry, None)
        kind, key, user, conn_id = entry
        pool = self._running()
        try:
            with pg_errors(self.where):
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                        f"{self.schema}|{kind}|{len(key)}|{key}|{user}",
                    )
                    status = await conn.execute(
                        f"DELETE FROM {self._table} WHERE kind = $1 AND key = $2"
                        " AND user_id = $3 AND conn = $4",
                        kind,
                        key,
                        user,
                        conn_id,
                    )
                    if status == "DELETE 0":
                        return False
                    left = await conn.fetchval(
                        f"SELECT count(*) FROM {self._live} WHERE e.kind = $2 AND e.key = $3"
                        " AND e.user_id = $4",
                        self.node_ttl,
                        kind,
                        key,
                        user,
                    )
        except BackendUnavailable:
            self._dirty = True
            raise
        return int(left) == 0

    async def _beat(self, *, first: bool = False) -> None:
        """One heartbeat: sweep the dead nodes (reporting who left with them), and rewrite this
        node's entries when the cluster gave it up or a write may have been lost."""
        pool = self._running()
        with pg_errors(self.where):
            async with pool.acquire() as conn, conn.transaction():
                alive = await conn.fetchval(
                    f"SELECT beat >= clock_timestamp() - make_interval(secs => $2)"
                    f" FROM {self._nodes} WHERE node = $1",
                    self.node_id,
                    self.node_ttl,
                )
                await conn.execute(
                    f"INSERT INTO {self._nodes} (node, beat) VALUES ($1, clock_timestamp())"
                    " ON CONFLICT (node) DO UPDATE SET beat = clock_timestamp()",
                    self.node_id,
                )
                departed = await conn.fetch(
                    f"""
                    WITH dead AS (
                        DELETE FROM {self._nodes}
                        WHERE beat < clock_timestamp() - make_interval(secs => $1)
                        RETURNING node
                    ), gone AS (
                        DELETE FROM {self._table} e USING dead WHERE e.node = dead.node
                        RETURNING e.kind, e.key, e.user_id
                    )
                    SELECT DISTINCT g.key, g.user_id FROM gone g WHERE g.kind = 'c'
                    AND NOT EXISTS (
                        SELECT 1 FROM {self._live} WHERE e.kind = 'c' AND e.key = g.key
                        AND e.user_id = g.user_id
                    )
                    """,
                    self.node_ttl,
                )
                if not alive or self._dirty:
                    if not alive and not first:
                        logger.warning(
                            "%s: this node was given up; writing its entries again", self.where
                        )
                    self._dirty = False
                    entries = list(self._entries)
                    await conn.execute(f"DELETE FROM {self._table} WHERE node = $1", self.node_id)
                    await conn.execute(
                        f"INSERT INTO {self._table} (node, kind, key, user_id, conn)"
                        " SELECT $1, k, y, u, c FROM unnest($2::text[], $3::text[],"
                        " $4::text[], $5::text[]) AS t(k, y, u, c)"
                        " ON CONFLICT (kind, key, user_id, conn) DO UPDATE SET node = $1",
                        self.node_id,
                        [e[0] for e in entries],
                        [e[1] for e in entries],
                        [e[2] for e in entries],
                        [e[3] for e in entries],
                    )
        self._report_departed([(str(r[0]), str(r[1])) for r in departed])

    def _report_departed(self, departed: list[tuple[str, str]]) -> None:
        if self._on_departed is None:
            return
        for channel, user in departed:
            try:
                self._on_departed(channel, user)
            except Exception:
                logger.exception("%s: on_departed failed", self.where)

    async def _beat_forever(self) -> None:
        interval = self.node_ttl / 3
        delay = first = min(0.05, interval)
        down = False
        while True:
            try:
                await self._beat()
            except BackendUnavailable as exc:
                self._dirty = True
                if not down:
                    logger.warning("%s: heartbeat failed, retrying: %s", self.where, exc)
                down = True
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(interval, delay * 2)
                continue
            except Exception:
                logger.exception("%s: heartbeat failed", self.where)
            if down:
                logger.warning("%s: heartbeats resumed", self.where)
                down, delay = False, first
            await asyncio.sleep(interval)
