"""Every connection's token deadline on one timer: ``token_expiring`` ahead of ``exp``, and the
close with 4001 at it.

A heap of deadlines and a single ``call_later`` handle for the earliest one, so 10,000
connections cost 10,000 heap entries and one timer, and nothing is done per message. Entries
are never removed from the heap: re-arming or disarming a session bumps its generation, and
stale entries are skipped when they come up.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import Session

__all__ = ["TokenDeadlines"]

_WARN, _EXPIRE = 0, 1


class TokenDeadlines:
    """``expiring(session, expires_at)`` is called ``window`` seconds before a session's token
    expires (at once when less is left), ``expired(session)`` at ``expires_at``, unless the
    session is re-armed (a refresh) or disarmed (closed) first. ``clock`` is wall time, the
    time ``exp`` is given in."""

    def __init__(
        self,
        *,
        window: float,
        expiring: Callable[[Session, float], None],
        expired: Callable[[Session], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self._expiring = expiring
        self._expired = expired
        self._clock = clock
        self._heap: list[tuple[float, int, int, Session, float]] = []
        self._armed: dict[Session, int] = {}  # session -> generation of its live entries
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def __len__(self) -> int:
        return len(self._armed)

    def arm(self, session: Session, expires_at: float | None) -> None:
        """Follow ``session``'s token, which expires at ``expires_at`` (None: never)."""
        if expires_at is None:
            self.disarm(session)
            return
        gen = next(self._seq)
        self._armed[session] = gen
        warn_at = max(self._clock(), expires_at - self.window)
        heapq.heappush(self._heap, (warn_at, _WARN, gen, session, expires_at))
        heapq.heappush(self._heap, (expires_at, _EXPIRE, gen, session, expires_at))
        self._schedule()

    def disarm(self, session: Session) -> None:
        self._armed.pop(session, None)
        if not self._armed and self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, float("inf")
            self._heap.clear()

    def _schedule(self) -> None:
        heap = self._heap
        while heap and self._armed.get(heap[0][3]) != heap[0][2]:
            heapq.heappop(heap)  # stale: re-armed or disarmed since
        if not heap:
            return
        when = heap[0][0]
        if self._timer is not None:
            if when >= self._timer_at:
                return
            self._timer.cancel()
        self._timer_at = when
        delay = max(0.0, when - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._run)

    def _run(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        heap = self._heap
        now = self._clock()
        while heap and heap[0][0] <= now:
            _, kind, gen, session, expires_at = heapq.heappop(heap)
            if self._armed.get(session) != gen:
                continue
            if kind == _WARN:
                self._expiring(session, expires_at)
            else:
                self._armed.pop(session, None)
                self._expired(session)
        self._schedule()
