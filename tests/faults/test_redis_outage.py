"""Finding 4: Redis dying after the upstream answered must lose no answer and charge once.

A real redis-server keeps the ledger and the history (appendonly, fsync always, so a SIGKILL
loses nothing it acknowledged). Five calls are held at the upstream; then Redis is killed
(or frozen with SIGSTOP) and the upstream answers. The promises: every caller gets its answer
(the upstream produced and billed it); once Redis is back the spend is recorded exactly once
(ledger used == billed, no double charge after SIGCONT) and each exchange is in history once;
and the next call after Redis answers PING succeeds (no circuit breaker left open).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmproxy import Proxy
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.redis_server import RedisServer
from tests.faults.conftest import (
    duplicate_requests,
    proxy_config,
    proxy_env,
    record_figures,
    size,
)

CALLS = size("REDIS_CALLS", 5)
#: Never refuses: a call with no output cap holds about 4,000 tokens while it runs, so the budget
#: grows with the calls held at once (100,000 for the fast form's 5).
BUDGET = 20_000 * max(CALLS, 5)


@pytest.fixture
def proxy(fake: FakeOpenAI, persistent_redis: RedisServer, tmp_path: Path) -> Iterator[Proxy]:
    made = Proxy(
        proxy_config(BUDGET, lease=60.0),
        ledger=persistent_redis.url,
        history=persistent_redis.url,
        environ=proxy_env(fake, tmp_path / "data"),
    )
    yield made
    made.close()


def held_calls(proxy: Proxy, fake: FakeOpenAI) -> tuple[list[threading.Thread], list[object]]:
    """Start CALLS calls (sessions s0..s4) and wait until the upstream holds them all."""
    outcomes: list[object] = []

    def call(number: int) -> None:
        try:
            outcomes.append(proxy.chat(f"question {number}", session_id=f"s{number}"))
        except BaseException as exc:
            outcomes.append(exc)

    fake.hold()
    threads = [threading.Thread(target=call, args=(n,), daemon=True) for n in range(CALLS)]
    for thread in threads:
        thread.start()
    fake.wait_held(CALLS, timeout=30)
    return threads, outcomes


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads), "a call still runs 30 s after its answer"


def settled(proxy: Proxy, fake: FakeOpenAI, steps: int = 200) -> float:
    """Wait (bounded) until the ledger's used reaches what the upstream billed; return used."""
    tick = threading.Event()
    used = 0.0
    for _ in range(steps):
        [usage] = proxy.usage()
        used = usage.used
        if used >= fake.billed_tokens:
            return used
        tick.wait(0.05)
    return used


def answers_again(proxy: Proxy, steps: int = 100) -> int:
    """Wait (bounded) until the ledger's breaker lets calls through; return the steps it took.

    The breaker's background probe closes it as soon as Redis answers a PING (every 0.25 s by
    default), well before its cool-down would end.
    """
    from llmproxy.budget.routed import shared_ledger
    from llmproxy_redis_budget import RedisLedger

    ledger = shared_ledger(proxy.ledger)
    assert isinstance(ledger, RedisLedger)
    tick = threading.Event()
    for step in range(steps):
        if ledger.breaker.state == "closed":
            return step
        tick.wait(0.05)
    raise AssertionError(f"the breaker is still {ledger.breaker.state} after {steps} steps")


def errors(outcomes: list[object]) -> list[str]:
    return [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]


def history_counts(proxy: Proxy, steps: int = 300) -> list[int]:
    """How many times each session's question is stored in history, once each has arrived.

    A history write that missed Redis is journaled and replayed in the background (with a
    growing pause, up to 5 s): wait (bounded) until every session has its question, then
    return the counts (a duplicate shows as a 2).
    """
    tick = threading.Event()
    counts: list[int] = []
    for _ in range(steps):
        counts = [
            sum(1 for r in proxy.history.load(f"s{n}") if r.role == "user") for n in range(CALLS)
        ]
        if all(counts):
            return counts
        tick.wait(0.05)
    return counts


def record(
    fault: str, proxy: Proxy, fake: FakeOpenAI, used: float, lost: list[str], counts: list[int]
) -> None:
    """Record the figures of a Redis outage (see conftest.record_figures)."""
    record_figures(
        fault,
        "redis",
        budget=BUDGET,
        billed=fake.billed_tokens,
        used=used,
        answers_lost=len(lost),
        duplicates=duplicate_requests(fake) + sum(max(0, c - 1) for c in counts),
        notes=f"{CALLS} calls at the upstream; {sum(counts)} of {CALLS} questions in history",
    )


def test_redis_killed_after_the_upstream_answered(
    proxy: Proxy, fake: FakeOpenAI, persistent_redis: RedisServer
) -> None:
    proxy.chat("warm up")  # connections made, scripts loaded
    threads, outcomes = held_calls(proxy, fake)
    persistent_redis.stop(timeout=0.1)  # SIGTERM, then SIGKILL: the data on disk survives
    fake.release()
    join(threads)
    lost = errors(outcomes)
    persistent_redis.restart()  # same port, same directory: the append-only file is loaded
    answers_again(proxy)
    proxy.chat("after")  # Redis is back: a call goes through (and lets a journal replay)
    used = settled(proxy, fake)
    counts = history_counts(proxy)
    record("redis-server killed after the upstream answered", proxy, fake, used, lost, counts)
    assert lost == [], f"{len(lost)} of {CALLS} answers lost although paid: {lost[:2]}"
    assert used == fake.billed_tokens, f"ledger used {used}, upstream billed {fake.billed_tokens}"
    assert counts == [1] * CALLS


def test_redis_frozen_during_the_settle_charges_once(
    proxy: Proxy, fake: FakeOpenAI, persistent_redis: RedisServer
) -> None:
    proxy.chat("warm up")
    threads, outcomes = held_calls(proxy, fake)
    with persistent_redis.frozen():  # SIGSTOP: commands wait in the socket buffers
        fake.release()
        join(threads)
    # SIGCONT: Redis runs what was queued; a replayed settle must not charge again.
    lost = errors(outcomes)
    answers_again(proxy)
    proxy.chat("after")
    used = settled(proxy, fake)
    counts = history_counts(proxy)
    record("redis-server frozen (SIGSTOP) during the settle", proxy, fake, used, lost, counts)
    assert lost == [], f"{len(lost)} of {CALLS} answers lost although paid: {lost[:2]}"
    assert used == fake.billed_tokens, (
        f"ledger used {used}, upstream billed {fake.billed_tokens}: a double charge"
    )
    assert counts == [1] * CALLS


def test_calls_succeed_once_redis_answers_again(
    proxy: Proxy, fake: FakeOpenAI, persistent_redis: RedisServer
) -> None:
    proxy.chat("warm up")
    persistent_redis.stop(timeout=0.1)
    before = len(fake.requests)
    for number in range(CALLS):  # Redis down: these fail (budgets cannot be checked)
        with contextlib.suppress(Exception):
            proxy.chat(f"down {number}")
    sent_down = len(fake.requests) - before
    persistent_redis.restart()
    assert persistent_redis.command("PING") == "PONG"
    # The breaker's probe closes it within a probe interval (0.25 s), long before the 2 s
    # cool-down; before the change calls kept failing "circuit breaker is open" for seconds.
    waited = answers_again(proxy) * 0.05
    answer = proxy.chat("back")
    [usage] = proxy.usage()
    record_figures(
        "calls while redis-server is down, then back",
        "redis",
        budget=BUDGET,
        billed=fake.billed_tokens,
        used=usage.used,
        answers_lost=0 if answer.text else 1,
        duplicates=duplicate_requests(fake),
        notes=f"{CALLS} calls while down, {sent_down} of them sent upstream; the breaker let"
        f" calls through {waited:.2f} s after Redis answered",
    )
    assert waited < 2.0
    assert answer.text
