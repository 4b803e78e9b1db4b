"""Anthropic's usage, mapped onto the core's: cache reads and cache writes apart."""

from __future__ import annotations

from types import SimpleNamespace

from llmproxy.pricing import Price
from llmproxy.types import Usage
from llmproxy_anthropic.provider import usage_of


def test_cache_writes_are_reported_as_cache_writes_and_billed_at_their_rate() -> None:
    raw = SimpleNamespace(
        input_tokens=10,
        output_tokens=5,
        cache_read_input_tokens=100,
        cache_creation_input_tokens=40,
        output_tokens_details=None,
    )
    usage = usage_of(raw)
    assert usage == Usage(150, 5, 100, 0, cache_write_tokens=40)
    assert (usage + usage).cache_write_tokens == 80
    price = Price(3.0, 15.0, 0.3, cache_write=3.75, cache_write_1h=6.0)
    assert price.cost(usage) == round((10 * 3.0 + 100 * 0.3 + 40 * 3.75 + 5 * 15.0) / 1e6, 10)


def test_hour_long_writes_are_reported_apart_and_billed_at_the_hour_rate() -> None:
    raw = SimpleNamespace(
        input_tokens=10,
        output_tokens=5,
        cache_read_input_tokens=0,
        cache_creation_input_tokens=40,
        cache_creation=SimpleNamespace(ephemeral_5m_input_tokens=30, ephemeral_1h_input_tokens=10),
        output_tokens_details=None,
    )
    usage = usage_of(raw)
    assert usage == Usage(50, 5, 0, 0, cache_write_tokens=40, cache_write_1h_tokens=10)
    assert (usage + usage).cache_write_1h_tokens == 20
    price = Price(3.0, 15.0, 0.3, cache_write=3.75, cache_write_1h=6.0)
    assert price.cost(usage) == round((10 * 3.0 + 30 * 3.75 + 10 * 6.0 + 5 * 15.0) / 1e6, 10)
