"""Token-bucket rate limiting with an injected clock. Pure, synchronous."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; each message takes one.

    ``strikes`` counts rejected messages and decays by one per accepted message, so a client that
    backs off recovers while one that keeps hammering reaches ``abusive``.
    """

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate", "strikes")

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.strikes = 0

    def take(self) -> bool:
        """Take one token; ``False`` when the bucket is empty (the message must be rejected)."""
        now = self._clock()
        tokens = self._tokens + (now - self._last) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            if self.strikes:
                self.strikes -= 1
            return True
        self._tokens = tokens
        self.strikes += 1
        return False

    def spend(self, amount: float) -> bool:
        """Take ``amount`` tokens at once (a byte budget); ``False``, taking none, when fewer
        are left. Does not count strikes."""
        now = self._clock()
        tokens = self._tokens + (now - self._last) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self._last = now
        if tokens >= amount:
            self._tokens = tokens - amount
            return True
        self._tokens = tokens
        return False

    @property
    def abusive(self) -> bool:
        """True once rejections outnumber accepted messages by a whole burst."""
        return self.strikes >= self.burst
