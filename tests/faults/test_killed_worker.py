"""Finding 1: a worker SIGKILLed with calls at the upstream must not make the budget overspend.

Three worker processes share a budget of 3,000 tokens through one ledger (Redis; SQLite with
leasing). The victim has four calls at the upstream, which holds them; the victim is
SIGKILLed, then the upstream answers (and bills) the four calls, as a real one does for a
client that vanished. Two survivors call until they are refused. The promise: the upstream
never billed more than the budget (the dead worker's holds are charged in full when their lease
ends: unknown is spent), and the survivors were not refused while budget was left beyond what
the dead worker held (they wait, ``limit_wait``, past the short lease of the dead holds).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmproxy import Proxy
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.faults.conftest import (
    OUTPUT_WORDS,
    Workers,
    duplicate_requests,
    lease_env,
    ledger_url,
    proxy_config,
    proxy_env,
    record_figures,
    size,
    wait_for_ledger_clock,
)

BUDGET = size("WORKER_BUDGET", 3_000)
LEASE = 2.0  # reservation lease and SQLite budget lease: how long a dead owner's hold blocks
VICTIM_CALLS = size("VICTIM_CALLS", 4)
SURVIVORS = size("SURVIVORS", 2)
#: The most one call holds: its input (our count, under 30 for these prompts) + its output cap.
PER_CALL = 30 + OUTPUT_WORDS
#: Calls a survivor may make: every call costs at least its output, so no survivor can make
#: more than BUDGET / OUTPUT_WORDS calls before a refusal (the loop is bounded, and ends refused).
SURVIVOR_CALLS = BUDGET // OUTPUT_WORDS + 1


@pytest.mark.parametrize("kind", ["redis", "sqlite-lease"])
def test_killed_worker_never_overspends(
    kind: str, fake: FakeOpenAI, workers: Workers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    redis = request.getfixturevalue("redis_url") if kind == "redis" else None
    url = ledger_url(kind, tmp_path, redis)
    environ = proxy_env(fake, tmp_path / "data", **lease_env(kind, LEASE))
    # Survivors wait for held budget up to twice the lease, so the dead holds end meanwhile.
    config = proxy_config(BUDGET, lease=LEASE, limit_wait=4 * LEASE)
    observer = Proxy(
        config,
        ledger=url,
        history="memory://",
        environ={**environ, "LLMPROXY_LEDGER_LEASE": "off"},
    )
    try:
        fake.hold(lambda r: b"victim" in r.body)
        victim = workers.start(
            "victim", environ=environ, config=config, ledger=url, threads=VICTIM_CALLS, calls=1
        )
        fake.wait_held(VICTIM_CALLS, timeout=60)
        [before] = observer.usage()
        dead_holds = before.reserved  # the victim's holds (or its lease) in the shared ledger
        workers.kill(victim)
        killed_at = observer.ledger.now()
        fake.release()  # the upstream answers the dead worker's calls, and bills them
        survivors = [
            workers.start(
                f"survivor{n}",
                environ=environ,
                config=config,
                ledger=url,
                threads=1,
                calls=SURVIVOR_CALLS,
            )
            for n in range(SURVIVORS)
        ]
        for survivor in survivors:
            workers.wait(survivor, timeout=120)
        # The dead worker's holds end one lease after the kill, by the ledger's clock.
        wait_for_ledger_clock(observer.ledger, killed_at + LEASE + 0.5)
        [after] = observer.usage()
    finally:
        observer.close()

    billed = fake.billed_tokens
    answers = sum(len(s.answered) for s in survivors)
    unspent = BUDGET - billed
    record_figures(
        f"worker SIGKILLed with {VICTIM_CALLS} calls at the upstream, {SURVIVORS} survivors",
        kind,
        budget=BUDGET,
        billed=billed,
        used=after.used,
        answers_lost=VICTIM_CALLS - len(victim.answered) + sum(len(s.errors) for s in survivors),
        duplicates=duplicate_requests(fake),
        notes=f"the killed worker's {VICTIM_CALLS} calls died with it; {answers} survivor"
        f" answers; dead holds {dead_holds:g}, {after.reserved:g} still held a lease after the"
        f" kill; {unspent} unspent",
    )
    assert [s.errors for s in survivors] == [[]] * SURVIVORS
    assert all(s.refused for s in survivors), "every survivor ends refused by the budget"
    assert billed <= BUDGET, (
        f"overspent: the upstream billed {billed} tokens on a budget of {BUDGET}"
        f" ({kind}; {VICTIM_CALLS} calls of the killed worker, {answers} of the survivors)"
    )
    assert after.reserved == 0, (
        f"{after.reserved} tokens still held by the dead worker more than a lease ({LEASE} s)"
        f" after the kill: survivors are refused while that budget is unspent ({kind})"
    )
    allowed = dead_holds + SURVIVORS * PER_CALL
    assert unspent <= allowed, (
        f"survivors refused with {unspent} tokens unspent; the dead worker held {dead_holds}"
        f" and each survivor may leave one call's {PER_CALL} ({kind})"
    )
