"""Keeping the holds of live calls alive, so that no lease length can cause an overspend.

A reservation is held for ``reservation_lease`` seconds; a hold that is neither settled nor
renewed by then is charged in full by the ledger (unknown is spent: its owner may have died
with the call at the upstream). A call that runs longer than the lease, or a stream read
slowly, must therefore renew its hold while it lives. :class:`Renewer` does that for every call
of one Proxy: the flow tells it when a hold starts and ends, and one daemon thread renews each
live hold every third of its lease. The thread exists only while some hold does.

Ledgers renew through the optional ``renew(reservation, *, lease) -> bool`` of
:class:`~llmproxy.budget.base.RenewableLedger`; a ledger without it is not renewed (its holds
then last their lease, as before).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from llmproxy.budget.base import Ledger, Reservation

log = logging.getLogger("llmproxy.renewal")

MIN_INTERVAL = 0.05
"""The shortest wait between two renewal passes, in seconds (for very short test leases)."""

LINGER = 5.0
"""How long the thread waits for a new hold once none is live before it ends, in seconds:
back-to-back calls keep one thread instead of starting one each."""


class Renewer:
    """Renews the holds of one Proxy's calls in flight, every third of the lease.

    ``ledger`` returns the Proxy's ledger (opened lazily by the Proxy); ``lease`` is the
    reservation lease in seconds; ``clock`` is monotonic seconds (tests pass their own).
    ``max_age`` (seconds) is the longest a call may run (its deadline): a hold still live after
    ``max_age`` plus one lease belongs to a call that was lost without settling, and is no
    longer renewed, so that it expires and is charged in full rather than held forever.
    """

    def __init__(
        self,
        ledger: Callable[[], Ledger],
        lease: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_age: float | None = None,
    ) -> None:
        self._ledger = ledger
        self._lease = lease
        self._interval = max(lease / 3.0, MIN_INTERVAL)
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._max_age = None if max_age is None else max_age + lease
        self._live: dict[str, tuple[Reservation, float, float]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self.renewals = 0
        """How many renewals were sent (for tests and diagnostics)."""

    @property
    def interval(self) -> float:
        """Seconds between two renewals of one hold."""
        return self._interval

    def hold(self, reservation: Reservation) -> None:
        """A hold started: renew it while it lives."""
        with self._lock:
            if self._closed:
                return
            now = self._clock()
            # No wake-up: a new hold is due a whole interval from now, after every hold the
            # thread already waits for (and a thread lingering with none looks again when its
            # wait ends). Waking it on every call would cost a thread switch per call.
            self._live[reservation.id] = (reservation, now + self._interval, now)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="llmproxy-renewer", daemon=True
                )
                self._thread.start()

    def release(self, reservation: Reservation) -> None:
        """A hold ended (settled or released): stop renewing it."""
        with self._lock:
            self._live.pop(reservation.id, None)

    def live(self) -> int:
        """How many holds are being kept alive."""
        with self._lock:
            return len(self._live)

    def close(self) -> None:
        """Stop renewing and let the thread end."""
        with self._lock:
            self._closed = True
            self._live.clear()
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _due(self) -> list[Reservation] | None:
        """Wait until some hold is due; return the due ones, or None when nothing is live."""
        with self._lock:
            while True:
                if not self._live and not self._closed:
                    self._wake.wait(timeout=min(LINGER, self._interval))
                if self._closed or not self._live:
                    self._thread = None
                    return None
                now = self._clock()
                due = [(r, since) for r, at, since in self._live.values() if at <= now]
                if due:
                    renew = []
                    for reservation, since in due:
                        if self._max_age is not None and now - since > self._max_age:
                            del self._live[reservation.id]  # lost: let it expire, charged
                            continue
                        self._live[reservation.id] = (reservation, now + self._interval, since)
                        renew.append(reservation)
                    if renew:
                        return renew
                    continue
                soonest = min(at for _r, at, _s in self._live.values())
                self._wake.wait(timeout=max(soonest - now, 0.001))

    def _run(self) -> None:
        while True:
            due = self._due()
            if due is None:
                return
            renew = getattr(self._ledger(), "renew", None)
            if renew is None:
                with self._lock:  # nothing to renew with: stop trying for these holds
                    for reservation in due:
                        self._live.pop(reservation.id, None)
                continue
            for reservation in due:
                try:
                    alive = renew(reservation, lease=self._lease)
                except Exception:
                    # The ledger is unreachable: the next pass tries again. If the hold
                    # expires meanwhile it is charged in full, never lost as unspent.
                    log.warning("could not renew a hold; retrying", exc_info=True)
                    continue
                self.renewals += 1
                if alive is False:
                    self.release(reservation)


__all__ = ["LINGER", "MIN_INTERVAL", "Renewer"]
