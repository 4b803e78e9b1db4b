"""Prices in calls: a variant is never billed at its family's price; tiers bound reservations."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from llmproxy import BudgetExceeded, ConfigError, CostBudget, Proxy
from llmproxy.pricing import Price, Tier
from llmproxy_testing._http import Reply
from llmproxy_testing.fake_openai import FakeOpenAI

MakeProxy = Callable[..., Proxy]


def test_an_unknown_variant_under_a_usd_budget_is_a_config_error(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[CostBudget(max_usd=10.0)])
    with pytest.raises(ConfigError, match=r"'openai/gpt-5\.4-ultra' has no price"):
        proxy.chat("x", model="openai/gpt-5.4-ultra")
    assert upstream.requests == []  # refused before anything was sent


def test_a_variant_with_its_own_price_is_billed_at_it(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[CostBudget(max_usd=10.0)])
    family = proxy.prices.get("openai", "gpt-5.4")
    pro = proxy.prices.get("openai", "gpt-5.4-pro")
    assert family is not None and pro is not None and pro.input > family.input
    upstream.enqueue(Reply(text="ok", usage={"prompt_tokens": 1000, "completion_tokens": 100}))
    r = proxy.chat("x", model="openai/gpt-5.4-pro")
    assert r.usage.cost == pytest.approx((1000 * pro.input + 100 * pro.output) / 1e6)
    (row,) = proxy.usage()
    assert row.used == pytest.approx(r.usage.cost)


def test_a_long_context_tier_bounds_the_reservation_and_prices_the_settle(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    flat = Price(1.0, 1.0)
    tiered = Price(1.0, 1.0, tiers=[Tier(above=5, input=1_000.0, output=1_000.0)])
    prompt = "a prompt that is longer than five tokens, whatever the tokenizer"
    # The flat price's hold fits a budget of a tenth of a cent; the tier's (every input token
    # at 1,000 USD per million, since this input can cross 5 tokens) does not.
    proxy = make_proxy(budgets=[CostBudget(max_usd=0.001)])
    proxy.prices.set("openai/flat", flat)
    proxy.prices.set("openai/tiered", tiered)
    upstream.enqueue(Reply(text="ok", usage={"prompt_tokens": 20, "completion_tokens": 2}))
    r = proxy.chat(prompt, model="openai/flat", max_output_tokens=10)
    assert r.usage.cost == pytest.approx(22 / 1e6)
    with pytest.raises(BudgetExceeded):
        proxy.chat(prompt, model="openai/tiered", max_output_tokens=10)
    # Without the budget, the settled cost is at the tier's rates.
    free = make_proxy()
    free.prices.set("openai/tiered", tiered)
    upstream.enqueue(Reply(text="ok", usage={"prompt_tokens": 20, "completion_tokens": 2}))
    assert free.chat(prompt, model="openai/tiered").usage.cost == pytest.approx(22_000 / 1e6)
