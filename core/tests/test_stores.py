"""The built-in history stores and ledgers against the contracts, plus SQLite-specific tests."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from llmproxy.budget.base import Claim
from llmproxy.budget.lease import LeasingLedger
from llmproxy.budget.memory import MemoryLedger
from llmproxy.budget.sqlite import SQLiteLedger
from llmproxy.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidRequest,
    RateLimited,
    StoreError,
)
from llmproxy.history import sqlite as history_sqlite
from llmproxy.history.base import HistoryRecord
from llmproxy.history.memory import MemoryHistoryStore
from llmproxy.history.sqlite import SQLiteHistoryStore
from llmproxy.types import Message
from llmproxy_testing.contracts import (
    _MACHINE_RATES,
    FakeClock,
    HistoryStoreContract,
    LedgerContract,
    _ledger_machine,
)


class TestMemoryHistoryStore(HistoryStoreContract):
    @pytest.fixture
    def store(self) -> MemoryHistoryStore:
        return MemoryHistoryStore()


class TestSQLiteHistoryStore(HistoryStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteHistoryStore]:
        store = SQLiteHistoryStore(tmp_path / "nested" / "dir" / "history.db")
        yield store
        store.close()


# The built-in ledgers are fast: let the state machine look harder than the contract's default.
_THOROUGH = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class TestMemoryLedger(LedgerContract):
    state_machine_settings = _THOROUGH

    @pytest.fixture
    def ledger(self, clock: FakeClock) -> MemoryLedger:
        return MemoryLedger(clock=clock)


class TestSQLiteLedger(LedgerContract):
    state_machine_settings = _THOROUGH

    @pytest.fixture
    def ledger(self, clock: FakeClock, tmp_path: Path) -> Iterator[SQLiteLedger]:
        ledger = SQLiteLedger(tmp_path / "ledger.db", clock=clock)
        yield ledger
        ledger.close()


class TestLeasingLedger(LedgerContract):
    """Budget leasing in one process answers exactly as the shared ledger does."""

    state_machine_settings = _THOROUGH

    @pytest.fixture
    def ledger(self, clock: FakeClock, tmp_path: Path) -> Iterator[LeasingLedger]:
        # A short interval, so that the background sync runs amid the contract's steps.
        ledger = LeasingLedger(SQLiteLedger(tmp_path / "ledger.db", clock=clock), interval=0.002)
        yield ledger
        ledger.close()


# --- the ledger state machine ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize(("which", "settled_late"), [(5, True), (6, False)], ids=["day", "month"])
def test_machine_settles_late_only_within_the_grace(
    tmp_path: Path, kind: str, which: int, settled_late: bool
) -> None:
    """Holds charged more than the settled grace ago are not settled late by the state machine.

    The machine's start is under 19 h before the daily claim's period end and 16 days before the
    monthly one's. A ledger may forget a charge once its grace is over, and when it does
    depends on the ids it has seen (of earlier runs too, as the clock goes back between
    them): a late settle after a jump to the month's end replayed differently (seed
    3578902972). Jumping to the day's end keeps the charges within the grace.
    """
    clock = FakeClock()
    ledger = (
        MemoryLedger(clock=clock)
        if kind == "memory"
        else SQLiteLedger(tmp_path / "l.db", clock=clock)
    )
    try:
        # The machine class is built at run time: its rules are not known to the type checker.
        machine: Any = _ledger_machine(ledger, clock, grace=86400.0)()
        for _ in range(2):
            machine.reserve(
                chosen={5, 6},
                input_tokens=10,
                least=0,
                extra=10,
                lease=5.0,
                rates=_MACHINE_RATES[0],
            )
        machine.advance(10.0)
        machine.within_limits()
        charged = list(machine.expired)
        assert len(charged) == 2
        machine.advance_to_period_end(which, -2.0)
        machine.within_limits()
        assert machine.expired == (charged if settled_late else [])
        machine.teardown()
    finally:
        ledger.close()


# --- memory history specifics ---------------------------------------------------------------


def _rec(session_id: str, content: str, created_at: float = 0.0) -> HistoryRecord:
    return HistoryRecord(session_id, Message("user", content), created_at=created_at)


def test_memory_store_trims_oldest() -> None:
    store = MemoryHistoryStore(max_messages_per_session=3)
    store.append([_rec("s", "1"), _rec("s", "2")])
    store.append([_rec("s", "3"), _rec("s", "4"), _rec("s", "5")])
    store.append([_rec("t", "x")])
    assert [r.content for r in store.load("s")] == ["3", "4", "5"]
    assert [r.content for r in store.load("s", 2)] == ["4", "5"]
    assert {i.session_id: i.message_count for i in store.sessions()} == {"s": 3, "t": 1}
    assert store.delete("s") == 3
    with pytest.raises(ConfigError):
        MemoryHistoryStore(max_messages_per_session=0)


def test_negative_limit_is_refused(tmp_path: Path) -> None:
    for store in (MemoryHistoryStore(), SQLiteHistoryStore(tmp_path / "h.db")):
        with pytest.raises(InvalidRequest):
            store.load("s", -1)
        store.close()


# --- SQLite history specifics ---------------------------------------------------------------


def test_sqlite_history_persists_and_keeps_nul(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    store = SQLiteHistoryStore(path)
    records = [_rec("s", "a\x00b", 1.0), _rec("s", "two", 2.0)]
    store.append(records)
    store.close()
    reopened = SQLiteHistoryStore(str(path))
    assert reopened.load("s") == records
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    reopened.close()


def test_sqlite_history_large_append_is_one_transaction(tmp_path: Path) -> None:
    store = SQLiteHistoryStore(tmp_path / "h.db")
    records = [_rec("big", str(i)) for i in range(200)]
    store.append(records)
    assert store.load("big") == records
    bad = [_rec("big2", str(i)) for i in range(200)]
    bad[150] = HistoryRecord("big2", Message("user", "x"), created_at=object())  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.append(bad)
    assert store.load("big2") == []
    store.close()


def test_sqlite_history_failed_append_writes_nothing(tmp_path: Path) -> None:
    store = SQLiteHistoryStore(tmp_path / "h.db")
    good = _rec("s", "kept")
    bad = HistoryRecord("s", Message("user", "x"), created_at=object())  # type: ignore[arg-type]
    with pytest.raises(StoreError, match=r"h\.db"):
        store.append([good, bad])
    assert store.load("s") == []
    store.close()


def test_sqlite_history_shares_a_file_with_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    ledger = SQLiteLedger(path)
    store = SQLiteHistoryStore(path)
    store.append([_rec("s", "hi")])
    claim = Claim("k", "p", "s", 100)
    ledger.settle(ledger.reserve([claim], input_tokens=1, max_output_tokens=9), tokens=10)
    assert store.load("s")[0].content == "hi"
    assert ledger.usage([claim])[0].used == 10
    store.close()
    ledger.close()


def test_sqlite_checkpoints_run_in_the_background(tmp_path: Path) -> None:
    """Callers' commits never copy the WAL into the file: a background thread does it."""
    path = tmp_path / "shared.db"
    store = SQLiteHistoryStore(path)
    ledger = SQLiteLedger(path)
    for conn in (store._db.connection(), ledger._db.connection()):
        (pages,) = conn.execute("PRAGMA wal_autocheckpoint").fetchone()
        assert pages == history_sqlite.AUTOCHECKPOINT_PAGES
    size_before = path.stat().st_size
    checkpointer = history_sqlite._CHECKPOINTER
    done_before = checkpointer.done_by_path[str(path)]
    claim = Claim("k", "p", "s", 10**9)
    for i in range(history_sqlite.CHECKPOINT_EVERY):
        store.append([_rec("s", "x" * 2000 + str(i))])
        ledger.settle(ledger.reserve([claim], input_tokens=1, max_output_tokens=9), tokens=10)
    # The ledger's 128th write (halfway through, after 64 history rows of 2 kB) asked for a
    # checkpoint of this file; once one has finished, those rows are in the file, not only the WAL.
    assert checkpointer.wait_for(str(path), done_before + 1, timeout=30)
    assert path.stat().st_size > size_before + 50 * 2000
    assert len(store.load("s")) == history_sqlite.CHECKPOINT_EVERY
    assert ledger.usage([claim])[0].used == 10 * history_sqlite.CHECKPOINT_EVERY
    store.close()
    ledger.close()


def test_sqlite_checkpointer_ignores_a_file_it_cannot_open(tmp_path: Path) -> None:
    checkpointer = history_sqlite._Checkpointer()
    checkpointer.checkpoint(str(tmp_path / "missing-dir" / "x.db"), 0.1)
    checkpointer.checkpoint(str(tmp_path / "deleted.db"), 0.1)
    assert checkpointer.done == 0
    assert not (tmp_path / "deleted.db").exists()


def test_sqlite_errors_are_store_errors(tmp_path: Path) -> None:
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not an sqlite file at all" * 100)
    with pytest.raises(StoreError, match=r"garbage\.db.*another path"):
        SQLiteHistoryStore(not_a_db)
    with pytest.raises(StoreError, match=r"garbage\.db"):
        SQLiteLedger(not_a_db)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="directory"):
        SQLiteHistoryStore(blocker / "sub" / "h.db")

    store = SQLiteHistoryStore(tmp_path / "closed.db")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.load("s")


def test_sqlite_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="upgrade llmproxy"):
        SQLiteHistoryStore(path)


def test_sqlite_busy_maps_to_store_error(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    ledger = SQLiteLedger(path, timeout=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match=r"locked.*timeout"):
            ledger.reserve([Claim("k", "p", "s", 100)], input_tokens=1, max_output_tokens=1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert ledger.usage([Claim("k", "p", "s", 100)])[0].reserved == 0
    ledger.close()


# --- ledger specifics -----------------------------------------------------------------------


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
def any_ledger(
    request: pytest.FixtureRequest, tmp_path: Path, fake_clock: FakeClock
) -> Iterator[MemoryLedger | SQLiteLedger]:
    ledger: MemoryLedger | SQLiteLedger
    if request.param == "memory":
        ledger = MemoryLedger(fake_clock)
    else:
        ledger = SQLiteLedger(tmp_path / "l.db", clock=fake_clock)
    yield ledger
    ledger.close()


def test_all_time_request_claim_is_a_budget(any_ledger: MemoryLedger | SQLiteLedger) -> None:
    calls = Claim("calls", "calls", "user:a", 1, "requests")
    any_ledger.reserve([calls], input_tokens=1, max_output_tokens=1)
    with pytest.raises(BudgetExceeded) as caught:
        any_ledger.reserve([calls], input_tokens=1, max_output_tokens=1)
    assert (caught.value.unit, caught.value.requested, caught.value.reserved) == ("requests", 1, 1)


def test_retry_after_counts_the_requests_that_must_age_out(
    any_ledger: MemoryLedger | SQLiteLedger, fake_clock: FakeClock
) -> None:
    clock = fake_clock
    rate = Claim("r", "r", "s", 3, "requests", 60.0)
    any_ledger.settle(any_ledger.reserve([rate], input_tokens=1, max_output_tokens=1), tokens=0)
    clock.advance(10)
    any_ledger.settle(
        any_ledger.reserve([rate], input_tokens=1, max_output_tokens=1), tokens=0, requests=2
    )
    clock.advance(10)
    # The limit was lowered to 2 with 3 requests in the window: both events must age out.
    lowered = Claim("r", "r", "s", 2, "requests", 60.0)
    with pytest.raises(RateLimited) as caught:
        any_ledger.reserve([lowered], input_tokens=1, max_output_tokens=1)
    assert caught.value.retry_after == pytest.approx(50)


def test_invalid_arguments(any_ledger: MemoryLedger | SQLiteLedger) -> None:
    claim = Claim("k", "p", "s", 100)
    with pytest.raises(InvalidRequest):
        any_ledger.reserve([claim], input_tokens=-1, max_output_tokens=1)
    with pytest.raises(InvalidRequest):
        any_ledger.reserve([claim], input_tokens=1, max_output_tokens=1, min_output_tokens=2)
    with pytest.raises(InvalidRequest, match="distinct names"):
        any_ledger.reserve([claim, Claim("k", "p", "s", 50)], input_tokens=1, max_output_tokens=1)
    with pytest.raises(InvalidRequest):
        any_ledger.reserve([claim], input_tokens=1, max_output_tokens=1, lease=0)
    reservation = any_ledger.reserve([claim], input_tokens=1, max_output_tokens=1)
    with pytest.raises(InvalidRequest):
        any_ledger.settle(reservation, tokens=-1)
    assert any_ledger.usage([claim])[0].reserved == 2
    twice = any_ledger.reserve([claim, claim], input_tokens=1, max_output_tokens=1)
    assert (twice.claims, twice.amounts) == ((claim,), (2.0,))
    assert any_ledger.usage([claim])[0].reserved == 4


async def test_ausage(any_ledger: MemoryLedger | SQLiteLedger) -> None:
    claim = Claim("k", "p", "s", 100)
    await any_ledger.areserve([claim], input_tokens=10, max_output_tokens=10)
    (state,) = await any_ledger.ausage([claim])
    assert state.reserved == 20


def test_sqlite_ledger_threads_with_own_connections(tmp_path: Path) -> None:
    path = tmp_path / "threads.db"
    SQLiteLedger(path).close()
    claim = Claim("k", "p", "s", 500)
    totals: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        ledger = SQLiteLedger(path)
        try:
            for _ in range(40):
                try:
                    reservation = ledger.reserve([claim], input_tokens=5, max_output_tokens=10)
                except BudgetExceeded:
                    continue
                ledger.settle(
                    reservation, tokens=reservation.input_tokens + reservation.output_tokens
                )
                totals.append(reservation.input_tokens + reservation.output_tokens)
        except BaseException as exc:
            errors.append(exc)
        finally:
            ledger.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ledger = SQLiteLedger(path)
    (state,) = ledger.usage([claim])
    assert state.used == sum(totals) <= 500
    assert state.reserved == 0
    ledger.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sqlite_stores_work_in_a_forked_child(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "l.db")
    store = SQLiteHistoryStore(tmp_path / "h.db")
    claim = Claim("k", "p", "s", 1000)
    held = ledger.reserve([claim], input_tokens=1, max_output_tokens=9)
    store.append([_rec("s", "parent")])
    inherited, inherited_store = ledger._db.conn, store._db.conn

    def child() -> None:
        reservation = ledger.reserve([claim], input_tokens=10, max_output_tokens=90)
        ledger.settle(reservation, tokens=100)
        store.append([_rec("s", "child")])
        if ledger._db.conn is inherited or store._db.conn is inherited_store:
            os._exit(3)

    # Fork while another thread would be inside a call (the locks held): the child must get
    # new locks and its own connections rather than deadlock or share the parent's.
    with ledger._db.lock, store._db.lock:
        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
    process.join(timeout=30)
    if process.exitcode is None:
        process.kill()
    assert process.exitcode == 0
    ledger.settle(held, tokens=10)
    assert ledger.usage([claim])[0].used == 110
    assert [r.content for r in store.load("s")] == ["parent", "child"]
    ledger.close()
    store.close()


# --- several processes on one SQLite ledger -------------------------------------------------

_TOKENS = Claim("proc|tokens", "proc", "all", 2000)
_RATE = Claim("proc|rate", "proc-rate", "all", 150, "requests", 3600.0)


def _process_worker(
    path: str, cycles: int, results: multiprocessing.Queue[tuple[int, int, int]]
) -> None:
    ledger = SQLiteLedger(path, timeout=30.0)
    successes = spent = refused = 0
    for _ in range(cycles):
        try:
            reservation = ledger.reserve([_TOKENS, _RATE], input_tokens=10, max_output_tokens=40)
        except (BudgetExceeded, RateLimited):
            refused += 1
            continue
        used = reservation.input_tokens + reservation.output_tokens
        ledger.settle(reservation, tokens=used)
        successes += 1
        spent += used
    ledger.close()
    results.put((successes, spent, refused))


def test_sqlite_ledger_across_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The spawned children import this module by name: make that name importable for them.
    root = Path(__file__).resolve().parents[__name__.count(".")]
    monkeypatch.syspath_prepend(str(root))
    if sys.modules.get(__name__) is None:
        pytest.skip("this test module is not importable by name")
    path = str(tmp_path / "shared.db")
    SQLiteLedger(path).close()
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[tuple[int, int, int]] = context.Queue()
    processes = [
        context.Process(target=_process_worker, args=(path, 50, results)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    successes = sum(o[0] for o in outcomes)
    spent = sum(o[1] for o in outcomes)
    refused = sum(o[2] for o in outcomes)
    assert successes + refused == 200
    assert refused > 0
    ledger = SQLiteLedger(path)
    tokens, rate = ledger.usage([_TOKENS, _RATE])
    assert tokens.used == spent <= 2000
    assert rate.used == successes <= 150
    assert tokens.reserved == rate.reserved == 0
    ledger.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_holds").fetchone()[0] == 0
