"""Budget leasing: admit most calls in this process, against shares held in a shared ledger.

A :class:`~llmproxy.budget.sqlite.SQLiteLedger` makes two write transactions per call (reserve
and settle) on a file every process shares. Under load they cost more than the rest of the
budget check together. :class:`LeasingLedger` takes them off the call's path and keeps budgets
exact:

- For each claim's key it holds a *lease* in the shared ledger: an ordinary hold, so every
  other process counts it as reserved. A call whose holds (computed as the shared ledger would:
  the input plus the full output cap, one request, the rounded-up cost) fit in the free part of
  the leases of all its claims is admitted here, in memory, with the output cap it asked for.
- A settle here records what the call used in memory and frees the rest of its hold.
- Every ``interval`` seconds while there is work, one transaction
  (:meth:`SQLiteLedger.sync_lease`) writes the batch of settles and resizes the leases. Used
  from an event loop, the loop runs it itself (a transaction there costs a fraction of a
  millisecond, and a thread would have to win the interpreter lock from the loop for each of
  its SQLite calls); it skips a turn rather than wait while another process writes. A thread
  does it for synchronous callers, and backs up a loop that stopped. A lease that runs low
  becomes what this process's calls in flight hold plus room for twice its busiest stretch of
  calls between syncs lately (at least ``min_calls`` calls' worth), taken from at most an
  eighth of what the others leave, and none when that share cannot hold one call. A lease
  unused for ``idle`` seconds is given back.
- Any call that does not fit (no lease yet, a lease too small, a claim whose terms changed, a
  lease too close to its end) goes to the shared ledger as before, which grants, caps and
  refuses exactly as without leasing.

So the sum of everything held and used never exceeds a limit: a lease is a hold, and a call
admitted here is inside one. What changes: another process sees this one's settles up to
``interval`` seconds late (:meth:`LeasingLedger.usage` syncs this process first), and near a
limit the free part of other processes' leases (at most an eighth of the room each, and none
once the room is under eight calls' holds) counts as reserved until they give it back.

Why a killed process can never make a budget overspend (unknown is spent). The leases are
holds in the shared ledger that last ``ttl`` seconds (``LLMPROXY_LEDGER_LEASE_SECONDS``,
default 900) unless synced again; the sync renews each lease at least every ``min(60, ttl/3)``
seconds while the process lives. A call admitted here lives inside its process's leases: it
holds part of them, and :meth:`LeasingLedger.renew` only pushes its own expiry in this process
(the lease around it is renewed by the sync anyway). If the process is killed, nothing renews
its leases: they expire and the shared ledger charges each in full, as used at its expiry.
Everything the dead process could have spent is inside those leases: its calls in flight held
part of them, and its settles not yet written (at most ``interval`` seconds of them) were
still counted in them (a settle here frees nothing in the shared ledger until it is written,
when the lease shrinks by the same amount). So the charge is at least what the dead process
really used and not yet wrote: its unsynced settles are never lost as unspent; at worst the
unused part of its leases stays spent (a crash can under-use a budget, never overspend it),
and other processes wait at most ``ttl`` for it. A lease that expires while its process lives
(every sync failed for ``ttl`` seconds) is charged the same way; the process's next sync then
replaces that charge with what its calls used (see
:meth:`~llmproxy.budget.sqlite.SQLiteLedger.sync_lease`). A call admitted here that is neither
settled nor renewed by its own expiry (its owner lost it) is charged in full in the next sync,
and a later settle replaces that charge once.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import math
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Final

from llmproxy.budget.base import Claim, ClaimUsage, InlineAsync, Rates, Reservation
from llmproxy.budget.memory import (
    SETTLED_GRACE,
    USD_SCALE,
    amount_settled,
    check_arguments,
    check_settle,
    holds,
    usd_rate,
)
from llmproxy.budget.sqlite import SQLiteLedger
from llmproxy.errors import BudgetExceeded, InvalidRequest, RateLimited
from llmproxy.secret import logger as secret_logger

log = secret_logger("llmproxy.budget")

LEASE_TTL: Final = 900.0
"""The default budget-lease length: seconds a lease stays held in the shared ledger after its
last sync (``LLMPROXY_LEDGER_LEASE_SECONDS``). It bounds how long a killed process's leases
keep budget from the others; its leases are then charged in full."""

_REFRESH: Final = 60.0
"""A lease's hold is renewed (its ttl restarted) at least this often, seconds, while held (or
every third of the ttl, if shorter)."""

_PEAK_HALF_LIFE: Final = 5.0
"""Seconds over which a lease's memory of its busiest stretch between syncs halves."""

_BACKUP: Final = 1.0
"""Seconds between the thread's syncs while an event loop's ticks do the work."""

_LOCAL: Final = "l"
"""Ids of reservations admitted from a lease start with this (a shared ledger's are hex)."""


class _Lease:
    """One key's lease, in ledger units. ``free`` = ``held - inflight - pending``."""

    __slots__ = (
        "admitted",
        "claim",
        "expires_at",
        "frozen",
        "held",
        "inflight",
        "last_used",
        "misses",
        "need",
        "peak",
        "peak_at",
        "pending",
        "retry_at",
        "synced",
    )

    def __init__(self, claim: Claim, now: float) -> None:
        self.claim = claim  # the terms last seen in a call
        self.synced: Claim | None = None  # the terms the hold was sized under
        self.held = 0.0  # the hold in the shared ledger, as of the last sync
        self.inflight = 0.0  # what calls admitted here hold
        self.pending = 0.0  # what settled calls used, not yet written
        self.need = 0.0  # the largest single call's hold seen
        self.admitted = 0  # calls admitted here since the last sync
        self.misses = 0  # calls sent to the shared ledger since the last sync
        self.last_used = now
        self.expires_at = 0.0  # the hold's end in the shared ledger
        self.retry_at = now  # misses ask for a bigger lease from then on
        self.frozen = False  # shrinking in a background sync: admits nothing meanwhile
        self.peak = 0.0  # the most calls seen between two syncs, halving every few seconds
        self.peak_at = now


class _Local:
    """A reservation admitted from leases."""

    __slots__ = ("claims", "expires_at", "held", "leases")

    def __init__(
        self,
        claims: Sequence[Claim],
        leases: list[_Lease],
        held: tuple[float, ...],
        expires_at: float,
    ) -> None:
        self.claims = claims
        self.leases = leases
        self.held = held
        self.expires_at = expires_at


class _State:
    """Everything the background thread and the finalizer share (not the ledger object)."""

    def __init__(
        self, inner: SQLiteLedger, interval: float, idle: float, min_calls: int, ttl: float
    ) -> None:
        self.inner = inner
        self.interval = interval
        self.idle = idle
        self.min_calls = min_calls
        self.ttl = ttl
        self.refresh = min(_REFRESH, ttl / 3.0)
        self.reset()

    def reset(self) -> None:
        """Start empty: at creation, and in a forked child (the parent's leases stay its own)."""
        self.lock = threading.Lock()  # the state below; held for microseconds
        self.sync_lock = threading.Lock()  # one sync at a time; taken before ``lock``
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()
        self.owner = f"lease-{uuid.uuid4().hex[:16]}"
        self.prefix = f"{_LOCAL}{uuid.uuid4().hex[:12]}-"
        self.ids = itertools.count()
        self.leases: dict[str, _Lease] = {}
        self.local: dict[str, _Local] = {}
        self.expired: dict[str, _Local] = {}
        self.settled: list[tuple[Claim, float, str, float]] = []
        # calls admitted here whose hold expired unsettled: (claim, expires_at, id, amount)
        self.charged: list[tuple[Claim, float, str, float]] = []
        self.closed: bool = getattr(self, "closed", False)  # a child of a closed one is too
        self.failing = False
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop whose ticks sync
        self.ticking = False  # a tick is scheduled on ``loop``
        self.ticked = 0.0  # when a tick last ran (monotonic seconds)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sync from ``loop`` every ``interval`` seconds (the thread then only backs it up).

        Called by the async methods: a sync on the loop that runs the calls costs a fraction
        of a millisecond every ``interval`` and hands the interpreter lock to no thread.
        """
        if self.ticking and self.loop is loop:
            return
        with self.lock:
            if self.ticking and self.loop is loop:
                return
            self.loop = loop
            self.ticking = True
        loop.call_later(self.interval, self.tick, loop)

    def tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """One sync on the loop; scheduled again while there is anything to sync."""
        with self.lock:
            if self.loop is not loop:
                return  # attached to another loop since
            self.ticking = False
            if self.closed or self.pid != os.getpid():
                return
        self.ticked = time.monotonic()
        try:
            self.sync(release=False, wait=False)
        except Exception:  # sync logs store failures; anything else must not end the ticks
            log.exception("budget lease sync failed")
        with self.lock:
            if (
                self.loop is not loop
                or self.ticking
                or not (self.leases or self.settled or self.charged)
            ):
                return
            self.ticking = True
        loop.call_later(self.interval, self.tick, loop)

    def start(self) -> None:
        """Start the background thread (the caller holds the lock)."""
        if self.thread is None and not self.closed:
            self.thread = threading.Thread(target=self.run, name="llmproxy-lease-sync", daemon=True)
            self.thread.start()

    def run(self) -> None:
        """Sync every ``interval`` seconds while there is anything to sync."""
        while not self.stop.is_set():
            # While a loop's ticks sync, the thread only backs them up (the loop may stop);
            # with nothing leased or pending it sleeps until a call needs a lease.
            if not (self.leases or self.settled or self.local):
                timeout: float | None = None
            elif self.ticking:
                timeout = max(self.interval, _BACKUP)
            else:
                timeout = self.interval
            self.wake.wait(timeout)
            self.wake.clear()
            if self.stop.is_set():
                return
            if self.ticking and time.monotonic() - self.ticked < 2 * _BACKUP:
                continue  # the loop's ticks are syncing: a sync here would only compete
            try:
                self.sync(release=False, background=True)
            except Exception:  # sync logs store failures; anything else must not kill the thread
                log.exception("budget lease sync failed")

    def sync(self, *, release: bool, background: bool = False, wait: bool = True) -> None:
        """Write the settles and resize every lease (``release``: down to what is in flight).

        The caller holds neither lock. In the ``background``, the transaction runs without the
        state's lock, so calls go on being admitted from the leases meanwhile: a lease then
        keeps at least what it holds now (less what is written as used), and one that is to
        shrink admits nothing until the transaction ends. Otherwise both locks are held
        throughout. On a store failure the settles are kept for the next sync and the leases
        keep their holds (a call is admitted from one only while it lasts); a ``release``
        raises the failure. Without ``wait``, a ledger another process is writing to is left
        for the next sync instead of waited for.
        """
        if not wait:
            # Another sync (the thread's, or a flush) is running: leave this one to the next.
            if not self.sync_lock.acquire(blocking=False):
                return
            try:
                with self.lock:
                    self.sync_locked(release, wait=False)
            finally:
                self.sync_lock.release()
            return
        with self.sync_lock:
            if not background:
                with self.lock:
                    self.sync_locked(release, wait=wait)
                return
            with self.lock:
                plan = self._plan(release, background=True)
            if plan is None:
                return
            held = self._write(plan, release)
            with self.lock:
                self._apply(plan, held)

    def sync_locked(self, release: bool, *, wait: bool = True) -> None:
        """:meth:`sync` for a caller holding both locks."""
        plan = self._plan(release, background=False)
        if plan is not None:
            self._apply(plan, self._write(plan, release, wait=wait))

    def _plan(self, release: bool, *, background: bool) -> _Plan | None:
        """What the next transaction writes, or None when nothing changed (lock held)."""
        now = self.inner.now()
        if self.local:
            for rid in [rid for rid, local in self.local.items() if local.expires_at <= now]:
                # Unknown is spent: the hold is charged in full, as used at its expiry.
                local = self.expired[rid] = self.local.pop(rid)
                for claim, lease, amount in zip(
                    local.claims, local.leases, local.held, strict=True
                ):
                    lease.inflight -= amount
                    lease.pending += amount
                    self.charged.append((claim, local.expires_at, rid, amount))
        if self.expired:
            # Forget expired reservations an hour after their end, like the shared ledger.
            forget = now - SETTLED_GRACE
            for rid in [rid for rid, local in self.expired.items() if local.expires_at < forget]:
                del self.expired[rid]
        plan = _Plan(now, self.settled, self.charged)
        self.settled = []
        self.charged = []
        try:
            self._size(plan, release, background)
        except BaseException:
            self._failed(plan)  # nothing is lost: the next sync plans again
            raise
        if not plan.leases and not plan.settled and not plan.charged:
            return None
        return plan

    def _size(self, plan: _Plan, release: bool, background: bool) -> None:
        """Add to ``plan`` each lease to resize, with what it keeps and wants (lock held)."""
        now = plan.now
        gone: list[str] = []
        for lease in self.leases.values():
            idle = now - lease.last_used > self.idle and not lease.inflight
            shrink = release or idle
            if not (
                shrink
                or lease.pending
                or lease.admitted
                or (lease.misses and now >= lease.retry_at)
                or lease.synced != lease.claim
                or lease.expires_at - now < self.ttl - self.refresh
            ):
                continue  # nothing new: the hold stays as it is
            if release and not (lease.held or lease.pending or idle):
                continue  # nothing to give back
            # What stays held once the settles are written as used.
            kept = max(lease.held - lease.pending, lease.inflight)
            if shrink:
                keep = want = lease.inflight
            else:
                # Room for twice the busiest stretch between syncs lately: calls come in bursts,
                # and a settled request still counts against the lease until it is written.
                burst = lease.admitted + lease.misses
                age = max(now - lease.peak_at, 0.0)  # a clock set back ages nothing
                decayed = lease.peak * 0.5 ** (age / _PEAK_HALF_LIFE)
                if burst >= decayed:
                    lease.peak, lease.peak_at = float(burst), now
                target = lease.need * math.ceil(max(self.min_calls, 2 * max(burst, decayed)))
                free = kept - lease.inflight
                if lease.synced == lease.claim and target / 2 <= free <= target:
                    keep = want = kept  # enough left: write the settles, ask for nothing
                elif background:
                    # Calls admitted during the transaction take from what is held now.
                    keep, want = kept, max(kept, lease.inflight + target)
                else:
                    keep, want = lease.inflight, lease.inflight + target
            if keep == want == lease.held and not lease.pending:
                if idle and not lease.held:
                    gone.append(lease.claim.key)  # nothing held, nothing to write: forget it
                    continue
                if (
                    lease.synced == lease.claim
                    and lease.expires_at - now >= self.ttl - self.refresh
                ):
                    lease.admitted = lease.misses = 0
                    continue  # the hold would be written as it is
            if shrink:
                lease.frozen = background  # admits nothing until the transaction ends
            plan.leases.append(lease)
            plan.pending.append(lease.pending)
            plan.wants.append((lease.claim, keep, want, lease.need))
            lease.admitted = lease.misses = 0
        for key in gone:
            del self.leases[key]

    def _write(self, plan: _Plan, release: bool, *, wait: bool = True) -> list[float] | None:
        """Run the plan's transaction and return the new holds, or None.

        None when another process was writing (without ``wait``), or on a store failure
        (logged; raised to a release).
        """
        try:
            held = self.inner.sync_lease(
                self.owner,
                plan.settled,
                plan.wants,
                ttl=self.ttl,
                wait=wait,
                charged=plan.charged,
            )
            if held is None:
                return None  # another process is writing: the next sync writes this too
        except Exception as exc:
            if not self.failing:
                log.warning("budget lease sync failed; will retry: %s", exc)
            self.failing = True
            if release:
                self._failed(plan)
                raise
            return None
        if self.failing:
            log.warning("budget lease sync works again")
            self.failing = False
        return held

    def _failed(self, plan: _Plan) -> None:
        """Keep a failed plan's settles for the next sync and thaw its leases."""
        self.settled[:0] = plan.settled
        self.charged[:0] = plan.charged
        for lease in plan.leases:
            lease.frozen = False

    def _apply(self, plan: _Plan, held: list[float] | None) -> None:
        """Take the transaction's outcome into the state (lock held)."""
        if held is None:
            self._failed(plan)
            return
        now = plan.now
        expires_at = now + self.ttl
        for lease, hold, pending, (claim, keep, want, _step) in zip(
            plan.leases, held, plan.pending, plan.wants, strict=True
        ):
            lease.held = hold
            lease.pending -= pending  # written as used; later settles stay pending
            lease.frozen = False
            lease.synced = claim
            lease.expires_at = expires_at
            # A share too small for one call: ask again in a second, not at every sync.
            lease.retry_at = now + 1.0 if hold <= keep < want else now
            if (
                not hold
                and not lease.inflight
                and not lease.pending
                and now - lease.last_used > self.idle
                and self.leases.get(claim.key) is lease
            ):
                del self.leases[claim.key]

    def close(self) -> None:
        """Stop the thread, write what is pending and give the leases back."""
        if self.pid != os.getpid():
            return
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.stop.set()
            self.wake.set()
            thread = self.thread
        try:
            self.sync(release=True)
        except Exception as exc:
            log.warning("budget leases not given back at close: %s", exc)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


class _Plan:
    """One sync's transaction: the settles it writes and the leases it resizes."""

    __slots__ = ("charged", "leases", "now", "pending", "settled", "wants")

    def __init__(
        self,
        now: float,
        settled: list[tuple[Claim, float, str, float]],
        charged: list[tuple[Claim, float, str, float]],
    ) -> None:
        self.now = now
        self.settled = settled
        self.charged = charged
        self.leases: list[_Lease] = []
        self.pending: list[float] = []  # each lease's pending amount the settles write
        self.wants: list[tuple[Claim, float, float, float]] = []


_STATES: weakref.WeakSet[_State] = weakref.WeakSet()


def _after_fork() -> None:
    for state in list(_STATES):
        state.reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


@atexit.register
def _at_exit() -> None:
    for state in list(_STATES):
        state.close()


class LeasingLedger(InlineAsync):
    """A :class:`~llmproxy.budget.base.Ledger` admitting most calls from budget leases.

    The leases are held in a shared :class:`~llmproxy.budget.sqlite.SQLiteLedger` (see the
    module docstring).

    ``interval`` is how often (seconds) settles are written and leases resized while calls
    run; ``idle`` how long an unused lease is kept; ``min_calls`` how many of the largest
    call's holds a lease asks for at least. Usage by other processes sees this one's settles
    at most ``interval`` late; :meth:`close` (or the interpreter's exit) writes them and gives
    the leases back.
    """

    def __init__(
        self,
        inner: SQLiteLedger,
        *,
        interval: float = 0.1,
        idle: float = 2.0,
        min_calls: int = 8,
        ttl: float = LEASE_TTL,
    ) -> None:
        if not (interval > 0 and idle > 0 and min_calls >= 1 and ttl > 0):
            raise InvalidRequest(
                "interval, idle and ttl must be positive seconds and min_calls >= 1, got"
                f" interval={interval} idle={idle} min_calls={min_calls} ttl={ttl}",
                field="interval",
            )
        self._inner = inner
        self._state = _State(inner, interval, idle, min_calls, ttl)
        _STATES.add(self._state)
        self._finalizer = weakref.finalize(self, _State.close, self._state)

    @property
    def inner(self) -> SQLiteLedger:
        """The shared ledger the leases are held in."""
        return self._inner

    @property
    def path(self) -> str:
        """The shared ledger's database file."""
        return self._inner.path

    def now(self) -> float:
        """The shared ledger's clock."""
        return self._inner.now()

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
        """Admit the call from this process's leases, or reserve in the shared ledger."""
        claims = check_arguments(
            claims, input_tokens, max_output_tokens, min_output_tokens, lease, rates
        )
        state = self._state
        if claims and not state.closed:
            if rates is not None:
                rate_in, rate_out, dollars = usd_rate(rates.input), usd_rate(rates.output), True
            else:
                rate_in = rate_out = 0.0
                dollars = False
            held, amounts = holds(
                claims, input_tokens, max_output_tokens, rate_in, rate_out, dollars
            )
            with state.lock:
                if state.pid != os.getpid():  # pragma: no cover - reset at fork already
                    state.reset()
                now = self._inner.now()
                leases: list[_Lease] = []
                fits = True
                new = False
                for claim, amount in zip(claims, held, strict=True):
                    found = state.leases.get(claim.key)
                    if found is None:
                        found = state.leases[claim.key] = _Lease(claim, now)
                        new = True
                    elif found.claim != claim:
                        found.claim = claim  # resized under the new terms at the next sync
                    found.last_used = now
                    if amount > found.need:
                        found.need = amount
                    if fits and (
                        found.frozen
                        or found.synced != claim
                        or found.held - found.inflight - found.pending < amount
                        or found.expires_at - now < state.refresh
                    ):
                        fits = False
                    leases.append(found)
                if fits:
                    for found, amount in zip(leases, held, strict=True):
                        found.inflight += amount
                        found.admitted += 1
                    rid = f"{state.prefix}{next(state.ids)}"
                    expires_at = now + lease
                    state.local[rid] = _Local(claims, leases, held, expires_at)
                    return Reservation(
                        rid, tuple(claims), amounts, max_output_tokens, input_tokens, expires_at
                    )
                for found in leases:
                    found.misses += 1
                if state.thread is None:
                    state.start()
                if new:
                    state.wake.set()  # take the lease now (a loop's ticks may have stopped)
        return self._direct(
            claims,
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            min_output_tokens=min_output_tokens,
            lease=lease,
            rates=rates,
        )

    def _direct(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int,
        lease: float,
        rates: Rates | None,
    ) -> Reservation:
        """Reserve in the shared ledger, giving this process's leases back if they are in the way.

        Refused or capped, the call is tried once more after :meth:`_give_back`, so that this
        process's own leases never refuse or cap its calls.
        """
        attempt = functools.partial(
            self._inner.reserve,
            claims,
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            min_output_tokens=min_output_tokens,
            lease=lease,
            rates=rates,
        )
        try:
            reservation = attempt()
        except (BudgetExceeded, RateLimited):
            if not self._give_back(claims):
                raise
        else:
            if reservation.output_tokens >= max_output_tokens or not self._give_back(claims):
                return reservation
            self._inner.settle(reservation, tokens=0, requests=0)  # records nothing
        return attempt()

    def _give_back(self, claims: Sequence[Claim]) -> bool:
        """Write this process's settles and shrink its leases to its calls in flight.

        Returns whether that could change the shared ledger's answer for ``claims``: whether
        anything was pending or any of their keys was leased.
        """
        state = self._state
        with state.sync_lock, state.lock:
            if state.closed or state.pid != os.getpid():
                return False
            leases = state.leases
            if not state.settled and not any(
                (found := leases.get(claim.key)) is not None and found.held for claim in claims
            ):
                return False
            state.sync_locked(release=True)
            return True

    def settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        """Record what the call used (here for a leased call, else in the shared ledger)."""
        check_settle(tokens, requests, cost)
        rid = reservation.id
        if not rid.startswith(_LOCAL):
            self._inner.settle(reservation, tokens=tokens, requests=requests, cost=cost)
            return
        state = self._state
        with state.lock:
            local = state.local.pop(rid, None)
            now = self._inner.now()
            if local is None:
                local = state.expired.pop(rid, None)
                if local is None:
                    return  # settled already (or admitted by a process since forked)
                mine = [item for item in state.charged if item[2] == rid]
                if not mine:
                    written = True  # the charge was written (or is being): the ledger replaces it
                else:
                    # The charge is not written yet: the real use replaces it here.
                    written = False
                    state.charged = [item for item in state.charged if item[2] != rid]
                    for (claim, _ts, _rid, charged), lease in zip(mine, local.leases, strict=True):
                        used = amount_settled(claim, tokens, requests, cost)
                        lease.pending += used - charged
                        state.settled.append((claim, now, rid, used))
            else:
                written = False
                for claim, lease, amount in zip(
                    local.claims, local.leases, local.held, strict=True
                ):
                    used = amount_settled(claim, tokens, requests, cost)
                    lease.inflight -= amount
                    lease.pending += used
                    state.settled.append((claim, now, rid, used))
            closed = state.closed
        if written:
            self._inner.settle(reservation, tokens=tokens, requests=requests, cost=cost)
            return
        if closed:
            state.sync(release=True)

    def renew(self, reservation: Reservation, *, lease: float) -> bool:
        """Push the hold's expiry to ``now + lease``; False once it is settled or charged.

        A call admitted from a lease is renewed here, in memory: the lease around it is renewed
        by the background sync while this process lives (see the module docstring). Any other
        call is renewed in the shared ledger.
        """
        rid = reservation.id
        if not rid.startswith(_LOCAL):
            return self._inner.renew(reservation, lease=lease)
        if not lease > 0:
            raise InvalidRequest(
                f"lease must be a positive number of seconds, got {lease}", field="lease"
            )
        state = self._state
        with state.lock:
            local = state.local.get(rid)
            now = self._inner.now()
            if local is None or local.expires_at <= now:
                return False  # settled, or charged (or about to be, by the next sync)
            local.expires_at = max(local.expires_at, now + lease)
            if state.thread is None:
                state.start()  # the leases must be renewed while this call lives
            return True

    def usage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        """Write this process's settles, then read each claim from the shared ledger.

        ``reserved`` counts this process's calls in flight, not the free part of its leases
        (other processes' leases count whole: they are held for their calls). While another
        process is writing, the settles are not waited for: they count as reserved until the
        next sync writes them.
        """
        return self._read(lambda: self._inner.usage(claims))

    def budgets(self) -> list[ClaimUsage]:
        """Write this process's settles, then list every budget the shared ledger holds.

        See :meth:`SQLiteLedger.budgets`; ``reserved`` is counted as in :meth:`usage`.
        """
        return self._read(self._inner.budgets)

    async def abudgets(self) -> list[ClaimUsage]:
        """Async :meth:`budgets` (runs inline)."""
        return self.budgets()

    def _read(self, read: Callable[[], list[ClaimUsage]]) -> list[ClaimUsage]:
        """Sync this process, ``read`` the shared ledger, and count its free leases as free."""
        state = self._state
        with state.sync_lock, state.lock:
            if state.pid != os.getpid() or state.closed:
                return read()
            if state.settled or state.leases:
                state.sync_locked(release=False, wait=False)
            free = {
                key: lease.held - lease.inflight - lease.pending
                for key, lease in state.leases.items()
                if lease.held > lease.inflight + lease.pending
            }
            states = read()
        if not free:
            return states
        result: list[ClaimUsage] = []
        for found in states:
            own = free.get(found.claim.key)
            if own is not None:
                if found.claim.unit == "usd":
                    reserved = max(round(found.reserved * USD_SCALE) - own, 0) / USD_SCALE
                else:
                    reserved = max(found.reserved - own, 0.0)
                found = ClaimUsage(found.claim, found.used, reserved, found.resets_at)
            result.append(found)
        return result

    async def areserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Rates | None = None,
    ) -> Reservation:
        """Async :meth:`reserve` (in memory, or an SQLite transaction run inline)."""
        self._state.attach(asyncio.get_running_loop())
        return self.reserve(
            claims,
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            min_output_tokens=min_output_tokens,
            lease=lease,
            rates=rates,
        )

    async def asettle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        """Async :meth:`settle`."""
        self._state.attach(asyncio.get_running_loop())
        self.settle(reservation, tokens=tokens, requests=requests, cost=cost)

    def flush(self) -> None:
        """Write this process's settles and resize its leases now."""
        state = self._state
        with state.sync_lock, state.lock:
            if state.pid == os.getpid() and not state.closed and (state.settled or state.leases):
                state.sync_locked(release=False)

    def close(self) -> None:
        """Write what is pending, give the leases back, then close the shared ledger."""
        self._finalizer()
        self._inner.close()
