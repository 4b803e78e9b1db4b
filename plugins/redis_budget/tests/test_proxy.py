"""The Proxy with a redis:// ledger URL: calls reserve and settle in Redis, sync and async."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmproxy import BudgetExceeded, LLMBudget, Proxy, RequestsPerMinute
from llmproxy.budget.base import Claim
from llmproxy.budget.policy import CallScope
from llmproxy.budget.routed import shared_ledger
from llmproxy_redis_budget import RedisLedger
from llmproxy_testing.fake_openai import FakeOpenAI

KEY = "sk-test-redis-budget-0123456789"


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


def test_proxy_counts_in_redis(upstream: FakeOpenAI, redis_url: str) -> None:
    budget = LLMBudget(max_tokens=40, name="shared")
    rpm = RequestsPerMinute(limit=100, name="shared-rpm")  # named: counted in Redis too
    environ = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.base_url}
    proxy = Proxy(
        {"history_url": "memory://"}, ledger=redis_url, budgets=[budget, rpm], environ=environ
    )
    other = Proxy(
        {"history_url": "memory://"},
        ledger="redis://",
        budgets=[budget, rpm],
        environ={**environ, "LLMPROXY_REDIS_URL": redis_url},
    )
    try:
        assert isinstance(shared_ledger(proxy.ledger), RedisLedger)
        reply = proxy.chat("Hello there", model="openai/gpt-5.4-mini")
        spent = reply.usage.input_tokens + reply.usage.output_tokens
        (state,) = other.ledger.usage(_claims(budget))
        assert (state.used, state.reserved) == (spent, 0)
        calls = 0
        refused = None
        while refused is None and calls < 10:  # the other process shares the budget
            try:
                other.chat("Hello there", model="openai/gpt-5.4-mini")
                calls += 1
            except BudgetExceeded as exc:
                refused = exc
        assert refused is not None and refused.policy == "shared"
        (state,) = proxy.ledger.usage(_claims(budget))
        assert state.used == spent * (calls + 1) <= 40
    finally:
        proxy.close()
        other.close()


async def test_async_proxy_counts_in_redis(upstream: FakeOpenAI, redis_url: str) -> None:
    budget = LLMBudget(max_tokens=1000, name="async-shared")
    environ = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.base_url}
    proxy = Proxy({"history_url": "memory://"}, ledger=redis_url, budgets=[budget], environ=environ)
    try:
        reply = await proxy.achat("Hello there", model="openai/gpt-5.4-mini")
        spent = reply.usage.input_tokens + reply.usage.output_tokens
        (state,) = await proxy.ledger.ausage(_claims(budget))
        assert (state.used, state.reserved) == (spent, 0)
    finally:
        await proxy.aclose()


def _claims(budget: LLMBudget) -> list[Claim]:
    return [budget.claim(CallScope(model="gpt-5.4-mini", provider="openai"))]
