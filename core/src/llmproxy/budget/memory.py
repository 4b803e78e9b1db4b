"""A ledger kept in this process's memory, and the admission rule every ledger shares.

:func:`admit` is the one place that decides a reservation from the state of its claims, so the
in-memory and the SQLite ledger grant and refuse identically.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from llmproxy.budget.base import Claim, ClaimUsage, Reservation
from llmproxy.errors import BudgetExceeded, InvalidRequest, RateLimited

SETTLED_GRACE: Final = 3600.0
"""Seconds after a reservation's lease ends during which settling it again is still known to
be a repeat (a no-op); later its id is forgotten."""

_EventsOf = Callable[[int], Sequence[tuple[float, float]]]


def check_arguments(
    claims: Sequence[Claim],
    input_tokens: int,
    max_output_tokens: int,
    min_output_tokens: int,
    lease: float,
) -> Sequence[Claim]:
    """Return the claims to reserve, or raise InvalidRequest for arguments no ledger can honour.

    A claim listed twice (two identical policies) is counted once; one key claimed with two
    different limits, units or windows is refused.
    """
    if input_tokens < 0:
        raise InvalidRequest(f"input_tokens must be >= 0, got {input_tokens}", field="input_tokens")
    if min_output_tokens < 0 or max_output_tokens < min_output_tokens:
        raise InvalidRequest(
            "output token bounds must satisfy 0 <= min_output_tokens <= max_output_tokens,"
            f" got min {min_output_tokens} and max {max_output_tokens}",
            field="max_output_tokens",
        )
    if not lease > 0:
        raise InvalidRequest(
            f"lease must be a positive number of seconds, got {lease}", field="lease"
        )
    if len(claims) < 2 or len({claim.key for claim in claims}) == len(claims):
        return claims
    unique: dict[str, Claim] = {}
    for claim in claims:
        first = unique.setdefault(claim.key, claim)
        if first != claim:
            raise InvalidRequest(
                f"ledger key {claim.key!r} is claimed twice with different terms ({first} and"
                f" {claim}); give the policies distinct names",
                field="claims",
            )
    return tuple(unique.values())


def check_settle(tokens: int, requests: int) -> None:
    """Raise InvalidRequest for negative settle amounts."""
    if tokens < 0 or requests < 0:
        raise InvalidRequest(
            f"settled amounts must be >= 0, got tokens={tokens} requests={requests}",
            field="tokens" if tokens < 0 else "requests",
        )


def _retry_after(
    events: Sequence[tuple[float, float]], needed: float, window: float, now: float
) -> float:
    """Seconds until enough settled events leave the window to free ``needed`` requests."""
    freed = 0.0
    for timestamp, amount in events:
        freed += amount
        if freed >= needed:
            return max(timestamp + window - now, 0.001)
    # Calls in flight hold the rest; a slot frees when one is released or its event ages out.
    return min(1.0, window)


def admit(
    claims: Sequence[Claim],
    used: Sequence[float],
    reserved: Sequence[float],
    events_of: _EventsOf,
    *,
    now: float,
    input_tokens: int,
    max_output_tokens: int,
    min_output_tokens: int,
) -> tuple[int, tuple[float, ...]]:
    """Decide a reservation: return the output grant and the amount held per claim, or raise.

    ``used`` and ``reserved`` are each claim's settled use (in its window) and held amount;
    ``events_of(i)`` returns claim ``i``'s in-window ``(timestamp, amount)`` events oldest first
    and is called only to explain a refusal. Request claims are checked first (a windowed one
    raises RateLimited, an all-time one BudgetExceeded in ``requests``); then the grant is
    ``max_output_tokens`` capped by the room of the tightest token claim, and BudgetExceeded
    names that claim when the grant is below ``min_output_tokens``.
    """
    for index, claim in enumerate(claims):
        if claim.unit == "requests" and used[index] + reserved[index] + 1 > claim.limit:
            if claim.window is None:
                raise BudgetExceeded(
                    policy=claim.policy,
                    scope=claim.scope,
                    limit=claim.limit,
                    used=used[index],
                    reserved=reserved[index],
                    requested=1,
                    unit="requests",
                )
            needed = used[index] + reserved[index] + 1 - claim.limit
            raise RateLimited(
                policy=claim.policy,
                scope=claim.scope,
                limit=claim.limit,
                window=claim.window,
                retry_after=_retry_after(events_of(index), needed, claim.window, now),
            )
    grant = max_output_tokens
    tightest = -1
    tightest_room = math.inf
    for index, claim in enumerate(claims):
        if claim.unit == "tokens":
            room = claim.limit - used[index] - reserved[index] - input_tokens
            if room < tightest_room:
                tightest, tightest_room = index, room
    if tightest_room < grant:
        grant = math.floor(tightest_room)
    if grant < min_output_tokens:
        claim = claims[tightest]
        resets_at = None
        if claim.window is not None:
            events = events_of(tightest)
            resets_at = events[0][0] + claim.window if events else None
        raise BudgetExceeded(
            policy=claim.policy,
            scope=claim.scope,
            limit=claim.limit,
            used=used[tightest],
            reserved=reserved[tightest],
            requested=input_tokens + min_output_tokens,
            unit="tokens",
            resets_at=resets_at,
        )
    held = float(input_tokens + grant)
    return grant, tuple(held if claim.unit == "tokens" else 1.0 for claim in claims)


def amount_settled(claim: Claim, tokens: int, requests: int) -> int:
    """What a settle records on ``claim``: tokens on token claims, requests on request claims."""
    return tokens if claim.unit == "tokens" else requests


class _Window:
    """Settled events of one windowed key, oldest first, with their running sum."""

    __slots__ = ("events", "total")

    def __init__(self) -> None:
        self.events: deque[tuple[float, float]] = deque()
        self.total = 0.0

    def prune(self, now: float, window: float) -> None:
        """Drop events that have left the window (an event counts while ``ts > now - window``)."""
        events = self.events
        start = now - window
        while events and events[0][0] <= start:
            self.total -= events.popleft()[1]
        if not events:
            self.total = 0.0


class MemoryLedger:
    """A :class:`~llmproxy.budget.base.Ledger` in this process's memory, shared by threads.

    Use it for one process; several processes need :class:`~llmproxy.budget.sqlite.SQLiteLedger`
    or a server-backed ledger. ``clock`` gives the time in seconds (tests pass a fake one).

    Semantics shared with every llmproxy ledger: a ``requests`` claim with a window raises
    :class:`~llmproxy.errors.RateLimited`, one without a window is an all-time request budget
    and raises :class:`~llmproxy.errors.BudgetExceeded` in ``requests``; a windowed event counts
    while ``timestamp > now - window``; a reservation is dropped once ``now >= expires_at``;
    settling an expired reservation still records what it used; settling twice is a no-op.
    The async methods run the sync ones inline (microseconds of work).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._totals: dict[str, float] = {}
        self._windows: dict[str, _Window] = {}
        self._reserved: dict[str, float] = {}
        self._active: dict[str, Reservation] = {}
        self._expiry: list[tuple[float, str]] = []
        self._settled: dict[str, float] = {}
        self._settled_expiry: list[tuple[float, str]] = []

    def reserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
    ) -> Reservation:
        """Hold room on every claim atomically or raise (see the Ledger protocol)."""
        claims = check_arguments(claims, input_tokens, max_output_tokens, min_output_tokens, lease)
        reservation_id = uuid.uuid4().hex
        with self._lock:
            now = self._clock()
            self._expire(now)
            used = [self._used(claim, now) for claim in claims]
            reserved = [self._reserved.get(claim.key, 0.0) for claim in claims]
            grant, amounts = admit(
                claims,
                used,
                reserved,
                lambda index: self._events(claims[index]),
                now=now,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
                min_output_tokens=min_output_tokens,
            )
            reservation = Reservation(
                reservation_id, tuple(claims), amounts, grant, input_tokens, now + lease
            )
            for claim, amount in zip(claims, amounts, strict=True):
                self._reserved[claim.key] = self._reserved.get(claim.key, 0.0) + amount
            self._active[reservation_id] = reservation
            heapq.heappush(self._expiry, (reservation.expires_at, reservation_id))
        return reservation

    def settle(self, reservation: Reservation, *, tokens: int, requests: int = 1) -> None:
        """Record ``tokens`` and ``requests`` really used and drop the hold; a repeat is a no-op."""
        check_settle(tokens, requests)
        with self._lock:
            now = self._clock()
            reservation_id = reservation.id
            if reservation_id in self._settled:
                return
            held = self._active.pop(reservation_id, None)
            if held is not None:
                self._release(held)
            for claim in reservation.claims:
                amount = amount_settled(claim, tokens, requests)
                if not amount:
                    continue
                if claim.window is None:
                    self._totals[claim.key] = self._totals.get(claim.key, 0.0) + amount
                else:
                    window = self._windows.get(claim.key)
                    if window is None:
                        window = self._windows[claim.key] = _Window()
                    window.prune(now, claim.window)
                    window.events.append((now, float(amount)))
                    window.total += amount
            keep_until = max(now, reservation.expires_at) + SETTLED_GRACE
            self._settled[reservation_id] = keep_until
            settled_expiry = self._settled_expiry
            heapq.heappush(settled_expiry, (keep_until, reservation_id))
            while settled_expiry and settled_expiry[0][0] < now:
                del self._settled[heapq.heappop(settled_expiry)[1]]

    def usage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        """Return the state of each claim; ``resets_at`` is when a window's oldest event leaves."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            result = []
            for claim in claims:
                used = self._used(claim, now)
                resets_at = None
                if claim.window is not None:
                    window = self._windows.get(claim.key)
                    if window is not None and window.events:
                        resets_at = window.events[0][0] + claim.window
                result.append(
                    ClaimUsage(claim, used, self._reserved.get(claim.key, 0.0), resets_at)
                )
            return result

    def close(self) -> None:
        """Do nothing: there is no connection to release."""

    async def areserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
    ) -> Reservation:
        """Async :meth:`reserve` (runs inline)."""
        return self.reserve(
            claims,
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            min_output_tokens=min_output_tokens,
            lease=lease,
        )

    async def asettle(self, reservation: Reservation, *, tokens: int, requests: int = 1) -> None:
        """Async :meth:`settle` (runs inline)."""
        self.settle(reservation, tokens=tokens, requests=requests)

    async def ausage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        """Async :meth:`usage` (runs inline)."""
        return self.usage(claims)

    # Helpers; the caller holds the lock.

    def _used(self, claim: Claim, now: float) -> float:
        if claim.window is None:
            return self._totals.get(claim.key, 0.0)
        window = self._windows.get(claim.key)
        if window is None:
            return 0.0
        window.prune(now, claim.window)
        return window.total

    def _events(self, claim: Claim) -> list[tuple[float, float]]:
        # Called after _used (or prune) for the same key at the same time: the deque is current.
        window = self._windows.get(claim.key)
        return list(window.events) if window is not None else []

    def _expire(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            held = self._active.pop(heapq.heappop(expiry)[1], None)
            if held is not None:
                self._release(held)

    def _release(self, held: Reservation) -> None:
        reserved = self._reserved
        for claim, amount in zip(held.claims, held.amounts, strict=True):
            left = reserved.get(claim.key, 0.0) - amount
            if left > 0:
                reserved[claim.key] = left
            else:
                reserved.pop(claim.key, None)
