"""Finding 2: a call that outlives its reservation lease must keep its hold (no crash needed).

One Proxy, a 60-token budget and a 0.5 s reservation lease. The first call is held at the
upstream until its hold's lease has passed by the ledger's clock; meanwhile other calls run
until the budget refuses one. Then the upstream answers the first call. The promise: the
upstream billed at most 60 tokens (the live call's hold is renewed while it runs; had it
lapsed, it would be charged in full, never dropped).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from llmproxy import BudgetExceeded, Proxy
from llmproxy_testing.fake_openai import FakeOpenAI, Reply
from tests.faults.conftest import (
    duplicate_requests,
    lease_env,
    ledger_url,
    proxy_config,
    proxy_env,
    record_figures,
    size,
)

BUDGET = size("LEASE_BUDGET", 60)
LEASE = 0.5
OUTPUT = 20
#: Calls made while the first one is held: each costs at least OUTPUT, so the last is refused.
OTHER_CALLS = BUDGET // OUTPUT + 1


@pytest.mark.parametrize("kind", ["memory", "sqlite", "sqlite-lease", "redis"])
def test_call_longer_than_its_lease_does_not_overspend(
    kind: str, fake: FakeOpenAI, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    redis = request.getfixturevalue("redis_url") if kind == "redis" else None
    environ = proxy_env(fake, tmp_path / "data", **lease_env(kind, LEASE))
    proxy = Proxy(
        proxy_config(BUDGET, lease=LEASE),
        ledger=ledger_url(kind, tmp_path, redis),
        history="memory://",
        environ=environ,
    )
    fake.reply = lambda body: Reply(text=" ".join(["w"] * OUTPUT))
    outcome: list[BaseException | int] = []

    def first() -> None:
        try:
            outcome.append(proxy.chat("first", max_output_tokens=OUTPUT).usage.total_tokens)
        except BaseException as exc:
            outcome.append(exc)

    fake.hold(lambda r: b"first" in r.body)
    caller = threading.Thread(target=first)
    caller.start()
    others: list[int] = []
    try:
        fake.wait_held(1)
        started = proxy.ledger.now()
        # The first call's hold was taken before `started`: wait until its lease has passed by
        # the ledger's clock (the clock the hold expires by), in bounded steps.
        tick = threading.Event()
        for _ in range(200):
            if proxy.ledger.now() > started + 3 * LEASE:
                break
            tick.wait(LEASE / 10)
        for number in range(OTHER_CALLS):
            try:
                others.append(
                    proxy.chat(f"other {number}", max_output_tokens=OUTPUT).usage.total_tokens
                )
            except BudgetExceeded:
                break
        fake.release()
        caller.join(30)
        [usage] = proxy.usage()
    finally:
        fake.release()
        caller.join(30)
        proxy.close()
    billed = fake.billed_tokens
    record_figures(
        f"a call held past its {LEASE} s lease while others spend",
        kind,
        budget=BUDGET,
        billed=billed,
        used=usage.used,
        answers_lost=sum(1 for o in outcome if isinstance(o, BaseException)),
        duplicates=duplicate_requests(fake),
        notes=f"{len(others)} other calls answered, then refused",
    )
    assert not caller.is_alive()
    assert billed <= BUDGET, (
        f"overspent: the upstream billed {billed} tokens on a budget of {BUDGET} ({kind}:"
        f" the held call {outcome}, {len(others)} others {others})"
    )
