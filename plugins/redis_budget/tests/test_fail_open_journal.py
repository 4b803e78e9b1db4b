"""Fail-open is journaled: what a process admits while Redis is away reaches Redis once.

Every test runs its own redis-server (stopped, restarted empty on the same port, or frozen),
so Redis's totals after the outage are exactly what the journal brought back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmproxy.budget.base import Claim, Rates, Reservation
from llmproxy.errors import BudgetExceeded
from llmproxy.journal import Journal
from llmproxy_redis_budget import RedisLedger
from llmproxy_redis_budget.ledger import LOCAL_PREFIX
from llmproxy_testing.redis_fixtures import need_redis_server
from llmproxy_testing.redis_server import RedisServer

MakeLedger = Callable[..., RedisLedger]

TOKENS = Claim("fo|tokens", "fo-tokens", "g", 10_000)
WINDOW = Claim("fo|window", "fo-window", "g", 10_000, window=3600.0)
DAY = Claim("fo|day", "fo-day", "g", 10_000, period="day", tz="Europe/Paris")
REQUESTS = Claim("fo|rpm", "fo-rpm", "g", 1_000, "requests", 60.0)
DOLLARS = Claim("fo|usd", "fo-usd", "g", 100.0, "usd")
CLAIMS = [TOKENS, WINDOW, DAY, REQUESTS, DOLLARS]
RATES = Rates(input=0.001, output=0.002)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to stop and restart."""
    need_redis_server()
    with RedisServer() as spare:
        yield spare


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    """The journal in the test's data dir (the one make_ledger's ledgers use)."""
    with Journal(tmp_path / "journal.db") as opened:
        yield opened


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (checked every 10 ms), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def pending(journal: Journal, ledger: RedisLedger) -> int:
    return len(journal.pending(ledger_url=ledger.journal_key, history_url=None, limit=1000))


def used(ledger: RedisLedger, claims: list[Claim]) -> list[float]:
    return [usage.used for usage in ledger.usage(claims)]


def outage_ledger(make_ledger: MakeLedger, server: RedisServer) -> RedisLedger:
    """A fail-open ledger that has seen Redis (scripts loaded), with Redis then stopped."""
    ledger = make_ledger(server.url, fail="open", breaker_failures=1, breaker_probe=0.05)
    ledger.usage([TOKENS])
    server.stop()
    return ledger


def test_outage_spend_reaches_redis_exactly_once(
    make_ledger: MakeLedger, server: RedisServer, journal: Journal
) -> None:
    ledger = outage_ledger(make_ledger, server)
    spent = [(100, 200, 0.3), (50, 10, 0.05), (7, 1, 0.001)]
    for tokens, _, cost in spent:
        local = ledger.reserve(CLAIMS, input_tokens=40, max_output_tokens=300, rates=RATES)
        assert local.id.startswith(LOCAL_PREFIX)
        ledger.settle(local, tokens=tokens, cost=cost)
    # Each settle replaced its worst case in the journal: one real entry per call is left.
    entries = journal.pending(ledger_url=ledger.journal_key, history_url=None)
    assert [e.settle for e in entries] == [
        {"tokens": tokens, "requests": 1, "cost": cost} for tokens, _, cost in spent
    ]
    assert all(not e.reservation.id.startswith(LOCAL_PREFIX) for e in entries if e.reservation)

    server.restart()  # empty: whatever Redis counts now came from the journal
    wait_for(lambda: ledger.breaker.state == "closed", "the probe to close the breaker")
    wait_for(lambda: pending(journal, ledger) == 0, "the background replay")
    reader = make_ledger(server.url)
    total_tokens = sum(tokens for tokens, _, _ in spent)
    total_cost = sum(cost for _, _, cost in spent)
    expected = [total_tokens, total_tokens, total_tokens, len(spent)]
    assert used(reader, CLAIMS)[:4] == expected
    assert used(reader, CLAIMS)[4] == pytest.approx(total_cost)

    # A second replayer that read the same entries before they were removed: still once.
    for entry in entries:
        assert entry.reservation is not None and entry.settle is not None
        journal.add(
            ledger_url=ledger.journal_key,
            history_url=None,
            reservation=entry.reservation,
            settle=entry.settle,
            records=(),
        )
    assert ledger.replay_journal() == len(spent)
    assert pending(journal, ledger) == 0
    assert used(reader, CLAIMS)[:4] == expected
    assert used(reader, CLAIMS)[4] == pytest.approx(total_cost)


def test_a_worst_case_replayed_first_is_replaced_by_the_real_settle(
    make_ledger: MakeLedger, server: RedisServer, journal: Journal
) -> None:
    """A call admitted during the outage and still running when Redis returns."""
    ledger = outage_ledger(make_ledger, server)
    local = ledger.reserve(CLAIMS, input_tokens=40, max_output_tokens=300, rates=RATES)
    hold = dict(zip(CLAIMS, local.amounts, strict=True))
    assert hold[TOKENS] == 340
    server.restart()
    wait_for(lambda: ledger.breaker.state == "closed", "the probe to close the breaker")
    wait_for(lambda: pending(journal, ledger) == 0, "the worst case to be replayed")
    reader = make_ledger(server.url)
    assert used(reader, CLAIMS)[:4] == [340, 340, 340, 1]  # unknown is spent: the full hold
    assert used(reader, CLAIMS)[4] == pytest.approx(hold[DOLLARS])

    ledger.settle(local, tokens=90, cost=0.07)  # the call ends: its real use replaces it
    wait_for(lambda: pending(journal, ledger) == 0, "the real settle to be replayed")
    assert used(reader, CLAIMS)[:4] == [90, 90, 90, 1]
    assert used(reader, CLAIMS)[4] == pytest.approx(0.07)
    ledger.settle(local, tokens=90, cost=0.07)  # a repeat changes nothing
    ledger.replay_journal()
    assert used(reader, CLAIMS)[:4] == [90, 90, 90, 1]


def test_each_process_overruns_by_at_most_its_limit_and_all_of_it_counts(
    make_ledger: MakeLedger, server: RedisServer, journal: Journal
) -> None:
    """Two processes (two fallbacks) during one outage: the documented N x limit bound."""
    claim = Claim("fo|small", "fo-small", "g", 100)
    first = make_ledger(server.url, fail="open", breaker_failures=1, breaker_probe=0.05)
    second = make_ledger(server.url, fail="open", breaker_failures=1, breaker_probe=0.05)
    first.usage([claim])
    second.usage([claim])
    server.stop()
    for ledger in (first, second):
        ledger.settle(ledger.reserve([claim], input_tokens=50, max_output_tokens=50), tokens=100)
        with pytest.raises(BudgetExceeded):  # each fallback enforces the limit on its own
            ledger.reserve([claim], input_tokens=1, max_output_tokens=1)
    server.restart()
    wait_for(lambda: pending(journal, first) == 0, "the replays")
    reader = make_ledger(server.url)
    assert used(reader, [claim]) == [200]  # at most 2 x limit, and all of it counted
    with pytest.raises(BudgetExceeded):
        reader.reserve([claim], input_tokens=1, max_output_tokens=1)


_KILLED = """
import sys
from llmproxy.budget.base import Claim
from llmproxy_redis_budget import RedisLedger

url, data_dir = sys.argv[1], sys.argv[2]
ledger = RedisLedger(url + "?fail=open&breaker_failures=1", environ={"LLMPROXY_DATA_DIR": data_dir})
claim = Claim("fo|killed", "fo-killed", "g", 100_000)
for _ in range(3):
    reservation = ledger.reserve([claim], input_tokens=100, max_output_tokens=400)
    assert reservation.id.startswith("local:"), reservation.id
print("reserved", flush=True)
sys.stdin.read()  # killed here, its calls at the upstream
"""


def test_a_process_killed_during_the_outage_is_counted_for_its_full_holds(
    make_ledger: MakeLedger, server: RedisServer, journal: Journal, tmp_path: Path
) -> None:
    server.stop()
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED, server.url, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "reserved"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    server.restart()
    claim = Claim("fo|killed", "fo-killed", "g", 100_000)
    survivor = make_ledger(server.url, fail="open")
    assert pending(journal, survivor) == 3
    # Its first call that reaches Redis finds the dead process's entries and replays them.
    survivor.settle(survivor.reserve([claim], input_tokens=1, max_output_tokens=1), tokens=2)
    wait_for(lambda: pending(journal, survivor) == 0, "the leftovers to be replayed")
    assert used(survivor, [claim]) == [3 * 500 + 2]


def test_a_settle_of_a_redis_hold_during_the_outage_counts_once(
    make_ledger: MakeLedger, server: RedisServer, journal: Journal
) -> None:
    """Redis frozen: the settle times out (journaled), then Redis runs it late: still once."""
    ledger = make_ledger(
        server.url, fail="open", breaker_failures=1, breaker_probe=0.05, socket_timeout=0.2
    )
    held = ledger.reserve([TOKENS, WINDOW], input_tokens=10, max_output_tokens=100)
    assert not held.id.startswith(LOCAL_PREFIX)
    with server.frozen():
        ledger.settle(held, tokens=30)  # times out: counted locally and journaled
        assert pending(journal, ledger) == 1
    wait_for(lambda: ledger.breaker.state == "closed", "the probe to close the breaker")
    wait_for(lambda: pending(journal, ledger) == 0, "the replay")
    reader = make_ledger(server.url)
    usage = reader.usage([TOKENS, WINDOW])
    assert [u.used for u in usage] == [30, 30]
    assert [u.reserved for u in usage] == [0, 0]


async def test_async_fail_open_is_journaled(
    make_ledger: MakeLedger, server: RedisServer, journal: Journal
) -> None:
    ledger = outage_ledger(make_ledger, server)
    local: Reservation = await ledger.areserve([TOKENS], input_tokens=10, max_output_tokens=10)
    assert local.id.startswith(LOCAL_PREFIX)
    [worst] = journal.pending(ledger_url=ledger.journal_key, history_url=None)
    assert worst.settle == {"tokens": 20, "requests": 1, "cost": 0.0}
    await ledger.asettle(local, tokens=15)
    [real] = journal.pending(ledger_url=ledger.journal_key, history_url=None)
    assert real.settle == {"tokens": 15, "requests": 1, "cost": 0.0}
    server.restart()
    wait_for(lambda: ledger.breaker.state == "closed", "the probe to close the breaker")
    assert ledger.replay_journal() in (0, 1)  # (the background replay may have run first)
    wait_for(lambda: pending(journal, ledger) == 0, "the replay")
    assert used(make_ledger(server.url), [TOKENS]) == [15]
    await ledger.aclose()


def test_a_journal_that_cannot_be_written_does_not_stop_fail_open(
    make_ledger: MakeLedger, server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the data dir should be")
    ledger = make_ledger(
        server.url, fail="open", breaker_failures=1, environ={"LLMPROXY_DATA_DIR": str(blocked)}
    )
    ledger.usage([TOKENS])
    server.stop()
    local = ledger.reserve([TOKENS], input_tokens=10, max_output_tokens=10)
    ledger.settle(local, tokens=5)
    assert ledger.fallback.usage([TOKENS])[0].used == 5
    assert "cannot open its fail-open journal" in caplog.text
