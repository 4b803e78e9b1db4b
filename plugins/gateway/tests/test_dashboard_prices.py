"""The dashboard's price rows: each model called, its rates, origin and date, stale ones flagged."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any, cast

from llmproxy import Proxy
from llmproxy.pricing import Price
from llmproxy_gateway.dashboard import prices


def test_prices_rows_flag_stale_and_unpriced_models() -> None:
    proxy = Proxy({"price_max_age_days": 30}, environ={})
    proxy.prices.set("openai/old", Price(1.0, 2.0, as_of="2026-01-01"))
    proxy.prices.set("openai/fresh", Price(1.0, 2.0, as_of="2026-11-30"))
    gateway = cast(Any, SimpleNamespace(proxy=proxy))
    now = dt.datetime(2026, 12, 2, tzinfo=dt.UTC).timestamp()
    rows = prices(gateway, ["openai/old", "openai/fresh", "openai/nobody-knows", "bare"], now)
    by_model = {row["model"]: row["price"] for row in rows}
    assert by_model["openai/old"]["stale"] is True
    assert by_model["openai/old"]["origin"] == "set in code"
    assert by_model["openai/fresh"]["stale"] is False
    assert by_model["openai/fresh"]["age_days"] == 2
    assert by_model["openai/nobody-knows"] is None and by_model["bare"] is None
    proxy.close()


def test_prices_rows_carry_the_hourly_note_and_the_changes_ahead() -> None:
    proxy = Proxy({"price_max_age_days": 0}, environ={})
    switch = dt.datetime(2026, 12, 31, tzinfo=dt.UTC).timestamp()
    proxy.prices.set("openai/moving", Price(1.0, 2.0, until=switch, then=Price(3.0, 4.0)))
    gateway = cast(Any, SimpleNamespace(proxy=proxy))
    now = dt.datetime(2026, 12, 2, 3, tzinfo=dt.UTC).timestamp()
    rows = prices(gateway, ["openai/moving", "deepseek/deepseek-flash"], now)
    by_model = {row["model"]: row["price"] for row in rows}
    moving = by_model["openai/moving"]
    assert moving["varies"] is False and moving["changes_at"] == switch
    assert [(c["at"], c["input"], c["output"]) for c in moving["changes"]] == [(switch, 3.0, 4.0)]
    hourly = by_model["deepseek/deepseek-flash"]
    assert hourly["varies"] is True and hourly["changes"] == []
    proxy.close()


def test_warm_looks_the_default_models_price_up_before_the_first_call() -> None:
    from llmproxy.pricing import Entry
    from llmproxy_gateway.app import warm

    asked: list[tuple[str, str]] = []

    class Spy:
        def find(self, provider: str, model: str) -> tuple[Entry, str, str] | None:
            asked.append((provider, model))
            return None

    proxy = Proxy({"default_model": "openai/some-model"}, environ={})
    proxy.prices = proxy.prices.merged({}, defaults=Spy())
    warm(proxy)  # no key: the provider is left for the first call, the price is not
    assert asked == [("openai", "some-model")]
    proxy.close()
