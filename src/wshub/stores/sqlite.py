"""A durable :class:`~wshub.interfaces.Store` in one SQLite file (WAL mode).

All SQL runs on one writer thread that owns the connection, so the event loop never blocks on
the disk. The thread takes every operation queued since its last turn and runs them in one
transaction: a burst of publications costs one commit (and one fsync), not one each. An
operation's future resolves only after its transaction committed, so when ``append`` returns the
message survives a crash of the process, and with the default ``synchronous=FULL`` a power loss
too. ``sqlite:///./wshub.db?synchronous=normal`` trades the power-loss guarantee for speed: in
WAL mode a commit then waits for no fsync (a killed process still loses nothing committed; a
power cut may lose the last commits).

Operations run in the order they were submitted, and their futures resolve in that order, so
offsets come back to the hub in the order they were assigned.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable
from ..interfaces import Append, Broker, Retention
from ..types import StoredMessage, StreamPosition

__all__ = ["SQLiteStore", "path_from_url", "synchronous_from_url"]

#: The ``synchronous`` levels a URL may ask for (SQLite's PRAGMA synchronous, in WAL mode).
SYNCHRONOUS = ("full", "normal")

logger = logging.getLogger("wshub.stores.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    name    TEXT PRIMARY KEY,
    top     INTEGER NOT NULL,          -- offset of the latest message ever appended
    epoch   TEXT NOT NULL,
    cursor  INTEGER NOT NULL DEFAULT 0 -- handed to a live connection up to here
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    stream  TEXT NOT NULL,
    offset  INTEGER NOT NULL,
    expires REAL,                      -- unix time after which retention drops it
    data    BLOB NOT NULL,
    PRIMARY KEY (stream, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_expires ON messages (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


_Op = Callable[[sqlite3.Connection], Any]
#: (future, value, exception): how one operation ended, settled on the event loop.
_Result = tuple[asyncio.Future[Any], Any, BaseException | None]
_STOP = object()


#: Rows per multi-row statement (well under SQLite's variable limit, 32766 since 3.32).
_ROWS = 500


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def path_from_url(url: str) -> str:
    """``sqlite:///./wshub.db`` → ``./wshub.db``; ``sqlite:////var/x.db`` → ``/var/x.db``."""
    if not url.startswith("sqlite://"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ValueError(f"sqlite URL needs a path, as in sqlite:///./wshub.db: {url!r}")
    return rest[1:].split("?", 1)[0]


def check_synchronous(level: str) -> str:
    """``level`` if SQLite's ``synchronous`` may be set to it here; ValueError otherwise."""
    if level not in SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}, not {level!r}")
    return level


def synchronous_from_url(url: str) -> str:
    """``...?synchronous=normal`` → ``"normal"``; ``"full"`` when the URL does not say."""
    from urllib.parse import parse_qs

    query = parse_qs(url.partition("?")[2], keep_blank_values=True)
    unknown = sorted(set(query) - {"synchronous"})
    if unknown:
        raise ValueError(f"unknown sqlite URL option(s) {', '.join(unknown)}: {url!r}")
    return check_synchronous(query.get("synchronous", ["full"])[-1].lower())


class SQLiteStore:
    """Streams, history and delivery cursors in SQLite.

    ``sweep_interval`` seconds between deletions of expired messages (retention by age);
    ``synchronous``: ``"full"`` (an fsync per commit: survives a power loss) or ``"normal"``
    (survives a crash of the process, not a power loss).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        sweep_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
        synchronous: str = "full",
    ) -> None:
        self.path = str(path)
        self.synchronous = check_synchronous(synchronous)
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        # One epoch per database file: a lost or replaced file means new epochs everywhere.
        self.epoch = ""
        # The writer thread's: stream tops (see _tops_for) and the data_version they go with.
        self._tops: dict[str, list[Any]] = {}
        self._version = -1

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[Any] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="wshub-sqlite", daemon=True
        )
        self._thread.start()
        await ready
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(thread.join)
        self._thread = None

    # -- Store -----------------------------------------------------------------------------

    async def append(self, stream: str, data: bytes, retention: Retention) -> StreamPosition:
        (result,) = await self.append_batch([Append(stream, data, retention)])
        if isinstance(result, Exception):
            raise result
        return result

    def publish_with(self, broker: Broker) -> bool:
        """No: SQLite cannot publish; the hub publishes after the commit."""
        return False

    async def append_batch(
        self, appends: Sequence[Append], cursors: Mapping[str, int] | None = None
    ) -> list[StreamPosition | Exception]:
        """Every append (and cursor) as one operation of the writer thread, so in one
        transaction with whatever else is waiting: one commit, one fsync. The rows go in with
        one ``executemany`` per statement; streams' tops come from the thread's cache."""
        now = self._clock()
        items = [
            (
                a.stream,
                a.data,
                a.retention.size,
                None if a.retention.ttl is None else now + a.retention.ttl,
            )
            for a in appends
        ]
        moves = dict(cursors or {})

        def op(db: sqlite3.Connection) -> list[StreamPosition | Exception]:
            # A handful of statements per group, whatever its size: each statement releases
            # and re-takes the GIL, which the event loop holds most of the time.
            tops = self._tops_for(db)
            unknown = list({stream for stream, _, _, _ in items if stream not in tops})
            for chunk in _chunks(unknown, _ROWS):
                marks = ",".join("?" * len(chunk))
                for name, top, epoch in db.execute(
                    f"SELECT name, top, epoch FROM streams WHERE name IN ({marks})", chunk
                ):
                    tops[name] = [top, epoch]
            results: list[StreamPosition | Exception] = []
            rows: list[Any] = []
            touched: dict[str, tuple[list[Any], int | None]] = {}
            for stream, data, size, expires in items:
                top = tops.get(stream)
                if top is None:
                    top = tops[stream] = [0, self.epoch]
                top[0] += 1
                touched[stream] = (top, size)
                if size != 0:
                    rows.append((stream, top[0], expires, data))
                results.append(StreamPosition(top[0], top[1]))
            for chunk in _chunks(rows, _ROWS):
                db.execute(
                    "INSERT INTO messages (stream, offset, expires, data) VALUES "
                    + ",".join(["(?,?,?,?)"] * len(chunk)),
                    [v for row in chunk for v in row],
                )
            heads = [(stream, top[0], top[1]) for stream, (top, _) in touched.items()]
            for chunk in _chunks(heads, _ROWS):
                db.execute(
                    "INSERT INTO streams (name, top, epoch) VALUES "
                    + ",".join(["(?,?,?)"] * len(chunk))
                    + " ON CONFLICT (name) DO UPDATE SET top = excluded.top",
                    [v for head in chunk for v in head],
                )
            trims = [
                (stream, top[0] - size)
                for stream, (top, size) in touched.items()
                if size is not None and top[0] > size
            ]
            for chunk in _chunks(trims, _ROWS):
                names = [stream for stream, _ in chunk]
                db.execute(
                    "DELETE FROM messages WHERE stream IN (" + ",".join("?" * len(chunk)) + ")"
                    " AND offset <= CASE stream" + " WHEN ? THEN ?" * len(chunk) + " END",
                    [*names, *(v for trim in chunk for v in trim)],
                )
            for chunk in _chunks(list(moves.items()), _ROWS):
                # forward only; past the top it is no move (as the other stores do)
                names = [stream for stream, _ in chunk]
                wanted = "CASE name" + " WHEN ? THEN ?" * len(chunk) + " END"
                db.execute(
                    f"UPDATE streams SET cursor = CASE WHEN {wanted} > cursor"
                    f" AND {wanted} <= top THEN {wanted} ELSE cursor END"
                    " WHERE name IN (" + ",".join("?" * len(chunk)) + ")",
                    [*([v for move in chunk for v in move] * 3), *names],
                )
            return results

        result: list[StreamPosition | Exception] = await self._submit(op)
        return result

    def _tops_for(self, db: sqlite3.Connection) -> dict[str, list[Any]]:
        """The writer thread's cache of ``[top, epoch]`` per stream, valid
        while no other connection wrote to the file (``PRAGMA data_version``) and no
        operation of ours was rolled back (``_execute`` clears it then)."""
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version or len(self._tops) > 100_000:
            self._tops.clear()
            self._version = version
        return self._tops

    async def read(
        self, stream: str, since: int, limit: int | None = None
    ) -> tuple[Sequence[StoredMessage], StreamPosition]:
        now = self._clock()

        def op(db: sqlite3.Connection) -> tuple[list[StoredMessage], StreamPosition]:
            pos = self._position(db, stream)
            rows = db.execute(
                "SELECT offset, data FROM messages WHERE stream = ? AND offset > ?"
                " AND (expires IS NULL OR expires >= ?) ORDER BY offset LIMIT ?",
                (stream, since, now, -1 if limit is None else limit),
            ).fetchall()
            return [StoredMessage(o, bytes(d)) for o, d in rows], pos

        result: tuple[list[StoredMessage], StreamPosition] = await self._submit(op)
        return result

    async def position(self, stream: str) -> StreamPosition:
        result: StreamPosition = await self._submit(lambda db: self._position(db, stream))
        return result

    async def cursor(self, stream: str) -> int:
        def op(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT cursor FROM streams WHERE name = ?", (stream,)).fetchone()
            return int(row[0]) if row else 0

        result: int = await self._submit(op)
        return result

    async def advance_cursor(self, stream: str, offset: int) -> None:
        """The group's cursor statement, for one stream (one rule: forward, never past top)."""
        await self.append_batch([], {stream: offset})

    async def healthy(self) -> bool:
        """The writer thread runs and answers a trivial query."""
        try:
            await self._submit(lambda db: db.execute("SELECT 1").fetchone())
        except BackendUnavailable:
            return False
        return True

    async def sweep(self) -> int:
        """Delete messages past their retention age now; returns how many."""
        now = self._clock()

        def op(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM messages WHERE expires IS NOT NULL AND expires < ?", (now,)
            ).rowcount

        result: int = await self._submit(op)
        return result

    def _position(self, db: sqlite3.Connection, stream: str) -> StreamPosition:
        row = db.execute("SELECT top, epoch FROM streams WHERE name = ?", (stream,)).fetchone()
        if row is None:  # never written: it will get the database's epoch
            return StreamPosition(0, self.epoch)
        return StreamPosition(int(row[0]), str(row[1]))

    # -- the writer thread -----------------------------------------------------------------

    async def _submit(self, op: _Op) -> Any:
        if self._thread is None or self._loop is None:
            raise BackendUnavailable("the SQLite store is not started")
        if self._failed is not None:
            raise BackendUnavailable(f"the SQLite store failed: {self._failed}")
        future = self._loop.create_future()
        self._queue.put((op, future))
        return await future

    def _run(self, ready: asyncio.Future[Any]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            db = self._open()
        except BaseException as exc:
            self._failed = exc
            failed: list[_Result] = [(ready, None, exc)]
            loop.call_soon_threadsafe(_settle, failed)
            return
        opened: list[_Result] = [(ready, None, None)]
        loop.call_soon_threadsafe(_settle, opened)
        try:
            while True:
                batch = [self._queue.get()]
                while True:  # everything else already waiting joins this transaction
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(item is _STOP for item in batch)
                jobs = [item for item in batch if item is not _STOP]
                if jobs:
                    loop.call_soon_threadsafe(_settle, self._execute(db, jobs))
                if stop:
                    break
        finally:
            db.close()

    def _execute(
        self, db: sqlite3.Connection, jobs: list[tuple[_Op, asyncio.Future[Any]]]
    ) -> list[_Result]:
        results: list[_Result] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for op, future in jobs:
                try:
                    db.execute("SAVEPOINT op")
                    results.append((future, op(db), None))
                    db.execute("RELEASE op")
                except (sqlite3.Error, OverflowError, ValueError) as exc:
                    # One bad operation (an out-of-range number, say) fails alone; the writer
                    # thread and the rest of the batch carry on.
                    self._tops.clear()  # what the cache counted may have been rolled back
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                    results.append((future, None, BackendUnavailable(f"SQLite: {exc}")))
            db.execute("COMMIT")
        except sqlite3.Error as exc:  # the commit itself failed: nothing in the batch happened
            logger.error("SQLite transaction failed: %s", exc)
            self._tops.clear()
            if db.in_transaction:
                db.execute("ROLLBACK")
            error = BackendUnavailable(f"SQLite: {exc}")
            return [(future, None, error) for _, future in jobs]
        return results

    def _open(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is None:
            self.epoch = uuid.uuid4().hex[:12]
            db.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (self.epoch,))
        else:
            self.epoch = str(row[0])
        return db

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                removed = await self.sweep()
                if removed:
                    logger.debug("retention removed %d expired message(s)", removed)
            except BackendUnavailable as exc:
                logger.warning("retention sweep failed: %s", exc)


def _settle(results: list[_Result]) -> None:
    for future, value, exc in results:
        if future.done():  # the awaiting task was cancelled
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)
