"""Ledgers that list every budget they hold (ListableLedger): SQLite and the leasing wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmproxy.budget.base import Claim, ListableLedger, Rates
from llmproxy.budget.lease import LeasingLedger
from llmproxy.budget.memory import MemoryLedger
from llmproxy.budget.sqlite import SQLiteLedger
from llmproxy.errors import BudgetExceeded

TEAM = Claim("team|global", "team", "global", 3000)
RATE = Claim("rpm|key:k1", "rpm", "key:k1", 5, "requests", 60.0)
MONTH = Claim("cost|user:ann", "cost", "user:ann", 2.5, "usd", period="month", tz="Asia/Tokyo")


def test_sqlite_lists_what_was_reserved_with_its_terms(tmp_path: Path) -> None:
    clock = [1_000_000.0]
    ledger = SQLiteLedger(tmp_path / "l.db", clock=lambda: clock[0])
    assert isinstance(ledger, ListableLedger) and not isinstance(MemoryLedger(), ListableLedger)
    assert ledger.budgets() == []
    held = ledger.reserve(
        [TEAM, RATE, MONTH], input_tokens=10, max_output_tokens=10, rates=Rates(0.001, 0.002)
    )
    ledger.settle(held, tokens=15, cost=0.02)
    ledger.reserve([TEAM], input_tokens=5, max_output_tokens=5)  # in flight
    clock[0] += 1
    other = SQLiteLedger(tmp_path / "l.db", clock=lambda: clock[0])  # another process
    rows = other.budgets()
    assert [row.claim for row in rows] == sorted([MONTH, RATE, TEAM], key=lambda c: c.key)
    by_key = {row.claim.key: row for row in rows}
    assert (by_key[TEAM.key].used, by_key[TEAM.key].reserved) == (15, 10)
    assert by_key[RATE.key].used == 1 and by_key[RATE.key].resets_at == 1_000_060.0
    assert by_key[MONTH.key].used == 0.02 and by_key[MONTH.key].resets_at is not None
    assert by_key[TEAM.key].remaining == 3000 - 25
    # New terms under the same key (a raised limit) replace the old ones, by any process.
    raised = Claim("team|global", "team", "global", 5000)
    other.reserve([raised], input_tokens=1, max_output_tokens=1)
    assert [row.claim.limit for row in ledger.budgets() if row.claim.key == TEAM.key] == [5000]
    ledger.close()
    other.close()


def test_a_refused_reserve_records_no_terms(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "l.db")
    tiny = Claim("tiny|global", "tiny", "global", 1)
    with pytest.raises(BudgetExceeded):
        ledger.reserve([tiny], input_tokens=10, max_output_tokens=10)
    assert ledger.budgets() == []
    ledger.reserve([TEAM], input_tokens=1, max_output_tokens=1)
    assert [row.claim for row in ledger.budgets()] == [TEAM]
    ledger.close()


def test_leasing_ledger_lists_after_writing_its_settles(tmp_path: Path) -> None:
    shared = SQLiteLedger(tmp_path / "l.db")
    ledger = LeasingLedger(shared, interval=60)  # no background sync during the test
    for _ in range(20):
        held = ledger.reserve([TEAM], input_tokens=10, max_output_tokens=10)
        ledger.settle(held, tokens=12)
    rows = ledger.budgets()
    assert isinstance(ledger, ListableLedger)
    assert [(row.claim, row.used, row.reserved) for row in rows] == [(TEAM, 240, 0)]
    ledger.close()
