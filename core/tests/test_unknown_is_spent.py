"""Unknown is spent: crashes, late settles and renewals never lose or double-count a call.

A hypothesis state machine drives a memory and an SQLite ledger on a clock the test controls
through reserve, settle, late settle, renew, clock moves and crashes (a reservation dropped
without settling). After every step, on an all-time token budget: ``used`` is exactly what the
settled calls really used plus the full holds of the crashed or lapsed calls not settled since
(so it never drops below what settled calls used and never counts a reservation twice), and
used plus reserved never exceeds the limit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from llmproxy.budget.base import Claim, Ledger, RenewableLedger, Reservation
from llmproxy.budget.memory import MemoryLedger
from llmproxy.budget.sqlite import SQLiteLedger
from llmproxy.errors import BudgetExceeded

LIMIT = 500
CLAIM = Claim("spent", "spent", "global", LIMIT)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _machine(make: Callable[[_Clock], Ledger]) -> type[RuleBasedStateMachine]:
    class UnknownIsSpent(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clock = _Clock()
            self.ledger = make(self.clock)
            self.live: dict[str, tuple[Reservation, float]] = {}  # id -> (reservation, expiry)
            self.lapsed: list[Reservation] = []  # expired unsettled: charged in full
            self.doomed: dict[str, tuple[Reservation, float]] = {}  # crashed, not expired yet
            self.settled: list[Reservation] = []
            self.real = 0  # what settled calls really used
            self.charged = 0  # full holds of lapsed/crashed calls not settled since

        def teardown(self) -> None:
            self.ledger.close()

        @rule(input_tokens=st.integers(0, 60), output=st.integers(1, 60), lease=st.just(10.0))
        def reserve(self, input_tokens: int, output: int, lease: float) -> None:
            try:
                reservation = self.ledger.reserve(
                    [CLAIM], input_tokens=input_tokens, max_output_tokens=output, lease=lease
                )
            except BudgetExceeded:
                return
            self.live[reservation.id] = (reservation, self.clock.now + lease)

        def _held(self, reservation: Reservation) -> int:
            return int(reservation.amounts[0])

        @precondition(lambda self: bool(self.live))
        @rule(data=st.data())
        def settle(self, data: st.DataObject) -> None:
            reservation, _expiry = self.live.pop(data.draw(st.sampled_from(list(self.live))))
            tokens = data.draw(st.integers(0, self._held(reservation)))
            self.ledger.settle(reservation, tokens=tokens)
            self.ledger.settle(reservation, tokens=self._held(reservation))  # a repeat: no-op
            self.real += tokens
            self.settled.append(reservation)

        @precondition(lambda self: bool(self.lapsed))
        @rule(data=st.data())
        def late_settle(self, data: st.DataObject) -> None:
            reservation = data.draw(st.sampled_from(self.lapsed))
            self.lapsed.remove(reservation)
            tokens = data.draw(st.integers(0, self._held(reservation)))
            self.ledger.settle(reservation, tokens=tokens)
            self.ledger.settle(reservation, tokens=1)  # a second late settle: no-op
            self.charged -= self._held(reservation)
            self.real += tokens
            self.settled.append(reservation)

        @precondition(lambda self: bool(self.live))
        @rule(data=st.data())
        def renew(self, data: st.DataObject) -> None:
            ledger = self.ledger
            assert isinstance(ledger, RenewableLedger)
            rid = data.draw(st.sampled_from(list(self.live)))
            reservation, expiry = self.live[rid]
            assert ledger.renew(reservation, lease=10.0) is True
            self.live[rid] = (reservation, max(expiry, self.clock.now + 10.0))

        @precondition(lambda self: bool(self.settled or self.lapsed))
        @rule(data=st.data())
        def renew_gone(self, data: st.DataObject) -> None:
            ledger = self.ledger
            assert isinstance(ledger, RenewableLedger)
            gone = data.draw(st.sampled_from([*self.settled, *self.lapsed]))
            assert ledger.renew(gone, lease=10.0) is False

        @precondition(lambda self: bool(self.live))
        @rule(data=st.data())
        def crash(self, data: st.DataObject) -> None:
            """The owner dies: its reservation is never settled nor renewed."""
            rid = data.draw(st.sampled_from(list(self.live)))
            self.doomed[rid] = self.live.pop(rid)

        @rule(seconds=st.sampled_from([1.0, 4.0, 9.5, 10.0, 30.0]))
        def advance(self, seconds: float) -> None:
            self.clock.now += seconds
            for rid, (reservation, expiry) in list(self.live.items()):
                if expiry <= self.clock.now:  # lost by a live owner: charged, may settle late
                    del self.live[rid]
                    self.charged += self._held(reservation)
                    self.lapsed.append(reservation)
            for rid, (reservation, expiry) in list(self.doomed.items()):
                if expiry <= self.clock.now:  # the owner is dead: charged for good
                    del self.doomed[rid]
                    self.charged += self._held(reservation)

        @invariant()
        def used_is_real_plus_charges(self) -> None:
            (state,) = self.ledger.usage([CLAIM])
            assert state.used >= self.real
            assert state.used == self.real + self.charged
            assert state.used + state.reserved <= LIMIT

    return UnknownIsSpent


SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_memory_ledger_unknown_is_spent() -> None:
    run_state_machine_as_test(_machine(lambda clock: MemoryLedger(clock=clock)), settings=SETTINGS)


def test_sqlite_ledger_unknown_is_spent(tmp_path: Path) -> None:
    counter = iter(range(1_000_000))

    def make(clock: _Clock) -> Ledger:
        return SQLiteLedger(tmp_path / f"ledger-{next(counter)}.db", clock=clock)

    run_state_machine_as_test(_machine(make), settings=SETTINGS)


def test_a_late_settle_after_the_grace_replaces_the_full_hold(tmp_path: Path) -> None:
    """SQLite: after the grace the charge is forgotten; a late settle replaces the full hold."""
    clock = _Clock()
    ledger = SQLiteLedger(tmp_path / "l.db", clock=clock, settled_grace=5.0)
    reservation = ledger.reserve([CLAIM], input_tokens=10, max_output_tokens=40, lease=1.0)
    clock.now += 100.0
    assert [(s.used, s.reserved) for s in ledger.usage([CLAIM])] == [(50, 0)]
    ledger.settle(reservation, tokens=20)  # all-time: the charge (the full hold) is replaced
    assert [(s.used, s.reserved) for s in ledger.usage([CLAIM])] == [(20, 0)]
    ledger.close()


@pytest.mark.parametrize("forget", ["grace", "count"])
def test_memory_a_late_settle_of_a_forgotten_charge_leaves_it(forget: str) -> None:
    """Memory: once a charge is forgotten (grace over, or evicted by newer charges), a late
    settle is a no-op: the full charge stands (under-use, never overspend)."""
    clock = _Clock()
    if forget == "grace":
        ledger = MemoryLedger(clock=clock, settled_grace=5.0)
    else:
        ledger = MemoryLedger(clock=clock, max_remembered=1)
    reservation = ledger.reserve([CLAIM], input_tokens=10, max_output_tokens=40, lease=1.0)
    clock.now += 100.0
    # A newer charge evicts the first one's record: past its grace, or one over the count.
    ledger.reserve([CLAIM], input_tokens=1, max_output_tokens=1, lease=1.0)
    clock.now += 100.0
    charged = 52
    assert [(s.used, s.reserved) for s in ledger.usage([CLAIM])] == [(charged, 0)]
    ledger.settle(reservation, tokens=20)
    assert [(s.used, s.reserved) for s in ledger.usage([CLAIM])] == [(charged, 0)]


def test_memory_ledger_keeps_nothing_per_settled_call() -> None:
    """After many settled calls the memory ledger holds no record of them: no charge records,
    an expiry heap bounded by the calls in flight, and a repeat settle is still a no-op."""
    clock = _Clock()
    ledger = MemoryLedger(clock=clock)
    big = Claim("flat", "flat", "global", 1e9)
    in_flight = [
        ledger.reserve([big], input_tokens=1, max_output_tokens=1, lease=600.0) for _ in range(3)
    ]
    first = ledger.reserve([big], input_tokens=1, max_output_tokens=1, lease=600.0)
    ledger.settle(first, tokens=1)
    for _ in range(10_000):
        reservation = ledger.reserve([big], input_tokens=1, max_output_tokens=1, lease=600.0)
        ledger.renew(reservation, lease=900.0)
        ledger.settle(reservation, tokens=1)
    assert len(ledger._active) == 3
    assert len(ledger._expiry) <= 2 * 3 + 64 + 1
    assert not ledger._outcomes
    ledger.settle(first, tokens=1)  # long after: still a no-op
    assert [(s.used, s.reserved) for s in ledger.usage([big])] == [(10_001, 6)]
    for reservation in in_flight:  # the live holds survived every rebuild of the heap
        assert ledger.renew(reservation, lease=1.0)
    clock.now += 601.0  # and expire when their lease ends: charged in full
    assert [(s.used, s.reserved) for s in ledger.usage([big])] == [(10_007, 0)]


def test_sqlite_ledger_statements_per_call(tmp_path: Path) -> None:
    """A call's reserve and settle on an all-time and a windowed claim run 16 statements.

    (Issue 16's charge-at-expiry took it from 16 to 21; the expired holds of all keys are now
    looked up in one statement per transaction, and the settled call's own holds in another.)
    """
    ledger = SQLiteLedger(tmp_path / "l.db")
    claims = [CLAIM_TOTAL, CLAIM_RPM]
    for _ in range(3):  # past the first reserve's sweep of every key and the first prune
        ledger.settle(ledger.reserve(claims, input_tokens=1, max_output_tokens=1), tokens=1)
    statements: list[str] = []
    ledger._db.connection().set_trace_callback(statements.append)
    reservation = ledger.reserve(claims, input_tokens=1, max_output_tokens=1)
    reserved = len(statements)
    ledger.settle(reservation, tokens=1)
    ledger.settle(reservation, tokens=1)  # a repeat: three statements, and a no-op
    assert (reserved, len(statements) - reserved) == (6, 10 + 3), statements
    assert [(s.used, s.reserved) for s in ledger.usage(claims)] == [(4, 0), (4, 0)]
    ledger.close()


CLAIM_TOTAL = Claim("total", "total", "global", 1e12)
CLAIM_RPM = Claim("rpm", "rpm", "global", 1e9, "requests", window=60.0)


def test_memory_a_repeat_settle_long_after_the_grace_is_a_no_op() -> None:
    """A settled id the ledger once forgot was taken for a forgotten charge: settling it again
    took the hold's unused part off ``used``. The memory ledger now keeps no settled ids."""
    clock = _Clock()
    ledger = MemoryLedger(clock=clock, settled_grace=5.0, max_remembered=1)
    first = ledger.reserve([CLAIM], input_tokens=10, max_output_tokens=40, lease=60.0)
    ledger.settle(first, tokens=20)
    clock.now += 100.0  # past the grace, and newer calls come and go
    for _ in range(3):
        ledger.settle(ledger.reserve([CLAIM], input_tokens=1, max_output_tokens=1), tokens=1)
    assert [(s.used, s.reserved) for s in ledger.usage([CLAIM])] == [(23, 0)]
    ledger.settle(first, tokens=20)
    assert [(s.used, s.reserved) for s in ledger.usage([CLAIM])] == [(23, 0)]
