"""A ledger kept in this process's memory, and the admission rule every ledger shares.

:func:`admit` is the one place that decides a reservation from the state of its claims, so the
in-memory and the SQLite ledger grant and refuse identically (the Redis ledger's Lua script
follows it step by step).

Units inside a ledger: tokens and requests are counted as they are; ``usd`` claims are counted
in whole nano-dollars (:data:`USD_SCALE`), so that sums of many small costs stay exact and every
ledger agrees to the last unit. A hold is rounded up to the next nano-dollar, a limit down and
a settled cost to the nearest. Amounts given to and read from a ledger (limits, reservations,
:class:`~llmproxy.budget.base.ClaimUsage`, errors) are in dollars.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Final

from llmproxy.budget import periods
from llmproxy.budget.base import Claim, ClaimUsage, InlineAsync, Rates, Reservation
from llmproxy.errors import BudgetExceeded, InvalidRequest, RateLimited

SETTLED_GRACE: Final = 86400.0
"""The default settled grace: seconds a ledger remembers a settled or charged reservation id
(24 h), so that settling it again is a no-op and a late settle replaces a charge exactly once.
Later its id is forgotten. A setting: ``LLMPROXY_LEDGER_SETTLED_GRACE``."""

MEMORY_REMEMBERED: Final = 100_000
"""The most charged ids a :class:`MemoryLedger` remembers (the oldest go first), so that its
memory stays flat however many holds expire. Settled ids cost it nothing: see the class."""

_COMPACT_SLACK: Final = 64
"""Dead expiry-heap entries tolerated beyond the live holds before the heap is rebuilt."""

USD_SCALE: Final = 1e9
"""Ledgers count ``usd`` claims in nano-dollars: one dollar is this many units."""

USD_SLACK: Final = 1e-6
"""Float error (in nano-dollars) forgiven when a hold or limit is rounded to whole units: a
computed ``2999.9999999999995`` is 3000, not 3001."""

_UNITS: Final = frozenset(("tokens", "requests", "usd"))

_EventsOf = Callable[[int], Sequence[tuple[float, float]]]


def usd_limit(dollars: float) -> float:
    """A usd claim's limit in whole nano-dollars, rounded down (never above the limit)."""
    units = dollars * USD_SCALE
    return float(math.floor(units + USD_SLACK)) if math.isfinite(units) else units


def usd_hold(input_tokens: int, output_tokens: int, rate_in: float, rate_out: float) -> float:
    """Nano-dollars held for a call: ``rate_in``/``rate_out`` are nano-dollars per token.

    Rounded up, so a hold is never less than the call may cost. The Redis ledger's script
    computes exactly this expression, in this order.
    """
    return float(math.ceil(input_tokens * rate_in + output_tokens * rate_out - USD_SLACK))


def usd_rate(dollars_per_token: float) -> float:
    """A rate in nano-dollars per token, rounded to 1e-6 of a unit to drop float noise.

    ``1e-6 * USD_SCALE`` is ``1000.0000000000001`` in floats; rounded, holds and grants come out
    exact for every price given in whole fractions of a nano-dollar.
    """
    return round(dollars_per_token * USD_SCALE, 6)


def usd_units(cost: float) -> float:
    """A settled cost (dollars) in nano-dollars, rounded to the nearest unit."""
    return float(round(cost * USD_SCALE))


def check_arguments(
    claims: Sequence[Claim],
    input_tokens: int,
    max_output_tokens: int,
    min_output_tokens: int,
    lease: float,
    rates: Rates | None = None,
) -> Sequence[Claim]:
    """Return the claims to reserve, or raise InvalidRequest for arguments no ledger can honour.

    A claim listed twice (two identical policies) is counted once; one key claimed with two
    different limits, units or windows is refused. A ``usd`` claim needs ``rates``; a claim has
    a rolling ``window`` or a calendar ``period``, not both; ``tz`` must name a time zone.
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
    if rates is not None and not (
        0 <= rates.input < math.inf and 0 <= rates.output < math.inf  # also refuses NaN
    ):
        raise InvalidRequest(
            f"rates must be finite USD amounts per token >= 0, got {rates}", field="rates"
        )
    for claim in claims:
        unit = claim.unit
        if (unit != "tokens" and unit != "requests") or claim.period is not None:
            _check_claim(claim, rates)
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


def _check_claim(claim: Claim, rates: Rates | None) -> None:
    """Check what only usd and calendar claims can get wrong."""
    name = f"{claim.policy!r} ({claim.scope})"
    if claim.unit not in _UNITS:
        raise InvalidRequest(
            f"claim {name} has unit {claim.unit!r}: use tokens, requests or usd", field="claims"
        )
    if claim.unit == "usd" and rates is None:
        raise InvalidRequest(
            f"claim {name} counts usd but no rates were given: pass"
            " rates=Rates(input=..., output=...) in USD per token (the model's price)",
            field="rates",
        )
    if claim.period is not None:
        if claim.window is not None:
            raise InvalidRequest(
                f"claim {name} has both a rolling window and a calendar period; give one",
                field="claims",
            )
        if claim.period not in periods.PERIODS:
            raise InvalidRequest(
                f"claim {name} has period {claim.period!r}: use 'day' or 'month'", field="claims"
            )
        try:
            periods.zone(claim.tz)
        except ValueError as exc:
            raise InvalidRequest(f"claim {name}: {exc}", field="claims") from None


def check_settle(tokens: int, requests: int, cost: float = 0.0) -> None:
    """Raise InvalidRequest for negative (or not finite) settle amounts."""
    if tokens < 0 or requests < 0:
        raise InvalidRequest(
            f"settled amounts must be >= 0, got tokens={tokens} requests={requests}",
            field="tokens" if tokens < 0 else "requests",
        )
    if not 0 <= cost < math.inf:
        raise InvalidRequest(f"cost must be a finite USD amount >= 0, got {cost}", field="cost")


def retry_after(
    events: Sequence[tuple[float, float]], needed: float, window: float, now: float
) -> float:
    """Seconds until a full request window has room again.

    ``events`` are the window's settled ``(timestamp, amount)`` events oldest first and
    ``needed`` how many requests must leave it; when events cannot free enough (calls in flight
    hold the rest), one second, or the window if shorter.
    """
    freed = 0.0
    for timestamp, amount in events:
        freed += amount
        if freed >= needed:
            return max(timestamp + window - now, 0.001)
    # Calls in flight hold the rest; a slot frees when one is released or its event ages out.
    return min(1.0, window)


def resets_at(claim: Claim, now: float, events: Sequence[tuple[float, float]]) -> float | None:
    """When a claim's count next drops, or None for an all-time claim or an empty window.

    That is the end of its calendar period, or when its oldest event (``events`` oldest first)
    leaves its window.
    """
    if claim.period is not None:
        return periods.span(claim.period, claim.tz, now).end
    if claim.window is not None and events:
        return events[0][0] + claim.window
    return None


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
    rates: Rates | None = None,
) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Decide a reservation: return the output grant and the amount held per claim, or raise.

    ``used`` and ``reserved`` are each claim's settled use (in its window or current period)
    and held amount, in ledger units (nano-dollars for usd claims); ``events_of(i)`` returns
    claim ``i``'s in-window ``(timestamp, amount)`` events oldest first and is called only to
    explain a refusal. Request claims are checked first (a windowed one raises RateLimited,
    an all-time or calendar one BudgetExceeded in ``requests``); then the grant is
    ``max_output_tokens`` capped by the room of the tightest token or usd claim (for a usd
    claim: ``(room - input_tokens * rates.input) / rates.output`` tokens, floored, then lowered
    until the rounded-up hold fits), and BudgetExceeded names that claim when the grant is
    below ``min_output_tokens``.

    Returns ``(grant, held, amounts)``: ``held`` in ledger units (what the ledger adds to its
    reserved counts), ``amounts`` in the claims' units (for the Reservation).
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
                    resets_at=resets_at(claim, now, ()),
                )
            needed = used[index] + reserved[index] + 1 - claim.limit
            raise RateLimited(
                policy=claim.policy,
                scope=claim.scope,
                limit=claim.limit,
                window=claim.window,
                retry_after=retry_after(events_of(index), needed, claim.window, now),
            )
    grant = max_output_tokens
    tightest = -1
    tightest_room = math.inf
    dollars = False
    rate_in = rate_out = 0.0
    if rates is not None:
        rate_in, rate_out = usd_rate(rates.input), usd_rate(rates.output)
    for index, claim in enumerate(claims):
        unit = claim.unit
        if unit == "tokens":
            room = claim.limit - used[index] - reserved[index] - input_tokens
        elif unit == "usd":
            dollars = True
            left = usd_limit(claim.limit) - used[index] - reserved[index]
            if rate_out > 0:
                room = (left - input_tokens * rate_in) / rate_out
            elif usd_hold(input_tokens, 0, rate_in, rate_out) <= left:
                room = math.inf
            else:
                room = -math.inf
        else:
            continue
        if room < tightest_room:
            tightest, tightest_room = index, room
    if tightest_room < grant:
        grant = math.floor(tightest_room) if tightest_room > -math.inf else -1
    if dollars and grant >= min_output_tokens:
        # The room was computed in floats and the hold is rounded up: lower the grant until
        # every usd hold fits (one step at most in practice; four before giving up).
        for index, claim in enumerate(claims):
            if claim.unit != "usd":
                continue
            left = usd_limit(claim.limit) - used[index] - reserved[index]
            for _ in range(4):
                if usd_hold(input_tokens, grant, rate_in, rate_out) <= left:
                    break
                grant -= 1
            else:
                grant = -1
            if grant < min_output_tokens:
                tightest = index
                break
    if grant < min_output_tokens:
        claim = claims[tightest]
        events = events_of(tightest) if claim.window is not None else ()
        if claim.unit == "usd":
            assert rates is not None  # check_arguments refuses usd claims without rates
            raise BudgetExceeded(
                policy=claim.policy,
                scope=claim.scope,
                limit=claim.limit,
                used=used[tightest] / USD_SCALE,
                reserved=reserved[tightest] / USD_SCALE,
                requested=input_tokens * rates.input + min_output_tokens * rates.output,
                unit="usd",
                resets_at=resets_at(claim, now, events),
            )
        raise BudgetExceeded(
            policy=claim.policy,
            scope=claim.scope,
            limit=claim.limit,
            used=used[tightest],
            reserved=reserved[tightest],
            requested=input_tokens + min_output_tokens,
            unit="tokens",
            resets_at=resets_at(claim, now, events),
        )
    held, amounts = holds(claims, input_tokens, grant, rate_in, rate_out, dollars)
    return grant, held, amounts


def holds(
    claims: Sequence[Claim],
    input_tokens: int,
    grant: int,
    rate_in: float,
    rate_out: float,
    dollars: bool,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """What a call granted ``grant`` output tokens holds per claim: ``(held, amounts)``.

    ``held`` is in ledger units (the input plus the grant on a token claim, one on a request
    claim, the rounded-up cost in nano-dollars on a usd claim, whose ``rate_in``/``rate_out``
    are in nano-dollars per token); ``amounts`` is the same in the claims' units (dollars for
    usd). ``dollars`` says whether any claim counts usd.
    """
    held_tokens = float(input_tokens + grant)
    if not dollars:
        held = tuple(held_tokens if claim.unit == "tokens" else 1.0 for claim in claims)
        return held, held
    cost = usd_hold(input_tokens, grant, rate_in, rate_out)
    held = tuple(
        held_tokens if claim.unit == "tokens" else cost if claim.unit == "usd" else 1.0
        for claim in claims
    )
    amounts = tuple(
        cost / USD_SCALE if claim.unit == "usd" else amount
        for claim, amount in zip(claims, held, strict=True)
    )
    return held, amounts


def amount_settled(claim: Claim, tokens: int, requests: int, cost: float = 0.0) -> float:
    """What a settle records on ``claim``, in ledger units: tokens, requests or nano-dollars."""
    unit = claim.unit
    if unit == "tokens":
        return tokens
    if unit == "requests":
        return requests
    return usd_units(cost)


class _Window:
    """Settled events of one windowed key, oldest first, with their running sum.

    An event is a two-item list ``[timestamp, amount]`` (mutable: a late settle replaces a
    charge's amount in place).
    """

    __slots__ = ("events", "total")

    def __init__(self) -> None:
        self.events: deque[list[float]] = deque()
        self.total = 0.0

    def prune(self, now: float, window: float) -> None:
        """Drop events that have left the window (an event counts while ``ts > now - window``)."""
        events = self.events
        start = now - window
        while events and events[0][0] <= start:
            self.total -= events.popleft()[1]
        if not events:
            self.total = 0.0


class _Hold:
    """A reservation in flight: what it holds per claim (ledger units) and until when."""

    __slots__ = ("expires_at", "held", "reservation")

    def __init__(self, reservation: Reservation, held: tuple[float, ...]) -> None:
        self.reservation = reservation
        self.held = held
        self.expires_at = reservation.expires_at


class _Charge:
    """What expiry charged one claim of a reservation: the amount, when, and its event."""

    __slots__ = ("amount", "event", "ts")

    def __init__(self, amount: float, ts: float, event: list[float] | None) -> None:
        self.amount = amount
        self.ts = ts
        self.event = event  # the window event holding the charge (windowed claims)


class MemoryLedger(InlineAsync):
    """A :class:`~llmproxy.budget.base.Ledger` in this process's memory, shared by threads.

    Use it for one process; several processes need :class:`~llmproxy.budget.sqlite.SQLiteLedger`
    or a server-backed ledger. ``clock`` gives the time in seconds (tests pass a fake one).

    Semantics shared with every llmproxy ledger: a ``requests`` claim with a window raises
    :class:`~llmproxy.errors.RateLimited`, one without a window is a request budget (all-time
    or per calendar period) and raises :class:`~llmproxy.errors.BudgetExceeded` in
    ``requests``; a windowed event counts while ``timestamp > now - window``; a calendar claim
    counts what was settled in the current period (see :mod:`llmproxy.budget.periods`), and a
    settle counts in the period it happens in. Unknown is spent: a reservation neither settled
    nor renewed (:meth:`renew`) once ``now >= expires_at`` is charged in full, as used at its
    expiry; a later settle replaces the charge exactly once (per claim: used grows by the real
    amount minus the charge, never below zero; a charge that has left its window or period is
    only topped up when the real amount is larger). Settling twice is a no-op. The async
    methods run the sync ones inline (microseconds).

    Memory per call is bounded by the calls in flight, not by the calls seen (see
    ``bench/bench_soak.py``). The ledger issues its reservation ids itself, so an id it is
    asked to settle is in one of three states: held (in flight), charged (its hold expired;
    the charge is remembered for ``settled_grace`` seconds and at most ``max_remembered`` of
    them, the oldest forgotten first), or done. Done needs no record: whether settled, a
    charge forgotten, or an id this ledger never issued, a settle of it is a no-op. So
    settling twice is a no-op for ever, whatever the grace, and a late settle replaces a
    remembered charge exactly once (the record goes with it) and leaves a forgotten one alone:
    the full charge then stands (unknown is spent: it under-uses, never overspends). A settled
    or renewed hold leaves a dead entry in the expiry heap, which is rebuilt from the live
    holds when dead entries outnumber them. Windowed claims keep one event per settle for the
    length of their window (what a rolling window must count).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        settled_grace: float = SETTLED_GRACE,
        max_remembered: int = MEMORY_REMEMBERED,
    ) -> None:
        if not settled_grace > 0 or max_remembered < 1:
            raise InvalidRequest(
                "settled_grace must be positive seconds and max_remembered >= 1, got"
                f" settled_grace={settled_grace} max_remembered={max_remembered}",
                field="settled_grace" if not settled_grace > 0 else "max_remembered",
            )
        self._clock = clock
        self._grace = settled_grace
        self._max_remembered = max_remembered
        self._lock = threading.Lock()
        self._totals: dict[str, float] = {}
        self._windows: dict[str, _Window] = {}
        self._periods: dict[str, tuple[str, float]] = {}
        self._reserved: dict[str, float] = {}
        self._active: dict[str, _Hold] = {}
        # (expires_at, id) per hold, and dead entries of holds settled or renewed since
        self._expiry: list[tuple[float, str]] = []
        # charged id -> (keep until, the charge per claim key), oldest first
        self._outcomes: OrderedDict[str, tuple[float, dict[str, _Charge]]] = OrderedDict()
        # Ids are this prefix and a counter: unique across ledgers, cheaper than a uuid4 each.
        self._prefix = f"m{uuid.uuid4().hex[:16]}-"
        self._ids = itertools.count()

    def now(self) -> float:
        """The ledger's clock."""
        return self._clock()

    def reserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Rates | None = None,
    ) -> Reservation:
        """Hold room on every claim atomically or raise (see the Ledger protocol)."""
        claims = check_arguments(
            claims, input_tokens, max_output_tokens, min_output_tokens, lease, rates
        )
        with self._lock:
            reservation_id = f"{self._prefix}{next(self._ids):x}"
            now = self._clock()
            self._expire(now)
            used = [self._used(claim, now) for claim in claims]
            reserved = [self._reserved.get(claim.key, 0.0) for claim in claims]
            grant, held, amounts = admit(
                claims,
                used,
                reserved,
                lambda index: self._events(claims[index]),
                now=now,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
                min_output_tokens=min_output_tokens,
                rates=rates,
            )
            reservation = Reservation(
                reservation_id, tuple(claims), amounts, grant, input_tokens, now + lease
            )
            for claim, amount in zip(claims, held, strict=True):
                self._reserved[claim.key] = self._reserved.get(claim.key, 0.0) + amount
            self._active[reservation_id] = _Hold(reservation, held)
            heapq.heappush(self._expiry, (reservation.expires_at, reservation_id))
        return reservation

    def renew(self, reservation: Reservation, *, lease: float) -> bool:
        """Push the hold's expiry to ``now + lease``; False once it is settled or charged."""
        if not lease > 0:
            raise InvalidRequest(
                f"lease must be a positive number of seconds, got {lease}", field="lease"
            )
        with self._lock:
            now = self._clock()
            self._expire(now)
            hold = self._active.get(reservation.id)
            if hold is None:
                return False
            until = now + lease
            if until > hold.expires_at:
                hold.expires_at = until
                heapq.heappush(self._expiry, (until, reservation.id))
                self._compact()
            return True

    def settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        """Record ``tokens``, ``requests`` and ``cost`` and drop the hold; a repeat is a no-op.

        Settling a reservation whose hold was charged at expiry replaces the charge.
        """
        check_settle(tokens, requests, cost)
        with self._lock:
            now = self._clock()
            self._expire(now)
            reservation_id = reservation.id
            hold = self._active.pop(reservation_id, None)
            if hold is not None:
                self._release(hold)
                for claim in reservation.claims:
                    self._add(claim, now, amount_settled(claim, tokens, requests, cost))
                self._compact()
                return
            outcome = self._outcomes.pop(reservation_id, None)
            if outcome is None:
                return  # settled already, a charge forgotten, or not an id of this ledger
            charges = outcome[1]
            for claim in reservation.claims:
                charge = charges.get(claim.key)
                if charge is not None:
                    self._replace(claim, charge, amount_settled(claim, tokens, requests, cost), now)

    def record(
        self, claims: Sequence[Claim], *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        """Count use that no hold of this ledger covered (a call another ledger reserved).

        A Redis ledger failing open counts here what its calls spend while Redis is away, so
        the process keeps refusing calls past a limit; :meth:`settle` would ignore such an id.
        """
        check_settle(tokens, requests, cost)
        with self._lock:
            now = self._clock()
            self._expire(now)
            for claim in claims:
                self._add(claim, now, amount_settled(claim, tokens, requests, cost))

    def usage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        """Return the state of each claim; ``resets_at`` is when its count next drops."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            result = []
            for claim in claims:
                used = self._used(claim, now)
                reserved = self._reserved.get(claim.key, 0.0)
                window = self._windows.get(claim.key) if claim.window is not None else None
                reset = resets_at(claim, now, self._events(claim) if window is not None else ())
                if claim.unit == "usd":
                    used, reserved = used / USD_SCALE, reserved / USD_SCALE
                result.append(ClaimUsage(claim, used, reserved, reset))
            return result

    def close(self) -> None:
        """Do nothing: there is no connection to release."""

    # Helpers; the caller holds the lock.

    def _used(self, claim: Claim, now: float) -> float:
        if claim.window is not None:
            window = self._windows.get(claim.key)
            if window is None:
                return 0.0
            window.prune(now, claim.window)
            return window.total
        if claim.period is not None:
            stored = self._periods.get(claim.key)
            if stored is None or stored[0] < periods.span(claim.period, claim.tz, now).id:
                return 0.0
            return stored[1]
        return self._totals.get(claim.key, 0.0)

    def _events(self, claim: Claim) -> list[tuple[float, float]]:
        # Called after _used (or prune) for the same key at the same time: the deque is current.
        window = self._windows.get(claim.key)
        return [(ts, amount) for ts, amount in window.events] if window is not None else []

    def _add(self, claim: Claim, ts: float, amount: float) -> list[float] | None:
        """Count ``amount`` as used at ``ts``; return the window event it made, if any.

        ``ts`` is now, or a charge's expiry (never earlier than an event already counted).
        """
        if not amount:
            return None
        if claim.window is not None:
            window = self._windows.get(claim.key)
            if window is None:
                window = self._windows[claim.key] = _Window()
            window.prune(ts, claim.window)
            event = [ts, float(amount)]
            window.events.append(event)
            window.total += amount
            return event
        if claim.period is not None:
            period = periods.span(claim.period, claim.tz, ts).id
            stored = self._periods.get(claim.key)
            if stored is None or stored[0] < period:
                self._periods[claim.key] = (period, float(amount))
            elif stored[0] == period:
                self._periods[claim.key] = (period, stored[1] + amount)
            # (a charge in a period already over counts nothing now)
            return None
        self._totals[claim.key] = self._totals.get(claim.key, 0.0) + amount
        return None

    def _replace(self, claim: Claim, charge: _Charge, real: float, now: float) -> None:
        """Replace a charge by the real amount (a late settle), never below zero."""
        diff = real - charge.amount
        if claim.window is not None:
            window = self._windows.get(claim.key)
            if window is not None:
                window.prune(now, claim.window)
            event = charge.event
            # An event counts while ts > now - window, and only events that left it are pruned.
            if window is not None and event is not None and event[0] > now - claim.window:
                event[1] = float(real)
                window.total += diff
                return
            if diff > 0:
                self._add(claim, now, diff)
            return
        if claim.period is not None:
            period = periods.span(claim.period, claim.tz, now).id
            stored = self._periods.get(claim.key)
            if (
                charge.ts > -math.inf
                and stored is not None
                and stored[0] == period
                and periods.span(claim.period, claim.tz, charge.ts).id == period
            ):
                self._periods[claim.key] = (period, max(stored[1] + diff, 0.0))
            elif diff > 0:
                self._add(claim, now, diff)
            return
        self._totals[claim.key] = max(self._totals.get(claim.key, 0.0) + diff, 0.0)

    def _remember(self, reservation_id: str, now: float, charges: dict[str, _Charge]) -> None:
        outcomes = self._outcomes
        outcomes[reservation_id] = (now + self._grace, charges)
        while outcomes:
            oldest_id, (keep_until, _charges) = next(iter(outcomes.items()))
            if keep_until >= now and len(outcomes) <= self._max_remembered:
                break
            del outcomes[oldest_id]

    def _compact(self) -> None:
        """Rebuild the expiry heap from the live holds once dead entries outnumber them.

        Each settle and renew leaves one dead entry; a rebuild costs O(live holds) and comes
        after at least that many dead entries, so it is O(1) per call amortised and the heap
        holds at most twice the calls in flight (plus a little slack).
        """
        expiry = self._expiry
        if len(expiry) <= 2 * len(self._active) + _COMPACT_SLACK:
            return
        expiry[:] = [(hold.expires_at, rid) for rid, hold in self._active.items()]
        heapq.heapify(expiry)

    def _expire(self, now: float) -> None:
        """Charge in full every hold whose lease ended (unknown is spent), oldest first."""
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            expires_at, reservation_id = heapq.heappop(expiry)
            hold = self._active.get(reservation_id)
            if hold is None or hold.expires_at != expires_at:
                continue  # settled, or renewed (a later entry stands for it)
            del self._active[reservation_id]
            self._release(hold)
            charges: dict[str, _Charge] = {}
            for claim, amount in zip(hold.reservation.claims, hold.held, strict=True):
                event = self._add(claim, expires_at, amount)
                charges[claim.key] = _Charge(amount, expires_at, event)
            self._remember(reservation_id, expires_at, charges)

    def _release(self, hold: _Hold) -> None:
        reserved = self._reserved
        for claim, amount in zip(hold.reservation.claims, hold.held, strict=True):
            left = reserved.get(claim.key, 0.0) - amount
            if left > 0:
                reserved[claim.key] = left
            else:
                reserved.pop(claim.key, None)
