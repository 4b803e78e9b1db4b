"""A circuit breaker, so that a dead Redis costs a request nothing once it is known to be dead.

Closed (normal): every call goes to Redis; ``failures`` consecutive failures open it. Open:
calls do not try Redis for ``cooldown`` seconds. Then half-open: one call (the probe) tries;
its success closes the breaker, its failure opens it for another cool-down. Calls made while
the probe is in flight do not try either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Counts consecutive failures and says whether the next call may try the server.

    Thread-safe. ``clock`` is a monotonic clock in seconds (tests pass a fake one).

    >>> breaker = CircuitBreaker(failures=2, cooldown=5.0)
    >>> breaker.allow(), breaker.failure(), breaker.failure(), breaker.allow()
    (True, False, True, False)
    """

    def __init__(
        self,
        *,
        failures: int = 3,
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        """``closed``, ``open`` (cooling down) or ``half-open`` (a probe may go or is going)."""
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "open" if self._clock() < self._open_until else "half-open"

    @property
    def failures(self) -> int:
        """Consecutive failures so far."""
        return self._failures

    def retry_in(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it lets calls through now)."""
        with self._lock:
            if self._open_until is None:
                return 0.0
            return max(self._open_until - self._clock(), 0.0)

    def allow(self) -> bool:
        """Whether this call may try the server; True for the one probe when half-open."""
        with self._lock:
            if self._open_until is None:
                return True
            if self._probing or self._clock() < self._open_until:
                return False
            self._probing = True
            return True

    def success(self) -> bool:
        """Record a success; return True when it closed an open breaker (recovery)."""
        with self._lock:
            recovered = self._open_until is not None
            self._failures = 0
            self._open_until = None
            self._probing = False
            return recovered

    def abandon(self) -> None:
        """Forget a call that ended neither way (cancelled): a probe may go again."""
        with self._lock:
            self._probing = False

    def failure(self) -> bool:
        """Record a failure; return True when it opened the breaker (now or again)."""
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self.threshold:
                self._open_until = self._clock() + self.cooldown
                self._probing = False
                return True
            return False
