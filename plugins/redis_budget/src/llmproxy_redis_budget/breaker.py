"""A circuit breaker, so that a dead Redis costs a request nothing once it is known to be dead.

Closed (normal): every call goes to Redis; ``failures`` consecutive failures open it. Open:
calls do not try Redis for ``cooldown`` seconds. Then half-open: one call (the probe) tries;
its success closes the breaker, its failure opens it for another cool-down. Calls made while
the probe is in flight do not try either.

With a ``probe`` (the Redis ledger's is a ``PING``), a background thread runs it every
``probe_interval`` seconds while the breaker is open and closes the breaker as soon as it
succeeds: calls go to Redis again within about ``probe_interval`` of Redis answering, however
long the cool-down, and no caller pays for the probing. ``on_close`` is then called, in the
probe's thread (the Redis ledger replays its fail-open journal from there).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

log = logging.getLogger("llmproxy_redis_budget")

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
        cooldown: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        probe: Callable[[], object] | None = None,
        probe_interval: float = 0.25,
        on_close: Callable[[], object] | None = None,
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.probe_interval = probe_interval
        self._clock = clock
        self._probe = probe
        self._on_close = on_close
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        self._prober: threading.Thread | None = None
        self._stop = threading.Event()
        self.probes = 0
        """Background probes run so far (successful or not)."""

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
                self._start_prober()
                return True
            return False

    def close(self) -> None:
        """Stop the background probe (the breaker is not used afterwards)."""
        self._stop.set()

    def _start_prober(self) -> None:
        """Start the background probe unless one runs; the caller holds the lock."""
        if self._probe is None or self._stop.is_set():
            return
        if self._prober is not None and self._prober.is_alive():
            return  # (a thread inherited across a fork is not alive: a new one starts)
        self._prober = threading.Thread(
            target=self._probe_loop, name="llmproxy-redis-breaker-probe", daemon=True
        )
        self._prober.start()

    def _probe_loop(self) -> None:
        probe = self._probe
        assert probe is not None
        me = threading.current_thread()
        while not self._stop.wait(self.probe_interval):
            with self._lock:
                if self._open_until is None or self._prober is not me:
                    if self._prober is me:
                        self._prober = None
                    return  # closed by a call (or replaced): nothing left to do
            try:
                probe()
            except Exception as exc:  # still down: try again after the interval
                log.debug("circuit breaker probe failed: %s", exc)
                ok = False
            else:
                ok = True
            with self._lock:
                self.probes += 1
                if not ok:
                    continue
                self._failures = 0
                self._open_until = None
                self._probing = False
                if self._prober is me:
                    self._prober = None
            if self._on_close is not None:
                try:
                    self._on_close()
                except Exception:
                    log.warning("circuit breaker on_close callback failed", exc_info=True)
            return
