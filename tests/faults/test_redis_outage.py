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
from tests.faults.conftest import proxy_config, proxy_env

CALLS = 5
BUDGET = 100_000


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


def history_counts(proxy: Proxy) -> list[int]:
    """How many times each session's question is stored in history."""
    return [sum(1 for r in proxy.history.load(f"s{n}") if r.role == "user") for n in range(CALLS)]


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
    assert lost == [], f"{len(lost)} of {CALLS} answers lost although paid: {lost[:2]}"
    answers_again(proxy)
    proxy.chat("after")  # Redis is back: a call goes through (and lets a journal replay)
    used = settled(proxy, fake)
    assert used == fake.billed_tokens, f"ledger used {used}, upstream billed {fake.billed_tokens}"
    assert history_counts(proxy) == [1] * CALLS


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
    assert lost == [], f"{len(lost)} of {CALLS} answers lost although paid: {lost[:2]}"
    answers_again(proxy)
    proxy.chat("after")
    used = settled(proxy, fake)
    assert used == fake.billed_tokens, (
        f"ledger used {used}, upstream billed {fake.billed_tokens}: a double charge"
    )
    assert history_counts(proxy) == [1] * CALLS


def test_calls_succeed_once_redis_answers_again(
    proxy: Proxy, fake: FakeOpenAI, persistent_redis: RedisServer
) -> None:
    proxy.chat("warm up")
    persistent_redis.stop(timeout=0.1)
    for number in range(CALLS):  # Redis down: these fail (budgets cannot be checked)
        with contextlib.suppress(Exception):
            proxy.chat(f"down {number}")
    persistent_redis.restart()
    assert persistent_redis.command("PING") == "PONG"
    # The breaker's probe closes it within a probe interval (0.25 s), long before the 2 s
    # cool-down; before the change calls kept failing "circuit breaker is open" for seconds.
    assert answers_again(proxy) * 0.05 < 2.0
    answer = proxy.chat("back")
    assert answer.text
