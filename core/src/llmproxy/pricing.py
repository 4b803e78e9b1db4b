"""Prices of models, in USD per million tokens, and the cost of a call's usage.

Provider plugins register default prices through the ``register_prices`` hook (each with the
date the figures were taken from the provider's price page); the configuration's ``prices``
table overrides them. A name ending in ``*`` matches every model that starts with it, so dated
snapshots (``gpt-5.4-mini-2026-03-17``) share their family's price; an exact name wins over a
pattern, and a longer pattern over a shorter one. A price known to change on a date (an
introductory price) carries the next one (``Price(..., until=..., then=...)``), and the table
answers with the one in effect when it is asked, so a long-running process bills a call at the
price of the day it was made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from attrs import field, frozen

from llmproxy.errors import ConfigError
from llmproxy.types import Usage


def _price(_i: object, a: object, v: Any) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
        name = getattr(a, "name", "price")
        raise ConfigError(f"{name} must be a non-negative number of USD per 1M tokens", path=name)


@frozen
class Price:
    """USD per million tokens: input, cached input (default: the input price) and output.

    >>> Price(input=0.25, output=2.0, cached_input=0.025).cost(Usage(1_000_000, 0, 400_000))
    0.16
    """

    input: float = field(validator=_price)
    output: float = field(validator=_price)
    cached_input: float | None = field(default=None, validator=_price)
    as_of: str = ""
    until: float | None = field(default=None, kw_only=True)
    """When (a Unix time) this price gives way to :attr:`then`; None: it does not change."""
    then: Price | None = field(default=None, kw_only=True)
    """The price from :attr:`until` on."""

    def __attrs_post_init__(self) -> None:
        if (self.until is None) != (self.then is None):
            raise ConfigError("a price that changes needs both until (a Unix time) and then")

    def at(self, when: float) -> Price:
        """The price in effect at ``when`` (a Unix time): this one or one it changes to."""
        price = self
        while price.then is not None and price.until is not None and when >= price.until:
            price = price.then
        return price

    def cost(self, usage: Usage) -> float:
        """Return the USD cost of ``usage``; cached input tokens are billed at the cached price."""
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        total = (
            (usage.input_tokens - cached) * self.input
            + cached * cached_price
            + usage.output_tokens * self.output
        )
        return round(total / 1_000_000, 10)


class PriceTable:
    """Prices by ``provider/model`` name or ``provider/prefix*`` pattern."""

    def __init__(
        self,
        prices: Mapping[str, Price] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._exact: dict[str, Price] = {}
        self._patterns: list[tuple[str, Price]] = []
        self._found: dict[str, Price | None] = {}  # lookups so far; every call looks one up
        for name, price in (prices or {}).items():
            self.set(name, price)

    def set(self, name: str, price: Price) -> None:
        """Add or replace the price of a model name or ``prefix*`` pattern."""
        if "/" not in name:
            raise ConfigError(f"price name {name!r} must be provider/model", path=f"prices.{name}")
        self._found.clear()
        if name.endswith("*"):
            prefix = name[:-1]
            self._patterns = [(p, v) for p, v in self._patterns if p != prefix]
            self._patterns.append((prefix, price))
            self._patterns.sort(key=lambda item: -len(item[0]))
        else:
            self._exact[name] = price

    def get(self, provider: str, model: str, *, at: float | None = None) -> Price | None:
        """Return the price of ``provider/model`` in effect now (or at the Unix time ``at``).

        None when the model is not priced.
        """
        name = f"{provider}/{model}"
        try:
            price = self._found[name]
        except KeyError:
            price = self._exact.get(name)
            if price is None:
                price = next((p for prefix, p in self._patterns if name.startswith(prefix)), None)
            if len(self._found) < 4096:  # model names are few; a flood of new ones is not cached
                self._found[name] = price
        if price is not None and price.then is not None:
            return price.at(self._clock() if at is None else at)
        return price

    def merged(self, overrides: Mapping[str, Price]) -> PriceTable:
        """Return a copy of this table with ``overrides`` set on top."""
        table = PriceTable(clock=self._clock)
        table._exact = dict(self._exact)
        table._patterns = list(self._patterns)
        for name, price in overrides.items():
            table.set(name, price)
        return table

    def names(self) -> list[str]:
        """Every priced name and pattern, sorted."""
        return sorted([*self._exact, *(p + "*" for p, _ in self._patterns)])
