"""When and whether to reconnect: exponential backoff with full jitter, and close-code rules.
Pure: the randomness is injected."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DISCONNECTED", "NO_RECONNECT_CODES", "TOKEN_EXPIRED", "ReconnectPolicy"]

#: Close codes after which reconnecting would only repeat the failure: a policy violation
#: (authentication missing in time, rate-limit abuse; see ``reconnect_on_policy``) and protocol
#: errors on either side.
NO_RECONNECT_CODES = frozenset({1002, 1003, 1007, 1008, 1010})

#: The server closed the connection because its token expired (protocol 1.1): reconnecting with
#: a fresh token (a callable ``token``) resumes every stream.
TOKEN_EXPIRED = 4001
#: The server disconnected the user (``POST /api/users/{id}/disconnect``, a revocation): no
#: reconnect unless ``reconnect_on_disconnect``.
DISCONNECTED = 4002


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How a :class:`~wshub.client.Client` reconnects.

    Attempt ``n`` (0 for the first retry) waits a uniformly random time between ``min_delay`` and
    ``min(max_delay, min_delay * factor ** (n + 1))`` seconds, so clients dropped together (a
    server restart) spread their reconnects instead of arriving at once. ``max_attempts`` bounds
    consecutive failed attempts (None: retry forever); a successful connection resets the count.

    ``reconnect_on_policy``: reconnect after 1008 too. ``reconnect_on_disconnect``: reconnect
    after 4002 (the server disconnected the user on purpose) too; with a revoked token that
    reconnection is refused (401) and the client closes.
    """

    min_delay: float = 0.5
    max_delay: float = 30.0
    factor: float = 2.0
    max_attempts: int | None = None
    reconnect_on_policy: bool = False
    reconnect_on_disconnect: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_delay <= self.max_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")
        if self.factor < 1:
            raise ValueError("factor must be at least 1")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError("max_attempts must be >= 0 or None")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before attempt ``attempt``."""
        # min() before the power would be neater, but factor ** attempt overflows float for large
        # attempts: cap the exponent instead.
        exp = min(attempt + 1, 64)
        return min(self.max_delay, self.min_delay * self.factor**exp)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before attempt ``attempt``; ``rand`` returns a float in [0, 1)."""
        low = self.min_delay
        return low + rand() * (self.ceiling(attempt) - low)

    def gives_up(self, attempt: int) -> bool:
        """Whether attempt ``attempt`` (0-based) is one too many."""
        return self.max_attempts is not None and attempt >= self.max_attempts

    def should_reconnect(self, code: int | None) -> bool:
        """Whether a close with ``code``, not asked for by the client, warrants reconnecting.

        1000/1001/1006/1011/1012/1013, 4001 (token expired) and unknown codes: yes. 1008: only
        with ``reconnect_on_policy``; 4002 (disconnected by the server): only with
        ``reconnect_on_disconnect``. Protocol errors (1002, 1003, 1007, 1010): no.
        """
        if code == 1008:
            return self.reconnect_on_policy
        if code == DISCONNECTED:
            return self.reconnect_on_disconnect
        return code not in NO_RECONNECT_CODES
