"""Failures LiteLLM users have reported, each shown not to happen here (through the Proxy).

1. Concurrent requests pass a budget check together and overspend.
2. A leaked reservation blocks a key for good.
3. Streamed or cancelled-stream spend is not counted.
4. Limits silently apply per instance instead of being shared.
5. A "monthly" budget resets every 30 days instead of on the 1st.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from llmproxy import BudgetExceeded, CallScope, LLMBudget, Proxy
from llmproxy.budget.memory import MemoryLedger
from llmproxy.budget.sqlite import SQLiteLedger
from llmproxy_testing._http import Reply
from llmproxy_testing.fake_openai import FakeOpenAI

MakeProxy = Callable[..., Proxy]


async def test_1_concurrent_requests_cannot_pass_the_check_together(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy({"limit_wait": 0}, budgets=[LLMBudget(max_tokens=100)])
    for _ in range(20):
        upstream.enqueue(Reply(text="one two three four five six seven eight", delay=0.02))
    results = await asyncio.gather(
        *(proxy.achat("hi", max_output_tokens=30) for _ in range(20)), return_exceptions=True
    )
    spent = sum(r.usage.total_tokens for r in results if not isinstance(r, BaseException))
    [usage] = proxy.usage()
    assert usage.used == spent <= 100
    assert any(
        isinstance(r, BudgetExceeded) for r in results
    )  # the rest were refused, not let through


def test_2_a_leaked_reservation_is_charged_when_it_expires(make_proxy: MakeProxy) -> None:
    clock = [1_000.0]
    ledger = MemoryLedger(clock=lambda: clock[0])
    proxy = make_proxy(
        {"reservation_lease": 30, "limit_wait": 0},
        ledger=ledger,
        budgets=[LLMBudget(max_tokens=50)],
    )
    claim = proxy.policies[0].claim(CallScope("openai/gpt-5.4-mini", "openai"))
    assert claim is not None
    # Its process died with the call at the upstream, which may have billed all of it.
    leaked = ledger.reserve([claim], input_tokens=10, max_output_tokens=40, lease=30)
    with pytest.raises(BudgetExceeded):
        proxy.chat("hello")
    clock[0] += 31  # the lease ran out: unknown is spent, the hold is charged in full
    [usage] = proxy.usage()
    assert (usage.used, usage.reserved) == (50, 0)
    with pytest.raises(BudgetExceeded):
        proxy.chat("hello")
    # The owner's real usage arrives late (a journal replayed): it replaces the charge, once.
    ledger.settle(leaked, tokens=12)
    ledger.settle(leaked, tokens=12)
    assert proxy.usage()[0].used == 12
    assert proxy.chat("hello").text == "Echo: hello"


def test_3_streamed_and_cancelled_stream_spend_is_counted(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000)])
    full = list(proxy.stream("tell me a story"))
    upstream.enqueue(Reply(text="alpha beta gamma delta epsilon", chunk_delay=0.01))
    with proxy.stream("another") as stream:
        next(stream)  # cancelled after the first chunk
    [usage] = proxy.usage()
    assert usage.reserved == 0
    assert usage.used > full[-1].usage.total_tokens  # type: ignore[union-attr]


def test_4_limits_are_shared_across_instances(
    env: dict[str, str], tmp_path: Path, upstream: FakeOpenAI
) -> None:
    ledger_url = f"sqlite:///{tmp_path}/shared-ledger.db"
    budget = LLMBudget(max_tokens=30, name="team-a")
    first = Proxy(
        {"history_url": "memory://", "ledger_url": ledger_url, "limit_wait": 0},
        environ=env,
        budgets=[budget],
    )
    second = Proxy(
        {"history_url": "memory://", "ledger_url": ledger_url, "limit_wait": 0},
        environ=env,
        budgets=[budget],
    )
    first.chat("one two three")
    assert second.usage()[0].used == first.usage()[0].used > 0
    with pytest.raises(BudgetExceeded) as info:
        second.chat("this is a much longer prompt that the rest of team-a's budget cannot hold")
    assert info.value.policy == "team-a"
    first.close()
    second.close()


def test_5_a_monthly_budget_resets_on_the_first(tmp_path: Path) -> None:
    zone = ZoneInfo("Asia/Ho_Chi_Minh")
    clock = [dt.datetime(2027, 1, 31, 23, 0, tzinfo=zone).timestamp()]
    ledger = SQLiteLedger(tmp_path / "l.db", clock=lambda: clock[0])
    claim = LLMBudget(max_tokens=100, window="month", tz="Asia/Ho_Chi_Minh").claim(
        CallScope("m", "p")
    )
    held = ledger.reserve([claim], input_tokens=60, max_output_tokens=40)
    ledger.settle(held, tokens=100)
    [usage] = ledger.usage([claim])
    assert usage.remaining == 0
    assert usage.resets_at == dt.datetime(2027, 2, 1, tzinfo=zone).timestamp()
    clock[0] = dt.datetime(2027, 2, 1, 0, 1, tzinfo=zone).timestamp()  # two hours later: February
    assert ledger.usage([claim])[0].used == 0
    clock[0] = dt.datetime(2027, 3, 2, 23, 0, tzinfo=zone).timestamp()  # 30 days after Jan 31
    held = ledger.reserve([claim], input_tokens=50, max_output_tokens=50)
    ledger.settle(held, tokens=100)
    clock[0] = dt.datetime(2027, 3, 31, 23, 0, tzinfo=zone).timestamp()  # still March: still spent
    assert ledger.usage([claim])[0].remaining == 0
    ledger.close()
