"""Budget behaviour through the Proxy: waiting, scopes, cost budgets, usage by scope."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from llmproxy import (
    BudgetExceeded,
    CallScope,
    ConfigError,
    CostBudget,
    LLMBudget,
    Proxy,
    RateLimited,
    RequestsPerMinute,
    TokensPerMinute,
)
from llmproxy_testing._http import Reply
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.conftest import chat_requests

MakeProxy = Callable[..., Proxy]


async def test_busy_is_not_spent(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    """Reservations in flight make later calls wait, not fail (LiteLLM's false budget errors)."""
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=120)])
    for _ in range(6):
        upstream.enqueue(Reply(text="ok", delay=0.05))
    # Each call holds its input plus 40 output tokens while in flight; only two fit at once,
    # but each really uses ~12 tokens, so all six fit the budget one after another.
    results = await asyncio.gather(
        *(proxy.achat(f"call {i}", max_output_tokens=40) for i in range(6))
    )
    assert len(results) == 6
    [usage] = proxy.usage()
    assert usage.used == sum(r.usage.total_tokens for r in results) <= 120
    assert usage.reserved == 0


def test_truly_spent_budget_raises_at_once(make_proxy: MakeProxy) -> None:
    proxy = make_proxy({"limit_wait": 5}, budgets=[LLMBudget(max_tokens=20)])
    proxy.chat("one two three four")
    started = time.monotonic()
    with pytest.raises(BudgetExceeded) as info:
        proxy.chat("this needs far more than what is left of twenty tokens")
    assert time.monotonic() - started < 1  # nothing in flight: no waiting
    assert info.value.reserved == 0


def test_wait_is_bounded_by_limit_wait(make_proxy: MakeProxy) -> None:
    proxy = make_proxy({"limit_wait": 0.2}, budgets=[LLMBudget(max_tokens=60)])
    claim = proxy.policies[0].claim(CallScope("openai/gpt-5.4-mini", "openai"))
    assert claim is not None
    held = proxy.ledger.reserve([claim], input_tokens=10, max_output_tokens=48)  # a call in flight
    started = time.monotonic()
    with pytest.raises(BudgetExceeded) as info:
        proxy.chat("hello", max_output_tokens=40)
    assert 0.15 < time.monotonic() - started < 2  # waited for the call in flight, then gave up
    assert info.value.reserved == 58
    proxy.ledger.settle(held, tokens=0, requests=0)
    proxy.chat("hello", max_output_tokens=40)  # released: now it fits


def test_rate_limit_longer_than_limit_wait_raises_at_once(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(
        {"on_limit": "wait", "limit_wait": 0.5}, budgets=[RequestsPerMinute(limit=1)]
    )
    proxy.chat("a")
    started = time.monotonic()
    with pytest.raises(RateLimited) as info:
        proxy.chat("b")
    assert info.value.retry_after > 0.5
    assert time.monotonic() - started < 0.5


def test_on_limit_wait_waits_then_succeeds(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy(
        {"on_limit": "wait", "limit_wait": 5}, budgets=[RequestsPerMinute(limit=2, window=0.3)]
    )
    started = time.monotonic()
    for text in ("a", "b", "c"):
        proxy.chat(text)
    assert time.monotonic() - started >= 0.2  # the third call waited for the window
    assert len(chat_requests(upstream)) == 3


def test_scopes_key_tags_and_combined(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(
        budgets=[
            LLMBudget(max_tokens=15, scope="key", name="per-key"),
            LLMBudget(max_tokens=1000, scope=["user", "tag:team"], name="per-user-team"),
        ]
    )
    proxy.chat("hello", key="k1", user="u", tags={"team": "red"})
    with pytest.raises(BudgetExceeded) as info:
        proxy.chat("hello again with more words", key="k1", user="u", tags={"team": "red"})
    assert info.value.scope == "key:k1"
    proxy.chat("hello", key="k2", user="u", tags={"team": "blue"})
    by_scope = {
        u.claim.scope: u.used for u in proxy.usage(key="k1", user="u", tags={"team": "red"})
    }
    assert by_scope["key:k1"] > 0
    assert by_scope["user:u,tag:team:red"] > 0
    blue = {u.claim.scope: u.used for u in proxy.usage(key="k2", user="u", tags={"team": "blue"})}
    assert blue["user:u,tag:team:blue"] > 0
    assert "user:u,tag:team:red" not in blue


def test_tokens_per_minute(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(budgets=[TokensPerMinute(limit=20)])
    proxy.chat("one two")
    with pytest.raises(BudgetExceeded) as info:
        proxy.chat("a prompt that is clearly longer than what remains of this minute")
    assert info.value.policy == "tpm-20-global"


def test_cost_budget_refuses_unpriced_models_before_upstream(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[CostBudget(max_usd=1.0)])
    with pytest.raises(ConfigError, match="no price") as info:
        proxy.chat("x", model="openai/brand-new-model")
    assert "prices" in str(info.value)
    assert upstream.requests == []


def test_bad_key_and_tags_are_typed_errors(make_proxy: MakeProxy) -> None:
    from llmproxy import InvalidRequest

    proxy = make_proxy()
    with pytest.raises(InvalidRequest) as info:
        proxy.chat("x", key=5)  # type: ignore[arg-type]
    assert info.value.field == "key"
    with pytest.raises(InvalidRequest) as info:
        proxy.chat("x", tags={"team": 1})  # type: ignore[dict-item]
    assert info.value.field == "tags"


async def test_refused_streams_are_reported_to_observers(make_proxy: MakeProxy) -> None:
    from llmproxy import CallEvent

    events: list[CallEvent] = []
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=3)], observers=[events.append])
    with pytest.raises(BudgetExceeded):
        proxy.stream("far too long for three tokens")
    with pytest.raises(BudgetExceeded):
        async for _ in proxy.astream("far too long for three tokens"):
            pass
    assert [(e.outcome, type(e.error).__name__, e.streamed) for e in events] == [
        ("error", "BudgetExceeded", True),
        ("error", "BudgetExceeded", True),
    ]
