"""What was acknowledged, what each observer received, what the store kept; and the checks.

A *stream* is ``c:<channel>`` or ``u:<user>``. Every message carries a unique key
(``<publisher>:<seq>``), so a message can be followed from its acknowledgement to every observer
and into the history without trusting the server's offsets.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from dataclasses import dataclass, field

__all__ = ["Ack", "Ledger", "Observer", "StreamResult", "check"]


@dataclass(slots=True)
class Ack:
    """One acknowledged message: the server said it is durable."""

    stream: str
    key: str
    offset: int | None  # None for a chat (chat_received carries no offset)
    publisher: str
    conn: int  # the publisher's connection number: pipelined order holds within one
    seq: int
    sent: float
    acked: float
    via: str  # ws, http, sdk, chat, send


@dataclass(slots=True)
class Observer:
    """One subscriber's view of one stream, across all its connections."""

    name: str
    role: str  # steady, stalled, churn, sdk
    stream: str
    start: int | None = None  # the stream's offset when it first joined
    epoch: str | None = None
    got: list[tuple[int, str]] = field(default_factory=list)  # (offset, key) in arrival order
    disconnected: bool = False  # lost a connection at least once (killed node, 1013, churn)
    joins: int = 0
    unrecovered: int = 0  # resumes answered recovered: false
    raw_dups: int = 0  # repeats the SDK filtered out (seen in its raw frames)
    seams: list[int] = field(default_factory=list)  # indexes into got where a resume began
    unrecovered_at: set[int] = field(default_factory=set)  # those answered recovered: false
    context: str = ""  # where the next join goes (node, since): for the report
    join_log: list[tuple[int, str]] = field(default_factory=list)  # (index into got, what)

    def joined(self, offset: int, epoch: str, recovered: bool | None, resumed: bool) -> None:
        self.joins += 1
        self.join_log.append(
            (len(self.got), f"{self.context} -> offset {offset} recovered {recovered}")
        )
        if self.start is None:
            self.start, self.epoch = offset, epoch
        if resumed:
            self.seams.append(len(self.got))
            if recovered is False:
                self.unrecovered += 1
                self.unrecovered_at.add(len(self.got))

    def opened(self, where: str) -> None:
        """A new connection (not joined yet): what it gets before its join is no live delivery
        either (a server may send some after a failed join)."""
        if self.start is not None:
            self.seams.append(len(self.got))
            self.join_log.append((len(self.got), f"new connection to {where}"))

    @property
    def last(self) -> int:
        best = self.start or 0
        for off, _ in self.got:
            best = max(best, off)
        return best


@dataclass
class Ledger:
    acks: list[Ack] = field(default_factory=list)
    observers: list[Observer] = field(default_factory=list)
    unacked: int = 0  # sent, no acknowledgement (error, timeout, connection lost)
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    history: dict[str, dict[int, str]] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)
    epochs: dict[str, str] = field(default_factory=dict)
    closes: dict[int | None, int] = field(default_factory=lambda: defaultdict(int))
    stalls: int = 0  # times a stalled consumer stopped reading
    retention: dict[str, int] = field(default_factory=dict)  # streams that keep only the last N

    def observer(self, name: str, role: str, stream: str) -> Observer:
        obs = Observer(name, role, stream)
        self.observers.append(obs)
        return obs

    def error(self, what: str) -> None:
        self.unacked += 1
        self.errors[what] += 1


@dataclass
class StreamResult:
    stream: str
    acked: int = 0
    stored: int = 0
    observers: int = 0
    steady: int = 0  # observers that never lost their connection
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    not_stored: int = 0
    live_gaps: int = 0
    resume_gaps: int = 0
    mismatched: int = 0
    unrecovered: int = 0
    trimmed: bool = False  # retention keeps only the newest messages: some resumes may fail
    examples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < 12:
            self.examples.append(text)

    @property
    def failed(self) -> bool:
        return bool(
            self.lost
            or self.duplicated
            or self.reordered
            or self.not_stored
            or self.live_gaps
            or self.resume_gaps
            or self.mismatched
            or (self.unrecovered and not self.trimmed)
        )

    def add(self, other: StreamResult) -> None:
        for f in dataclasses.fields(self):
            if f.type == "int":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _where(o: Observer, i: int) -> str:
    """Where message ``i`` of an observer came: the join before it, and how far after."""
    before = [(at, what) for at, what in o.join_log if at <= i]
    if not before:
        return "before any join"
    at, what = before[-1]
    window = " ".join(
        ("| " if j == at else "") + str(o.got[j][0]) for j in range(max(0, at - 4), i + 1)
    )
    return f"message {i - at} after join #{len(before)} ({what}); offsets got: {window}"


def check(ledger: Ledger) -> list[StreamResult]:
    """Every stream's result; see docs/guarantees.md for what each column means."""
    streams = sorted(
        {a.stream for a in ledger.acks} | {o.stream for o in ledger.observers} | set(ledger.history)
    )
    results = []
    for stream in streams:
        results.append(_check_stream(ledger, stream))
    return results


def _check_stream(ledger: Ledger, stream: str) -> StreamResult:
    r = StreamResult(stream)
    history = ledger.history.get(stream, {})
    head = ledger.heads.get(stream, max(history, default=0))
    keep = ledger.retention.get(stream)
    r.trimmed = keep is not None
    floor = head - keep if keep is not None else 0  # offsets at or below may be trimmed
    r.stored = len(history)
    acks = [a for a in ledger.acks if a.stream == stream]
    observers = [o for o in ledger.observers if o.stream == stream]
    r.acked = len(acks)
    r.observers = len(observers)
    r.steady = sum(not o.disconnected for o in observers)

    # The store: each key once, offsets 1..head without a hole.
    where: dict[str, list[int]] = defaultdict(list)
    for off, key in history.items():
        where[key].append(off)
    for key, offs in where.items():
        if len(offs) > 1:
            r.duplicated += len(offs) - 1
            r.note(f"{key} stored at offsets {sorted(offs)}")

    # What the observers saw: key at offset, consistent with the store.
    seen_at: dict[str, set[int]] = defaultdict(set)
    for o in observers:
        for off, key in o.got:
            seen_at[key].add(off)
            stored = history.get(off)
            if stored is not None and stored != key:
                r.mismatched += 1
                r.note(f"{o.name} got {key} at {off}, the store has {stored} there")

    for key, offs in seen_at.items():
        if len(offs) > 1 and len(where.get(key, ())) < len(offs):
            r.duplicated += len(offs) - max(1, len(where.get(key, ())))
            r.note(f"{key} delivered at offsets {sorted(offs)}")

    # Every acknowledged message: stored at its offset, seen by someone.
    offsets: dict[str, int] = {}
    for a in acks:
        in_store = where.get(a.key)
        if a.offset is not None:
            offsets[a.key] = a.offset
            if history.get(a.offset) != a.key and a.offset > floor:
                if history.get(a.offset) is not None:
                    r.mismatched += 1
                    r.note(f"{a.key} acked at {a.offset}, the store has {history[a.offset]}")
                else:
                    r.not_stored += 1
                    r.note(f"{a.key} ({a.via}) acked at offset {a.offset}, not in the history")
        elif in_store:
            offsets[a.key] = in_store[0]
        elif keep is None:
            r.not_stored += 1
            r.note(f"{a.key} ({a.via}) acked, not in the history")
        if not in_store and not seen_at.get(a.key):
            r.lost += 1
            r.note(f"LOST {a.key} ({a.via}, offset {a.offset}) acked by {a.publisher}")
        if a.offset is None and a.key not in offsets and seen_at.get(a.key):
            offsets[a.key] = min(seen_at[a.key])

    # A publisher's order: a message sent after another was acknowledged comes after it; on one
    # WebSocket connection, pipelined messages keep the order they were sent in.
    by_pub: dict[str, list[Ack]] = defaultdict(list)
    for a in acks:
        if a.key in offsets:
            by_pub[a.publisher].append(a)
    for pub, items in by_pub.items():
        events = sorted(
            [(a.acked, 1, a) for a in items] + [(a.sent, 0, a) for a in items],
            key=lambda e: (e[0], e[1]),
        )
        # Sweep in time: at each send, the highest offset acknowledged so far must be below.
        best, best_key = 0, ""
        for _, kind, a in events:
            off = offsets[a.key]
            if kind == 1:
                if off > best:
                    best, best_key = off, a.key
            elif off <= best:
                r.reordered += 1
                r.note(f"{pub}: {a.key} sent after {best_key}@{best} was acked, got {off}")
        pipelined: dict[int, list[Ack]] = defaultdict(list)
        for a in items:
            if a.via in ("ws", "chat"):
                pipelined[a.conn].append(a)
        for conn, seq in pipelined.items():
            seq.sort(key=lambda a: a.seq)
            for prev, nxt in itertools.pairwise(seq):
                if offsets[nxt.key] <= offsets[prev.key]:
                    r.reordered += 1
                    r.note(
                        f"{pub} conn {conn}: {prev.key}@{offsets[prev.key]} then "
                        f"{nxt.key}@{offsets[nxt.key]}"
                    )

    # Each observer: offsets strictly increasing by one from where it joined to the head.
    for o in observers:
        r.unrecovered += o.unrecovered
        r.duplicated += o.raw_dups
        if o.raw_dups:
            r.note(f"{o.name} was sent {o.raw_dups} repeats (the SDK dropped them)")
        if o.start is None:
            continue
        prev = o.start
        seen: set[int] = set()
        seams = set(o.seams)
        for i, (off, key) in enumerate(o.got):
            if off in seen:
                r.duplicated += 1
                r.note(f"{o.name} got offset {off} ({key}) twice; {_where(o, i)}")
                continue
            seen.add(off)
            if off < prev:
                r.reordered += 1
                r.note(f"{o.name} got {off} after {prev}")
                continue
            if off > prev + 1:
                # Raw observers: a jump right after a resume is a resume gap, any other one
                # happened on a connection that stayed up: a live gap. The SDK hides where its
                # connections begin: a jump counts as live only if it never lost one.
                live = i not in seams if o.role != "sdk" else not o.disconnected
                if i in o.unrecovered_at:
                    r.note(f"{o.name}: {prev} -> {off}, the server said recovered: false")
                elif live:
                    r.live_gaps += off - prev - 1
                    r.note(
                        f"{o.name} ({o.role}) jumped {prev} -> {off} on a live connection; "
                        + _where(o, i)
                    )
                else:
                    r.resume_gaps += off - prev - 1
                    r.note(
                        f"{o.name} ({o.role}) jumped {prev} -> {off} across a resume; "
                        + _where(o, i)
                    )
            prev = off
        if prev < head:
            missing = head - prev
            if o.role != "sdk" or not o.disconnected:
                r.live_gaps += missing
            else:
                r.resume_gaps += missing
            r.note(f"{o.name} ({o.role}) stopped at {prev}, the stream's head is {head}")
    return r
