"""Budget leasing (``llmproxy.budget.lease``): calls admitted in-process, budgets still exact."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmproxy import Proxy
from llmproxy.budget.base import Claim, Rates, Reservation
from llmproxy.budget.lease import LeasingLedger
from llmproxy.budget.memory import MemoryLedger
from llmproxy.budget.routed import shared_ledger
from llmproxy.budget.sqlite import SQLiteLedger
from llmproxy.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidRequest,
    RateLimited,
    StoreError,
)
from llmproxy_testing.contracts import FakeClock

BIG = Claim("big", "big", "key:a", 1_000_000)
RPM = Claim("rpm", "rpm", "key:a", 10_000, "requests", 60.0)
MONTH = Claim("month", "month", "key:a", 5.0, "usd", period="month", tz="Asia/Ho_Chi_Minh")
RATES = Rates(0.000001, 0.000002)


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def leasing(path: Path) -> Iterator[LeasingLedger]:
    ledger = LeasingLedger(SQLiteLedger(path), interval=0.01)
    yield ledger
    ledger.close()


class _Counting(SQLiteLedger):
    """An SQLite ledger counting its reserve and settle transactions."""

    reserves = 0
    settles = 0

    def reserve(self, *args: Any, **kwargs: Any) -> Reservation:
        self.reserves += 1
        return super().reserve(*args, **kwargs)

    def settle(self, *args: Any, **kwargs: Any) -> None:
        self.settles += 1
        super().settle(*args, **kwargs)


def _lease_rows(path: Path) -> list[tuple[str, str, float]]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT key, reservation, amount FROM ledger_holds WHERE reservation LIKE 'lease-%'"
            " ORDER BY key"
        ).fetchall()
    conn.close()
    return rows


def test_calls_are_admitted_from_the_lease_without_transactions(path: Path) -> None:
    inner = _Counting(path)
    ledger = LeasingLedger(inner, interval=3600, min_calls=64)
    try:
        first = ledger.reserve([BIG, RPM], input_tokens=10, max_output_tokens=100)
        assert not first.id.startswith("l")  # no lease yet: the shared ledger answered
        ledger.settle(first, tokens=50)
        # A new key wakes the thread, which takes the lease; let it, so that it syncs no more.
        _wait(lambda: bool(_lease_rows(path)))
        ledger.flush()
        before = (inner.reserves, inner.settles)
        spent = 0
        for i in range(50):
            reservation = ledger.reserve([BIG, RPM], input_tokens=10, max_output_tokens=100)
            assert reservation.id.startswith("l")
            assert (reservation.output_tokens, reservation.amounts) == (100, (110.0, 1.0))
            ledger.settle(reservation, tokens=20 + i)
            spent += 20 + i
        assert (inner.reserves, inner.settles) == before  # all in memory
        # A plain ledger on the same file (another process) sees the settles within a sync.
        other = SQLiteLedger(path)
        assert other.usage([BIG])[0].used == 50  # not written yet
        big, rpm = ledger.usage([BIG, RPM])  # writes this process's settles first
        assert (big.used, big.reserved, rpm.used, rpm.reserved) == (50 + spent, 0, 51, 0)
        assert other.usage([BIG])[0].used == 50 + spent
        other.close()
    finally:
        ledger.close()


async def test_an_event_loop_syncs_the_leases_itself(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Used from a loop, the syncs run on it (no interpreter lock handed to a thread)."""
    inner = SQLiteLedger(path)
    ledger = LeasingLedger(inner, interval=0.01)
    syncs: list[str] = []
    real = inner.sync_lease

    def recording(*args: Any, **kwargs: Any) -> list[float] | None:
        syncs.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(inner, "sync_lease", recording)
    other = SQLiteLedger(path)
    try:
        spent = 0
        local = 0
        for i in range(60):
            r = await ledger.areserve([BIG, RPM], input_tokens=10, max_output_tokens=90)
            local += r.id.startswith("l")
            await ledger.asettle(r, tokens=i)
            spent += i
            await asyncio.sleep(0.002)
        assert local > 30
        deadline = time.monotonic() + 10
        while other.usage([BIG])[0].used != spent:  # written by a tick within ``interval``
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        main = threading.current_thread().name
        assert syncs.count(main) > len(syncs) / 2
    finally:
        ledger.close()
        other.close()


def test_a_lease_is_a_hold_other_processes_see_and_close_gives_it_back(
    path: Path, leasing: LeasingLedger
) -> None:
    leasing.settle(leasing.reserve([BIG], input_tokens=10, max_output_tokens=90), tokens=30)
    _wait(lambda: bool(_lease_rows(path)))
    ((key, _owner, amount),) = _lease_rows(path)
    assert key == "big" and amount >= 8 * 100  # room for at least min_calls calls
    other = SQLiteLedger(path)
    assert other.usage([BIG])[0].reserved == amount
    # This process reports only its calls in flight as reserved.
    assert leasing.usage([BIG])[0].reserved == 0
    held = leasing.reserve([BIG], input_tokens=10, max_output_tokens=90)
    assert held.id.startswith("l")
    assert leasing.usage([BIG])[0].reserved == 100
    leasing.settle(held, tokens=40)
    leasing.close()
    assert _lease_rows(path) == []
    assert [(s.used, s.reserved) for s in other.usage([BIG])] == [(70, 0)]
    other.close()


def test_a_lease_takes_an_eighth_of_the_room_and_none_when_that_holds_no_call(path: Path) -> None:
    small = Claim("small", "small", "key:b", 2000)
    window = Claim("window", "window", "key:b", 2000, window=60.0)
    clock = FakeClock()
    plain = SQLiteLedger(path, clock=clock)
    try:
        plain.settle(plain.reserve([small], input_tokens=10, max_output_tokens=90), tokens=400)
        assert plain.sync_lease("lease-a", [], [(small, 0, 10_000, 100)], ttl=900) == [200]
        # What the owner keeps (its calls in flight) is granted whatever the room; its own
        # hold does not count against it; the share comes from what the others leave.
        assert plain.sync_lease("lease-a", [], [(small, 50, 10_000, 100)], ttl=900) == [243]
        assert plain.sync_lease("lease-b", [], [(small, 0, 10_000, 100)], ttl=900) == [169]
        assert plain.usage([small])[0].reserved == 243 + 169
        # Settles written with their own times, and a share too small for one call: not taken.
        settled = [(small, clock.now, "la-1", 700.0), (window, clock.now - 30, "la-1", 700.0)]
        assert plain.sync_lease("lease-a", settled, [(small, 0, 10_000, 100)], ttl=900) == [0]
        assert [(s.used, s.reserved) for s in plain.usage([small, window])] == [
            (1100, 169),
            (700, 0),
        ]
        clock.advance(31)  # the windowed event was written 30 s back: it has left by now
        assert plain.usage([window])[0].used == 0
        assert [row[1] for row in _lease_rows(path)] == ["lease-b"]
        with pytest.raises(InvalidRequest):
            plain.sync_lease("lease-a", [], [], ttl=0)
    finally:
        plain.close()


def test_a_sync_that_must_not_wait_leaves_a_busy_ledger_alone(path: Path) -> None:
    import sqlite3

    plain = SQLiteLedger(path, timeout=2.0)
    plain.usage([BIG])  # creates the schema
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:
        started = time.monotonic()
        settled = [(BIG, plain.now(), "l-1", 5.0)]
        assert (
            plain.sync_lease("lease-x", settled, [(BIG, 0, 800, 100)], ttl=900, wait=False) is None
        )
        assert time.monotonic() - started < 0.5
        with pytest.raises(StoreError, match="locked"):  # waiting ones still wait (2 s)
            plain.sync_lease("lease-x", settled, [], ttl=900)
        assert time.monotonic() - started >= 1.9
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert plain.sync_lease("lease-x", settled, [(BIG, 0, 800, 100)], ttl=900, wait=False) == [800]
    assert plain.usage([BIG])[0].used == 5
    plain.close()


def test_idle_leases_are_given_back_and_forgotten(path: Path) -> None:
    small = Claim("small", "small", "key:i", 500)  # an eighth of it holds no 100-token call
    ledger = LeasingLedger(SQLiteLedger(path), interval=0.01, idle=0.05)
    try:
        ledger.settle(ledger.reserve([BIG], input_tokens=10, max_output_tokens=90), tokens=5)
        ledger.settle(ledger.reserve([small], input_tokens=10, max_output_tokens=90), tokens=7)
        _wait(lambda: bool(_lease_rows(path)))  # BIG is leased, small is not
        # Unused, both are dropped: BIG's hold given back, small's empty lease forgotten (so
        # that the syncs stop once nothing is leased).
        _wait(lambda: not _lease_rows(path) and not ledger._state.leases)
        assert [u.used for u in SQLiteLedger(path).usage([BIG, small])] == [5, 7]
    finally:
        ledger.close()


def test_own_leases_never_refuse_or_cap_a_call(path: Path) -> None:
    claim = Claim("tight", "tight", "key:c", 1600)
    rate = Claim("rate", "rate", "key:c", 16, "requests", 60.0)
    ledger = LeasingLedger(SQLiteLedger(path), interval=0.01)
    try:
        probe = ledger.reserve([claim, rate], input_tokens=0, max_output_tokens=100)
        ledger.settle(probe, tokens=0, requests=0)
        _wait(lambda: bool(_lease_rows(path)))
        # 1600 - 200 leased: a call asking for the whole room still gets it.
        whole = ledger.reserve([claim, rate], input_tokens=0, max_output_tokens=1600)
        assert whole.output_tokens == 1600
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve([claim], input_tokens=0, max_output_tokens=1)
        assert (caught.value.used, caught.value.reserved) == (0, 1600)
        ledger.settle(whole, tokens=0, requests=0)
        for _ in range(16):
            ledger.reserve([rate], input_tokens=0, max_output_tokens=0, min_output_tokens=0)
        with pytest.raises(RateLimited):
            ledger.reserve([rate], input_tokens=0, max_output_tokens=0, min_output_tokens=0)
    finally:
        ledger.close()


def test_new_terms_are_not_admitted_from_a_lease_taken_under_the_old(path: Path) -> None:
    ledger = LeasingLedger(SQLiteLedger(path), interval=0.01)
    try:
        ledger.settle(ledger.reserve([BIG], input_tokens=10, max_output_tokens=90), tokens=0)
        _wait(lambda: ledger.reserve([BIG], input_tokens=1, max_output_tokens=1).id[0] == "l")
        lowered = Claim("big", "big", "key:a", 500)
        refused = 0
        for _ in range(10):  # 100 each: never more than 500 in all, whatever was leased
            try:
                ledger.reserve([lowered], input_tokens=10, max_output_tokens=90)
            except BudgetExceeded:
                refused += 1
        state = SQLiteLedger(path).usage([lowered])[0]
        assert state.used + ledger.usage([lowered])[0].reserved <= 500 + 2  # the probe's 2
        assert refused >= 5
    finally:
        ledger.close()


def test_usd_and_calendar_claims_are_leased_exactly(path: Path) -> None:
    clock = FakeClock()
    ledger = LeasingLedger(SQLiteLedger(path, clock=clock), interval=0.01)
    try:
        r = ledger.reserve([MONTH], input_tokens=100, max_output_tokens=100, rates=RATES)
        ledger.settle(r, tokens=150, cost=0.000123)
        _wait(lambda: bool(_lease_rows(path)))
        costs = [0.000001 * i for i in range(1, 40)]
        for cost in costs:
            r = ledger.reserve([MONTH], input_tokens=100, max_output_tokens=100, rates=RATES)
            assert r.id.startswith("l") and r.amounts == (0.0003,)
            ledger.settle(r, tokens=150, cost=cost)
        (state,) = ledger.usage([MONTH])
        assert round(state.used * 1e9) == 123_000 + sum(round(c * 1e9) for c in costs)
        assert state.reserved == 0
        assert state.resets_at == SQLiteLedger(path, clock=clock).usage([MONTH])[0].resets_at
    finally:
        ledger.close()


def test_expired_local_calls_free_their_hold_and_a_late_settle_counts_once(path: Path) -> None:
    clock = FakeClock()
    ledger = LeasingLedger(SQLiteLedger(path, clock=clock), interval=0.01)
    try:
        ledger.settle(ledger.reserve([BIG], input_tokens=10, max_output_tokens=90), tokens=0)
        _wait(lambda: bool(_lease_rows(path)))
        late = ledger.reserve([BIG], input_tokens=10, max_output_tokens=90, lease=10.0)
        assert late.id.startswith("l")
        assert ledger.usage([BIG])[0].reserved == 100
        clock.advance(11)
        assert ledger.usage([BIG])[0].reserved == 0
        ledger.settle(late, tokens=70)
        ledger.settle(late, tokens=70)
        assert [(s.used, s.reserved) for s in ledger.usage([BIG])] == [(70, 0)]
    finally:
        ledger.close()


def test_a_failing_sync_keeps_the_settles_for_the_next(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    inner = SQLiteLedger(path)
    ledger = LeasingLedger(inner, interval=0.01)
    try:
        ledger.settle(ledger.reserve([BIG], input_tokens=10, max_output_tokens=90), tokens=5)
        _wait(lambda: ledger.reserve([BIG], input_tokens=1, max_output_tokens=1).id[0] == "l")
        real = inner.sync_lease
        broken = threading.Event()

        def failing(*args: Any, **kwargs: Any) -> list[float]:
            broken.set()
            raise StoreError("the disk is gone")

        monkeypatch.setattr(inner, "sync_lease", failing)
        with caplog.at_level(logging.WARNING, "llmproxy.budget"):
            r = ledger.reserve([BIG], input_tokens=10, max_output_tokens=90)
            ledger.settle(r, tokens=60)
            # the tick that failed logs once it has caught the error: wait for the line itself
            _wait(lambda: "will retry: the disk is gone" in caplog.text)
        assert broken.is_set()
        other = SQLiteLedger(path)
        assert other.usage([BIG])[0].used == 5
        monkeypatch.setattr(inner, "sync_lease", real)
        _wait(lambda: other.usage([BIG])[0].used == 65)
        other.close()
    finally:
        ledger.close()


def _spend(path: str, rounds: int, out: Any) -> None:
    ledger = LeasingLedger(SQLiteLedger(path), interval=0.002)
    claims = [Claim("shared", "shared", "key:s", 30_000), Claim("r", "r", "key:s", 500, "requests")]
    spent = calls = 0
    for i in range(rounds):
        try:
            reservation = ledger.reserve(claims, input_tokens=10, max_output_tokens=50)
        except (BudgetExceeded, RateLimited):
            time.sleep(0.001)
            continue
        used = 10 + i % 51
        ledger.settle(reservation, tokens=used)
        spent += used
        calls += 1
    ledger.close()
    out.put((spent, calls))


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_processes_sharing_leases_never_overspend(path: Path) -> None:
    """Four processes race on one budget through leases; all is written, nothing overspent."""
    SQLiteLedger(path).close()
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    workers = [context.Process(target=_spend, args=(str(path), 400, out)) for _ in range(4)]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    spent, calls = sum(r[0] for r in results), sum(r[1] for r in results)
    tokens, requests = SQLiteLedger(path).usage(
        [Claim("shared", "shared", "key:s", 30_000), Claim("r", "r", "key:s", 500, "requests")]
    )
    assert (tokens.used, requests.used) == (spent, calls)
    assert tokens.used <= 30_000 and requests.used <= 500
    assert tokens.reserved == requests.reserved == 0  # every lease given back
    assert _lease_rows(path) == []
    assert calls < 1600  # the budget ran out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 2),  # which process
            st.sampled_from(["reserve", "settle", "sync"]),
            st.integers(1, 120),  # output asked, or tokens settled
        ),
        max_size=80,
    ),
    limit=st.sampled_from([300, 5_000, 1_000_000]),
    calls=st.sampled_from([40, 1000]),
)
def test_any_interleaving_of_processes_never_overspends(
    tmp_path_factory: pytest.TempPathFactory,
    steps: list[tuple[int, str, int]],
    limit: int,
    calls: int,
) -> None:
    """Three ledgers on one file (three processes), driven in any order: used plus reserved
    never exceeds the limit, and every settle is counted once."""
    path = tmp_path_factory.mktemp("interleave") / "l.db"
    clock = FakeClock()
    claim = Claim("k", "k", "s", limit)
    rpm = Claim("rpm", "rpm", "s", calls, "requests", 60.0)
    ledgers = [
        LeasingLedger(SQLiteLedger(path, clock=clock), interval=3600, min_calls=4) for _ in range(3)
    ]
    plain = SQLiteLedger(path, clock=clock)
    live: list[list[Reservation]] = [[], [], []]
    settled_tokens = settled_calls = 0
    try:
        for who, action, amount in steps:
            ledger = ledgers[who]
            if action == "reserve":
                with contextlib.suppress(BudgetExceeded, RateLimited):
                    live[who].append(
                        ledger.reserve([claim, rpm], input_tokens=5, max_output_tokens=amount)
                    )
            elif action == "settle" and live[who]:
                reservation = live[who].pop(0)
                tokens = min(amount, reservation.input_tokens + reservation.output_tokens)
                ledger.settle(reservation, tokens=tokens)
                settled_tokens += tokens
                settled_calls += 1
            else:
                ledger.flush()
            clock.advance(0.5)
            state, rate = plain.usage([claim, rpm])
            assert state.used + state.reserved <= limit
            assert rate.used + rate.reserved <= calls
        for who, ledger in enumerate(ledgers):
            for reservation in live[who]:
                ledger.settle(reservation, tokens=1)
                settled_tokens += 1
                settled_calls += 1
            ledger.close()
        state, rate = plain.usage([claim, rpm])
        assert (state.used, state.reserved) == (settled_tokens, 0)
        assert (rate.used, rate.reserved) == (settled_calls, 0)
    finally:
        for ledger in ledgers:
            ledger.close()
        plain.close()


def test_threads_and_background_syncs_never_overspend(path: Path) -> None:
    """Threads of two ledgers (two processes) spend one budget while their leases are synced
    every millisecond in the background; a watcher reading the file never sees it overspent."""
    claim = Claim("hot", "hot", "key:h", 60_000)
    rate = Claim("hot-rpm", "hot-rpm", "key:h", 5_000, "requests", 60.0)
    ledgers = [LeasingLedger(SQLiteLedger(path), interval=0.001, min_calls=4) for _ in range(2)]
    watcher = SQLiteLedger(path)
    spent: list[int] = []
    local = [0]
    problems: list[BaseException] = []
    done = threading.Event()
    peaks: list[float] = []

    def work(ledger: LeasingLedger, seed: int) -> None:
        try:
            for i in range(400):
                try:
                    r = ledger.reserve([claim, rate], input_tokens=10, max_output_tokens=50)
                except (BudgetExceeded, RateLimited):
                    continue
                if r.id.startswith("l"):
                    local[0] += 1
                used = min(5 + (i * seed) % 56, r.input_tokens + r.output_tokens)
                ledger.settle(r, tokens=used)
                spent.append(used)
        except BaseException as exc:
            problems.append(exc)

    def watch() -> None:
        while not done.is_set():
            state = watcher.usage([claim])[0]
            peaks.append(state.used + state.reserved)

    threads = [threading.Thread(target=work, args=(ledgers[i % 2], i + 1)) for i in range(8)]
    watching = threading.Thread(target=watch)
    watching.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watching.join()
    for ledger in ledgers:
        ledger.close()
    assert problems == []
    tokens, requests = watcher.usage([claim, rate])
    watcher.close()
    assert (tokens.used, requests.used) == (sum(spent), len(spent))
    assert tokens.used <= 60_000 and tokens.reserved == requests.reserved == 0
    assert max(peaks) <= 60_000
    assert local[0] > len(spent) / 2  # most calls were admitted from leases
    assert len(spent) < 8 * 400  # and the budget ran out


def test_calls_admitted_during_a_background_sync_stay_covered(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background transaction runs without the state's lock: calls admitted meanwhile
    come from the hold as it was, so the new hold must still cover them, even when the room
    left is too small for a new share."""
    claim = Claim("race", "race", "key:r", 3000)
    inner = SQLiteLedger(path)
    ledger = LeasingLedger(inner, interval=3600)
    try:
        ledger.settle(ledger.reserve([claim], input_tokens=10, max_output_tokens=50), tokens=0)
        _wait(lambda: bool(_lease_rows(path)))  # the thread's one sync, for the new key
        ledger.flush()
        ((_key, _owner, leased),) = _lease_rows(path)
        assert 360 <= leased <= 3000 // 8  # an eighth of the room (less a probe in flight)
        other = SQLiteLedger(path)  # another process spends most of the rest
        other.settle(other.reserve([claim], input_tokens=0, max_output_tokens=2600), tokens=2600)
        admitted: list[Reservation] = []
        real = inner.sync_lease

        def racing(*args: Any, **kwargs: Any) -> list[float] | None:
            for _ in range(3):  # the event loop admitting calls while the sync runs
                admitted.append(ledger.reserve([claim], input_tokens=10, max_output_tokens=50))
            return real(*args, **kwargs)

        monkeypatch.setattr(inner, "sync_lease", racing)
        ledger.reserve([claim], input_tokens=10, max_output_tokens=50)  # something to sync
        ledger._state.sync(release=False, background=True)
        monkeypatch.setattr(inner, "sync_lease", real)
        assert all(r.id.startswith("l") for r in admitted)
        ((_key, _owner, held),) = _lease_rows(path)
        assert held >= 4 * 60  # the four calls in flight, whatever the room
        state = other.usage([claim])[0]
        assert state.used + state.reserved <= 3000
        other.close()
    finally:
        ledger.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["reserve", "reserve", "settle", "release", "sync", "clock"]),
            st.integers(0, 600),
            st.integers(0, 7),
        ),
        max_size=80,
    ),
    limits=st.tuples(st.sampled_from([20_000, 200_000]), st.sampled_from([30, 400])),
)
def test_one_process_with_leases_answers_as_the_memory_ledger(
    tmp_path_factory: pytest.TempPathFactory,
    steps: list[tuple[str, int, int]],
    limits: tuple[int, int],
) -> None:
    """Leases large enough to admit many calls in memory: grants, refusals and every usage
    figure still equal the plain ledger's, step by step."""
    path = tmp_path_factory.mktemp("same") / "l.db"
    clock = FakeClock()
    tokens = Claim("t", "t", "s", limits[0])
    rate = Claim("r", "r", "s", limits[1], "requests", 60.0)
    month = Claim("m", "m", "s", 0.05, "usd", period="month", tz="Asia/Ho_Chi_Minh")
    options = [[tokens], [tokens, rate], [rate], [tokens, rate, month], [month]]
    leasing = LeasingLedger(SQLiteLedger(path, clock=clock), interval=3600, min_calls=4)
    memory = MemoryLedger(clock=clock)
    live: list[tuple[Reservation, Reservation]] = []
    try:
        for action, amount, pick in steps:
            if action == "reserve":
                claims = options[pick % len(options)]
                args: dict[str, Any] = {
                    "input_tokens": 10 + pick,
                    "max_output_tokens": 1 + amount,
                    "rates": RATES,
                }
                outcomes: list[Any] = []
                for ledger in (leasing, memory):
                    try:
                        outcomes.append(ledger.reserve(claims, **args))
                    except (BudgetExceeded, RateLimited) as exc:
                        outcomes.append((type(exc), str(exc)))
                a, b = outcomes
                if isinstance(a, Reservation) and isinstance(b, Reservation):
                    assert (a.output_tokens, a.amounts) == (b.output_tokens, b.amounts)
                    live.append((a, b))
                else:
                    assert a == b
            elif action in ("settle", "release") and live:
                a, b = live.pop(pick % len(live))
                held = a.input_tokens + a.output_tokens
                tokens_used, requests, cost = min(amount, held), 1, 0.0
                if action == "release":
                    tokens_used, requests = 0, 0
                elif any(c.unit == "usd" for c in a.claims):
                    cost = round(RATES.input * a.input_tokens, 9)
                for ledger, reservation in ((leasing, a), (memory, b)):
                    ledger.settle(reservation, tokens=tokens_used, requests=requests, cost=cost)
            elif action == "sync":
                leasing.flush()
            else:
                clock.advance(amount / 100)  # up to 6 s: leases go idle, calls age out
            claims_all = [tokens, rate, month]
            got = [x for u in leasing.usage(claims_all) for x in (u.used, u.reserved)]
            want = [x for u in memory.usage(claims_all) for x in (u.used, u.reserved)]
            assert got == pytest.approx(want, abs=1e-9)
    finally:
        leasing.close()
        memory.close()


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_a_forked_child_starts_without_the_parents_leases(path: Path) -> None:
    ledger = LeasingLedger(SQLiteLedger(path), interval=0.01)
    try:
        ledger.settle(ledger.reserve([BIG], input_tokens=10, max_output_tokens=90), tokens=0)
        _wait(lambda: ledger.reserve([BIG], input_tokens=1, max_output_tokens=1).id[0] == "l")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                first = ledger.reserve([BIG], input_tokens=10, max_output_tokens=90)
                ledger.settle(first, tokens=7)
                ledger.close()
                os.write(write, b"l" if first.id.startswith("l") else b"s")
            finally:
                os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"s"  # the child's first call went to the shared ledger
        os.waitpid(pid, 0)
        os.close(read)
        assert ledger.usage([BIG])[0].used == 7
    finally:
        ledger.close()


def test_env_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {"LLMPROXY_DATA_DIR": str(tmp_path), "LLMPROXY_PLUGINS": ""}
    proxy = Proxy.from_env(environ)
    assert isinstance(shared_ledger(proxy.ledger), SQLiteLedger)
    proxy.close()
    proxy = Proxy.from_env({**environ, "LLMPROXY_LEDGER_LEASE": "on"})
    ledger = shared_ledger(proxy.ledger)
    assert isinstance(ledger, LeasingLedger)
    assert ledger.path == str(tmp_path / "ledger.db")
    proxy.close()
    with pytest.raises(ConfigError, match="LLMPROXY_LEDGER_LEASE must be on or off, got 'maybe'"):
        Proxy.from_env({**environ, "LLMPROXY_LEDGER_LEASE": "maybe"})
