"""A :class:`~wshub.interfaces.Store` in PostgreSQL, shared by every node of a cluster.

Every table lives in one schema, the URL's ``?prefix=`` (default ``wshub``), created with its
tables and functions at start-up (``CREATE ... IF NOT EXISTS``, under an advisory lock, so nodes
starting together and restarts are harmless), so two apps can share one database:

- ``streams``: ``name``, ``top`` (offset of the latest message ever appended), ``epoch``,
  ``cursor`` (handed to a live connection up to here);
- ``messages``: ``(stream, offset)``, ``expires`` (unix time after which retention drops it),
  ``data``;
- ``meta``: the schema's epoch (every stream gets it: a dropped schema means new epochs);
- ``spill``: payloads too large for ``NOTIFY`` (see :mod:`wshub.brokers.postgres`).

Offsets come from ``UPDATE streams SET top = top + 1``: the row lock orders concurrent appends
of every node, so offsets have no gap and no repeat, and transactions touching one stream commit
in offset order. All of this node's appends go through one writer task that sends everything
queued since its last turn as **one** call of the server-side function ``append_batch`` (one
statement, one transaction, one round trip), so a burst costs one commit and results come back
in offset order. With :meth:`PostgresStore.publish_with` a :class:`PostgresBroker` on the same
database, that transaction also calls ``pg_notify`` for each message: other nodes see it only
once it is committed, in commit order.

This module also holds what the PostgreSQL broker and presence share with it: URL parsing, the
pool, migrations and the mapping of driver errors to :class:`~wshub.errors.BackendUnavailable`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from ..errors import BackendUnavailable
from ..interfaces import Append, Broker, Retention
from ..types import StoredMessage, StreamPosition

__all__ = [
    "PG_DOWN",
    "PostgresStore",
    "PostgresURL",
    "connect_pool",
    "encode_payload",
    "parse_postgres_url",
    "pg_errors",
]

logger = logging.getLogger("wshub.stores.postgres")

#: Errors meaning "PostgreSQL cannot answer right now" (or refused what we sent).
PG_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

#: NOTIFY payloads must be shorter than 8000 bytes; larger ones go through the spill table.
NOTIFY_LIMIT = 7900
_TAG_LEN = 16
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,29}")
_MIGRATION_LOCK = 0x77736875  # "wshu": one advisory lock id for every wshub migration


@dataclass(frozen=True, slots=True)
class PostgresURL:
    """A ``postgresql://`` URL without wshub's options, and those options: ``?prefix=`` (the
    schema, default ``wshub``) and ``?node_ttl=`` (seconds after which a silent node is dead)."""

    dsn: str
    schema: str = "wshub"
    node_ttl: float | None = None


def parse_postgres_url(url: str) -> PostgresURL:
    """Split wshub's options out of a ``postgresql://`` / ``postgres://`` URL (ValueError when
    invalid); the rest is asyncpg's DSN (``?sslmode=require`` and the like pass through)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("not a postgresql:// URL")
    kept: list[tuple[str, str]] = []
    schema = "wshub"
    node_ttl: float | None = None
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "prefix":
            if not _SCHEMA_RE.fullmatch(value):
                raise ValueError(
                    f"prefix names a PostgreSQL schema: lower-case letters, digits and _, "
                    f"at most 30, not {value!r}"
                )
            schema = value
        elif key == "node_ttl":
            try:
                node_ttl = float(value)
            except ValueError:
                node_ttl = -1.0
            if not node_ttl > 0 or math.isinf(node_ttl):
                raise ValueError(f"node_ttl must be a positive number of seconds, not {value!r}")
        else:
            kept.append((key, value))
    dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(kept)))
    return PostgresURL(dsn, schema, node_ttl)


def describe(dsn: str) -> str:
    """``host:port/db`` of a DSN, without credentials, for messages."""
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"


@contextlib.contextmanager
def pg_errors(where: str) -> Iterator[None]:
    """Turn driver and server errors into :class:`BackendUnavailable` naming ``where``."""
    try:
        yield
    except PG_DOWN as exc:
        raise BackendUnavailable(f"{where} is unavailable: {exc or type(exc).__name__}") from exc


def _migration(schema: str) -> str:
    s = f'"{schema}"'
    return f"""
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO {s}.meta (key, value)
    VALUES ('epoch', substr(md5(random()::text || clock_timestamp()::text), 1, 12))
    ON CONFLICT (key) DO NOTHING;
CREATE TABLE IF NOT EXISTS {s}.streams (
    name   text PRIMARY KEY,
    top    bigint NOT NULL,
    epoch  text NOT NULL,
    cursor bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS {s}.messages (
    stream   text NOT NULL,
    "offset" bigint NOT NULL,
    expires  double precision,
    data     bytea NOT NULL,
    PRIMARY KEY (stream, "offset")
);
CREATE INDEX IF NOT EXISTS messages_expires ON {s}.messages (expires)
    WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS {s}.spill (
    id      bigserial PRIMARY KEY,
    created timestamptz NOT NULL DEFAULT now(),
    data    bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.presence_nodes (
    node text PRIMARY KEY,
    beat timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.presence_entries (
    node    text NOT NULL,
    kind    text NOT NULL,         -- 'u': a user's connection, 'c': a connection in a channel
    key     text NOT NULL,         -- the user, or the channel
    user_id text NOT NULL,
    conn    text NOT NULL,
    PRIMARY KEY (kind, key, user_id, conn)
);
CREATE INDEX IF NOT EXISTS presence_entries_node ON {s}.presence_entries (node);

-- Appends (and cursor moves) of one batch, in order, in the caller's transaction, set-based.
-- A stream's row is locked (streams in name order, so two batches never deadlock) before its
-- offsets are taken. heads/tails: the NOTIFY payload around the offset (tail NULL: spill the
-- message).
CREATE OR REPLACE FUNCTION {s}.append_batch(
    streams text[], datas bytea[], sizes bigint[], expires double precision[],
    channels text[], heads text[], tails text[], tag text,
    cursor_streams text[], cursor_offsets bigint[]
) RETURNS TABLE (top bigint, epoch text) LANGUAGE plpgsql AS $$
DECLARE
    db_epoch text;
    offs bigint[];
    eps text[];
    keeps boolean[];
    ref bigint;
    spilled boolean := false;
BEGIN
    SELECT value INTO db_epoch FROM {s}.meta WHERE key = 'epoch';
    INSERT INTO {s}.streams AS x (name, top, epoch)
        SELECT DISTINCT n, 0, db_epoch FROM unnest(streams) AS n ORDER BY 1
        ON CONFLICT (name) DO NOTHING;
    PERFORM 1 FROM {s}.streams AS x WHERE x.name = ANY(streams || cursor_streams)
        ORDER BY x.name FOR UPDATE;
    -- Offsets: the stream's top plus the item's rank in the stream. An item is kept unless a
    -- later item's retention by size (offset - size) already drops it, as item by item would.
    SELECT coalesce(array_agg(q.off ORDER BY q.ord), '{{}}'),
           coalesce(array_agg(q.ep ORDER BY q.ord), '{{}}'),
           coalesce(array_agg(q.keep ORDER BY q.ord), '{{}}')
        INTO offs, eps, keeps
        FROM (
            SELECT w.ord, w.off, w.ep,
                   w.off > coalesce(max(w.off - w.size) OVER (
                       PARTITION BY w.stream ORDER BY w.ord
                       ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING), -1) AS keep
            FROM (
                SELECT i.ord, i.stream, i.size, x.epoch AS ep,
                       x.top + row_number() OVER (PARTITION BY i.stream ORDER BY i.ord) AS off
                FROM unnest(streams, sizes) WITH ORDINALITY AS i(stream, size, ord)
                JOIN {s}.streams AS x ON x.name = i.stream
            ) AS w
        ) AS q;
    INSERT INTO {s}.messages (stream, "offset", expires, data)
        SELECT u.stream, u.off, u.exp, u.data
        FROM unnest(streams, offs, expires, datas, keeps) AS u(stream, off, exp, data, keep)
        WHERE u.keep;
    UPDATE {s}.streams AS x SET top = m.top
        FROM (SELECT u.stream, max(u.off) AS top FROM unnest(streams, offs) AS u(stream, off)
              GROUP BY u.stream) AS m
        WHERE x.name = m.stream;
    -- what the batch's retention by size drops of the older messages (kept ones are all newer)
    DELETE FROM {s}.messages AS m
        USING (SELECT u.stream, max(u.off - u.size) AS upto
               FROM unnest(streams, offs, sizes) AS u(stream, off, size)
               WHERE u.size IS NOT NULL GROUP BY u.stream) AS d
        WHERE m.stream = d.stream AND m."offset" <= d.upto;
    FOR i IN 1 .. coalesce(array_length(streams, 1), 0) LOOP
        IF channels[i] IS NOT NULL THEN
            IF tails[i] IS NOT NULL THEN
                PERFORM pg_notify(channels[i], heads[i] || offs[i]::text || tails[i]);
            ELSE
                INSERT INTO {s}.spill (data)
                    VALUES (convert_to(offs[i]::text || ':', 'UTF8') || datas[i])
                    RETURNING id INTO ref;
                PERFORM pg_notify(channels[i], tag || 'r' || ref::text);
                spilled := true;
            END IF;
        END IF;
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(cursor_streams, 1), 0) LOOP
        UPDATE {s}.streams AS x SET cursor = cursor_offsets[i]
            WHERE x.name = cursor_streams[i] AND x.cursor < cursor_offsets[i]
            AND x.top >= cursor_offsets[i];
    END LOOP;
    IF spilled THEN
        DELETE FROM {s}.spill AS p WHERE p.created < now() - interval '10 minutes';
    END IF;
    RETURN QUERY SELECT u.o, u.e FROM unnest(offs, eps) AS u(o, e);
END
$$;

-- Notifications of one batch, in order (payload NULL: spill blobs[i], notify a reference).
CREATE OR REPLACE FUNCTION {s}.notify_batch(
    channels text[], payloads text[], blobs bytea[], tag text
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    ref bigint;
    spilled boolean := false;
BEGIN
    FOR i IN 1 .. coalesce(array_length(channels, 1), 0) LOOP
        IF payloads[i] IS NOT NULL THEN
            PERFORM pg_notify(channels[i], payloads[i]);
        ELSE
            INSERT INTO {s}.spill (data) VALUES (blobs[i]) RETURNING id INTO ref;
            PERFORM pg_notify(channels[i], tag || 'r' || ref::text);
            spilled := true;
        END IF;
    END LOOP;
    IF spilled THEN
        DELETE FROM {s}.spill AS p WHERE p.created < now() - interval '10 minutes';
    END IF;
END
$$;
"""


async def connect_pool(
    dsn: str, schema: str, where: str, *, timeout: float, max_size: int = 10
) -> Any:
    """A started pool whose schema is migrated; BackendUnavailable when PostgreSQL does not
    answer now (a node refuses to start rather than run without its backend)."""
    with pg_errors(where):
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            command_timeout=max(timeout, 5.0),
            server_settings={"application_name": "wshub"},
        )
    try:
        with pg_errors(where):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(_migration(schema))
    except BaseException:
        pool.terminate()
        raise
    return pool


async def pool_healthy(pool: Any, timeout: float = 1.0) -> bool:
    """Whether the pool answers ``SELECT 1`` within ``timeout``."""
    if pool is None:
        return False
    try:
        async with asyncio.timeout(timeout):
            return bool(await pool.fetchval("SELECT 1") == 1)
    except PG_DOWN:  # a TimeoutError too
        return False


def encode_payload(data: bytes) -> tuple[str, str]:
    """``(kind, text)`` for NOTIFY: ``t`` and the text itself when it is UTF-8 without NUL
    (NOTIFY carries text), else ``b`` and base64."""
    if b"\x00" not in data:
        try:
            return "t", data.decode()
        except UnicodeDecodeError:
            pass
    return "b", "|" + base64.b64encode(data).decode()


class SerialBatcher:
    """Runs ``flush(items)`` for everything submitted since its last turn, one call at a time;
    each submitter gets back its own slice of the results, in submission order."""

    def __init__(self, flush: Callable[[list[Any]], Any], name: str) -> None:
        self._flush = flush
        self._name = name
        self._queue: list[tuple[list[Any], asyncio.Future[list[Any]]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _, future in self._queue:
            if not future.done():
                future.set_exception(BackendUnavailable("closed"))
        self._queue.clear()

    async def submit(self, items: list[Any]) -> list[Any]:
        if self._task is None:
            raise BackendUnavailable("not started")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((items, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            batch = [(items, f) for items, f in batch if not f.cancelled()]
            if not batch:
                continue
            try:
                results = await self._flush([item for items, _ in batch for item in items])
            except asyncio.CancelledError:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(BackendUnavailable("closed"))
                raise
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            i = 0
            for items, future in batch:
                if not future.done():
                    future.set_result(results[i : i + len(items)])
                i += len(items)


class PostgresStore:
    """Streams, history and delivery cursors in PostgreSQL (see the module docstring).

    ``schema`` holds the tables; ``timeout`` bounds connecting (commands: at least 5 s);
    ``sweep_interval`` seconds between deletions of expired messages; ``clock`` gives the time
    retention by age is measured with.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        timeout: float = 1.5,
        sweep_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parsed = parse_postgres_url(url)
        self.dsn = parsed.dsn
        self.schema = schema or parsed.schema
        self.where = f"PostgreSQL store at {describe(self.dsn)}"
        self._timeout = timeout
        self._sweep_interval = sweep_interval
        self._clock = clock
        self._pool: Any = None
        self._writer = SerialBatcher(self._flush, "wshub-postgres-store")
        self._sweeper: asyncio.Task[None] | None = None
        self.epoch = ""
        # (node tag, topic -> NOTIFY channel) when appends notify too (see publish_with).
        self._publish: tuple[str, Callable[[str], str]] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._pool is not None:
            return
        self._pool = await connect_pool(self.dsn, self.schema, self.where, timeout=self._timeout)
        with pg_errors(self.where):
            self.epoch = str(
                await self._pool.fetchval(
                    f'SELECT value FROM "{self.schema}".meta WHERE key = $1', "epoch"
                )
            )
        self._writer.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="wshub-postgres-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self._writer.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except PG_DOWN:  # a TimeoutError too
                pool.terminate()

    async def healthy(self) -> bool:
        """Whether PostgreSQL answers ``SELECT 1`` within a second."""
        return await pool_healthy(self._pool)

    # -- Store ---------------------------------------------------------------------------------

    async def append(self, stream: str, data: bytes, retention: Retention) -> StreamPosition:
        (result,) = await self.append_batch([Append(stream, data, retention)])
        if isinstance(result, Exception):
            raise result
        return result

    def publish_with(self, broker: Broker) -> bool:
        """Yes for a :class:`PostgresBroker` on the same database and schema: the append
        transaction calls ``pg_notify``."""
        from ..brokers.postgres import PostgresBroker

        if not isinstance(broker, PostgresBroker):
            return False
        if broker.dsn != self.dsn or broker.schema != self.schema:
            return False
        self._publish = (broker.tag, broker.channel)
        return True

    async def append_batch(
        self, appends: Sequence[Append], cursors: Mapping[str, int] | None = None
    ) -> list[StreamPosition | Exception]:
        """Every append (and cursor) in one call of the ``append_batch`` function, with whatever
        else this node is appending: one transaction, one round trip."""
        now = self._clock()
        items: list[Any] = [
            (a, None if a.retention.ttl is None else now + a.retention.ttl) for a in appends
        ]
        items += [(None, (stream, offset)) for stream, offset in (cursors or {}).items()]
        if not items:
            return []
        if not appends:  # cursors only (advance_cursor): an error is the caller's
            await self._writer.submit(items)
            return []
        try:
            results = await self._writer.submit(items)
        except BackendUnavailable as exc:
            return [exc] * len(appends)
        return results[: len(appends)]

    async def _flush(self, items: list[Any]) -> list[Any]:
        streams: list[str] = []
        datas: list[bytes] = []
        sizes: list[int | None] = []
        expires: list[float | None] = []
        channels: list[str | None] = []
        heads: list[str | None] = []
        tails: list[str | None] = []
        moves: dict[str, int] = {}
        tag, channel_of = self._publish or ("", None)
        # what PostgreSQL would refuse fails alone, not the batch of everyone's appends with it
        bad: dict[int, Exception] = {}
        for n, (a, extra) in enumerate(items):
            if a is None:
                stream, offset = extra
                if _storable(stream) and 0 <= offset < 2**63:  # else no such top: a no-op
                    moves[stream] = max(offset, moves.get(stream, 0))
                continue
            if not _storable(a.stream):
                bad[n] = BackendUnavailable(f"{self.where}: cannot store stream {a.stream!r}")
                continue
            streams.append(a.stream)
            datas.append(a.data)
            sizes.append(a.retention.size)
            expires.append(extra)
            head = tail = channel = None
            if a.topic is not None and channel_of is not None:
                channel = channel_of(a.topic)
                kind, text = encode_payload(a.data)
                head, tail = tag + kind, ":" + text
                if len(tail.encode()) + _TAG_LEN + 22 >= NOTIFY_LIMIT:
                    tail = None  # spilled, a reference is notified instead
            channels.append(channel)
            heads.append(head)
            tails.append(tail)
        pool = self._running()
        with pg_errors(self.where):
            rows = await pool.fetch(
                f'SELECT top, epoch FROM "{self.schema}".append_batch('
                "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                streams,
                datas,
                sizes,
                expires,
                channels,
                heads,
                tails,
                tag,
                list(moves),
                list(moves.values()),
            )
        positions = iter([StreamPosition(int(r[0]), str(r[1])) for r in rows])
        return [
            bad[n] if n in bad else next(positions) if a is not None else None
            for n, (a, _) in enumerate(items)
        ]

    async def read(
        self, stream: str, since: int, limit: int | None = None
    ) -> tuple[Sequence[StoredMessage], StreamPosition]:
        now = self._clock()
        s = self.schema
        pool = self._running()
        with pg_errors(self.where):
            async with (
                pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                row = await conn.fetchrow(
                    f'SELECT top, epoch FROM "{s}".streams WHERE name = $1', stream
                )
                rows = await conn.fetch(
                    f'SELECT "offset", data FROM "{s}".messages WHERE stream = $1 AND "offset" > $2'
                    ' AND (expires IS NULL OR expires >= $3) ORDER BY "offset" LIMIT $4',
                    stream,
                    since,
                    now,
                    limit,
                )
        pos = StreamPosition(int(row[0]), str(row[1])) if row else StreamPosition(0, self.epoch)
        return [StoredMessage(int(o), bytes(d)) for o, d in rows], pos

    async def position(self, stream: str) -> StreamPosition:
        pool = self._running()
        with pg_errors(self.where):
            row = await pool.fetchrow(
                f'SELECT top, epoch FROM "{self.schema}".streams WHERE name = $1', stream
            )
        return StreamPosition(int(row[0]), str(row[1])) if row else StreamPosition(0, self.epoch)

    async def cursor(self, stream: str) -> int:
        pool = self._running()
        with pg_errors(self.where):
            value = await pool.fetchval(
                f'SELECT cursor FROM "{self.schema}".streams WHERE name = $1', stream
            )
        return int(value) if value is not None else 0

    async def advance_cursor(self, stream: str, offset: int) -> None:
        await self.append_batch([], {stream: offset})

    async def sweep(self) -> int:
        """Delete messages past their retention age now; returns how many."""
        pool = self._running()
        with pg_errors(self.where):
            status = await pool.execute(
                f'DELETE FROM "{self.schema}".messages WHERE expires IS NOT NULL AND expires < $1',
                self._clock(),
            )
        return int(status.rpartition(" ")[2] or 0)

    # -- internals -----------------------------------------------------------------------------

    def _running(self) -> Any:
        if self._pool is None:
            raise BackendUnavailable(f"{self.where}: the store is not started")
        return self._pool

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                removed = await self.sweep()
                if removed:
                    logger.debug("retention removed %d expired message(s)", removed)
            except BackendUnavailable as exc:
                logger.warning("retention sweep failed: %s", exc)


def _storable(name: str) -> bool:
    """Whether PostgreSQL's ``text`` can hold ``name`` (UTF-8, no NUL)."""
    if "\x00" in name:
        return False
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def new_tag() -> str:
    """A node's 16-character tag (what starts every payload it notifies)."""
    return uuid.uuid4().hex[:_TAG_LEN]
