"""Prices of models, in USD per million tokens, and the cost of a call's usage.

Where a price comes from, highest first:

1. the configuration's ``[prices]`` table (yours: it wins over everything);
2. the provider plugins' ``register_prices`` entries (a plugin knows its provider's models the
   day it is released, before a shared table has them);
3. the ``genai-prices`` package (:mod:`llmproxy.genai_table`), the maintained default table,
   imported the first time a model is not found in 1 or 2.

Names match **exactly** (``openai/gpt-5.4-mini``), or by a pattern the table declares
explicitly: a plugin registers one with ``register(name, price, pattern=True)``, a
configuration key is one when it holds ``*`` or ``{date}``. ``*`` matches any run of characters
and ``{date}`` a snapshot date (``2026-03-17`` or ``20260317``); a pattern must match the
whole name. Nothing is ever priced by a family prefix it merely starts with: ``gpt-5.4-pro`` is
not priced by ``gpt-5.4`` (only by a pattern that says so, such as ``openai/gpt-5.4-*``). An
exact name wins over a pattern, and a pattern with more literal characters over one with
fewer.

A :class:`Price` holds input, output, cache read (``cached_input``) and cache write rates (and
a 1-hour cache write rate, ``cache_write_1h``, for the writes a usage reports as hour-long), tiers
by context length (``tiers``: a call whose input exceeds a tier's ``above`` pays that tier's
rates on all its tokens, as providers bill long prompts) and the date it was read (``as_of``).
A price known to change on a date carries the next one (``Price(..., until=..., then=...)``)
and the table answers with the one in effect when asked, so a long-running process bills a
call at the price of the day it was made. :meth:`Price.bound` is what a budget reserves before
a call (never below what :meth:`Price.cost` settles for any usage within the reserved counts).
:meth:`PriceTable.lookup` also tells the changes ahead (:class:`PriceChange`: a plugin's
``until``/``then`` and genai-prices' dated prices) and whether the price varies with the hour.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from attrs import field, frozen

from llmproxy.errors import ConfigError
from llmproxy.types import Usage

CONFIGURATION = "configuration"
"""The origin of a price set in the configuration's ``[prices]`` table."""

IN_CODE = "set in code"
"""The origin of a price set with :meth:`PriceTable.set` by the application."""

DEFAULT_MAX_AGE_DAYS = 90
"""A price read longer ago than this many days is flagged as stale (``price_max_age_days``)."""


def _price(_i: object, a: object, v: Any) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
        name = getattr(a, "name", "price")
        raise ConfigError(f"{name} must be a non-negative number of USD per 1M tokens", path=name)


def _above(_i: object, _a: object, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(
            f"a tier's above must be a whole number of input tokens (>= 0), got {v!r}",
            path="above",
        )


@frozen
class Tier:
    """Rates for a long context: they apply to every token of a call whose input exceeds ``above``.

    ``cached_input`` and ``cache_write`` default to the tier's ``input`` rate and
    ``cache_write_1h`` to its ``cache_write`` rate, as in :class:`Price`.
    """

    above: int = field(validator=_above)
    input: float = field(validator=_price)
    output: float = field(validator=_price)
    cached_input: float | None = field(default=None, validator=_price)
    cache_write: float | None = field(default=None, validator=_price)
    cache_write_1h: float | None = field(default=None, validator=_price, kw_only=True)


def _tiers(value: Any) -> tuple[Tier, ...]:
    return tuple(sorted(value, key=lambda tier: tier.above)) if value else ()


@frozen
class Price:
    """USD per million tokens: input, output, cache reads and writes, tiers by context length.

    ``cached_input`` (cache reads) and ``cache_write`` default to the input price, and
    ``cache_write_1h`` (writes kept for an hour, :attr:`Usage.cache_write_1h_tokens`) to the
    cache write price. ``as_of`` is the date the figures were read (``YYYY-MM-DD``, or
    ``YYYY-MM``).

    >>> Price(input=0.25, output=2.0, cached_input=0.025).cost(Usage(1_000_000, 0, 400_000))
    0.16
    """

    input: float = field(validator=_price)
    output: float = field(validator=_price)
    cached_input: float | None = field(default=None, validator=_price)
    as_of: str = ""
    cache_write: float | None = field(default=None, validator=_price, kw_only=True)
    """USD per million input tokens written to the provider's prompt cache (Anthropic: for five
    minutes, the default time to live)."""
    cache_write_1h: float | None = field(default=None, validator=_price, kw_only=True)
    """USD per million input tokens written to the prompt cache for an hour (Anthropic's
    ``ttl: "1h"``); None: the cache write rate."""
    tiers: tuple[Tier, ...] = field(default=(), converter=_tiers, kw_only=True)
    """Rates for long contexts, by the input length they start above (ascending)."""
    until: float | None = field(default=None, kw_only=True)
    """When (a Unix time) this price gives way to :attr:`then`; None: it does not change."""
    then: Price | None = field(default=None, kw_only=True)
    """The price from :attr:`until` on."""

    def __attrs_post_init__(self) -> None:
        if (self.until is None) != (self.then is None):
            raise ConfigError("a price that changes needs both until (a Unix time) and then")
        if len({tier.above for tier in self.tiers}) != len(self.tiers):
            raise ConfigError("two tiers of one price start above the same input length")

    def at(self, when: float) -> Price:
        """The price in effect at ``when`` (a Unix time): this one or one it changes to."""
        price = self
        while price.then is not None and price.until is not None and when >= price.until:
            price = price.then
        return price

    def rates(self, input_tokens: int) -> tuple[float, float, float, float]:
        """The (input, output, cache read, cache write) rates for a call with this much input.

        The highest tier whose ``above`` the input exceeds, or the base rates.
        """
        inp, out, read, write, _hour = self.full_rates(input_tokens)
        return inp, out, read, write

    def full_rates(self, input_tokens: int) -> tuple[float, float, float, float, float]:
        """:meth:`rates` and the 1-hour cache write rate, last."""
        inp, out, read, write = self.input, self.output, self.cached_input, self.cache_write
        hour = self.cache_write_1h
        for tier in self.tiers:
            if input_tokens <= tier.above:
                break
            inp, out, read, write = tier.input, tier.output, tier.cached_input, tier.cache_write
            hour = tier.cache_write_1h
        write = inp if write is None else write
        return (inp, out, inp if read is None else read, write, write if hour is None else hour)

    def cache_write_1h_rate(self, input_tokens: int) -> float:
        """The 1-hour cache write rate for a call with this much input (see :meth:`rates`)."""
        return self.full_rates(input_tokens)[4]

    def cost(self, usage: Usage) -> float:
        """Return the USD cost of ``usage`` at the rates of its context length.

        Cached input tokens are billed at the cache read rate, cache writes at the cache write
        rate (those written for an hour at the 1-hour rate), the rest of the input at the input
        rate and all output (reasoning included) at the output rate.
        """
        inp, out, read_rate, write_rate, hour_rate = self.full_rates(usage.input_tokens)
        read = min(usage.cached_input_tokens, usage.input_tokens)
        write = min(usage.cache_write_tokens, usage.input_tokens - read)
        hour = min(usage.cache_write_1h_tokens, write)
        total = (
            (usage.input_tokens - read - write) * inp
            + read * read_rate
            + (write - hour) * write_rate
            + hour * hour_rate
            + usage.output_tokens * out
        )
        return round(total / 1_000_000, 10)

    def bound(self, input_tokens: int) -> tuple[float, float]:
        """USD per million (input, output) tokens that no usage within ``input_tokens`` exceeds.

        What a cost budget reserves before a call: the highest rates of every tier the input
        could reach, with an input token at the most of the input, cache read and cache write
        rates and both cache write rates (a cache write may cost more than plain input).
        """
        candidates = [self.full_rates(0)] + [
            self.full_rates(tier.above + 1) for tier in self.tiers if input_tokens > tier.above
        ]
        return (
            max(max(inp, read, write, hour) for inp, _out, read, write, hour in candidates),
            max(rates[1] for rates in candidates),
        )


def price_date(as_of: str) -> dt.date | None:
    """The date of ``as_of`` (``YYYY-MM-DD``; ``YYYY-MM`` is its month's first day), or None."""
    text = as_of.strip()
    for fmt, size in (("%Y-%m-%d", 10), ("%Y-%m", 7)):
        try:
            return dt.datetime.strptime(text[:size], fmt).date()
        except ValueError:
            continue
    return None


def price_age_days(price: Price, now: float) -> int | None:
    """How many days old ``price`` is at the Unix time ``now``, or None when it has no date."""
    day = price_date(price.as_of)
    if day is None:
        return None
    return (dt.datetime.fromtimestamp(now, dt.UTC).date() - day).days


def is_stale(price: Price, now: float, max_age_days: int) -> bool:
    """Whether ``price`` is older than ``max_age_days`` (or undated); 0 turns the check off."""
    if max_age_days <= 0:
        return False
    age = price_age_days(price, now)
    return age is None or age > max_age_days


@frozen
class PriceChange:
    """A change a price is scheduled for: from ``at`` (a Unix time) on, calls pay ``price``."""

    at: float
    price: Price


@frozen
class Priced:
    """A price the table answers with, and where it came from.

    ``name`` is the entry that matched (an exact name, a declared pattern, or the default
    table's model); ``origin`` is ``configuration``, ``plugin NAME``, ``genai-prices VERSION``
    or ``set in code``.
    """

    price: Price
    name: str
    origin: str
    varies: bool = False
    """The price depends on the hour of the call (the default table's time-of-day prices, such
    as DeepSeek's off-peak hours): ``price`` is the one at the moment asked."""
    changes: tuple[PriceChange, ...] = ()
    """The changes scheduled after the moment asked, soonest first: those a price announces
    (``Price.until``/``then``) and the default table's dated prices."""


class Entry(Protocol):
    """A price that depends on the moment it is asked for (the default table's dated prices).

    An entry may also have ``changes(after) -> list[tuple[float, Price]]`` (its scheduled
    changes after a Unix time, soonest first) and ``by_hour: bool`` (its price depends on the
    hour of the call); :meth:`PriceTable.lookup` reports them.
    """

    def at(self, when: float) -> Price:
        """The price in effect at ``when`` (a Unix time)."""
        ...


class PriceSource(Protocol):
    """A table consulted when no exact name or declared pattern matches (genai-prices)."""

    def find(self, provider: str, model: str) -> tuple[Entry, str, str] | None:
        """Return (the entry, the name it is known by, its origin), or None when unpriced."""
        ...


_DATE = r"(?:\d{4}-\d{2}-\d{2}|\d{8})"


def _compile(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*|\{date\})", pattern)
    regex = "".join(
        ".*" if part == "*" else _DATE if part == "{date}" else re.escape(part) for part in parts
    )
    return re.compile(regex)


def _literal_length(pattern: str) -> int:
    return len(pattern.replace("*", "").replace("{date}", ""))


def is_pattern(name: str) -> bool:
    """Whether a configuration key is a pattern (it holds ``*`` or ``{date}``)."""
    return "*" in name or "{date}" in name


@frozen
class _Pattern:
    name: str
    regex: re.Pattern[str]
    price: Price
    origin: str


_UNSET: Any = object()


def _default_source() -> PriceSource:
    from llmproxy.genai_table import GenaiPrices

    return GenaiPrices()


class PriceTable:
    """Prices by exact ``provider/model`` name or declared pattern, over a default table.

    ``defaults`` is the table asked when nothing here matches: genai-prices (imported on the
    first such lookup) unless given; None for none.
    """

    def __init__(
        self,
        prices: Mapping[str, Price] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        defaults: PriceSource | None = _UNSET,
        origin: str = CONFIGURATION,
    ) -> None:
        self._clock = clock
        self._defaults: PriceSource | None = _default_source() if defaults is _UNSET else defaults
        self._exact: dict[str, tuple[Price, str]] = {}
        self._patterns: list[_Pattern] = []
        # Lookups so far (every call looks one up): the entry, its name and origin, or None.
        self._found: dict[str, tuple[Price | Entry, str, str] | None] = {}
        for name, price in (prices or {}).items():
            self.set(name, price, pattern=is_pattern(name), origin=origin)

    def set(self, name: str, price: Price, *, pattern: bool = False, origin: str = IN_CODE) -> None:
        """Add or replace the price of a model name, or of a pattern declared with ``pattern``.

        ``origin`` says where it came from (``llmproxy prices`` shows it).

        A name holding ``*`` or ``{date}`` that is not declared a pattern is refused: the table
        never guesses that a name stands for a family.
        """
        if "/" not in name:
            raise ConfigError(f"price name {name!r} must be provider/model", path=f"prices.{name}")
        if not pattern and is_pattern(name):
            raise ConfigError(
                f"price name {name!r} holds '*' or '{{date}}' but is not declared a pattern:"
                " register it with pattern=True, or give the exact model names",
                path=f"prices.{name}",
            )
        self._found.clear()
        if pattern:
            self._patterns = [p for p in self._patterns if p.name != name]
            self._patterns.append(_Pattern(name, _compile(name), price, origin))
            self._patterns.sort(key=lambda p: (-_literal_length(p.name), p.name))
        else:
            self._exact[name] = (price, origin)

    def _find(self, provider: str, model: str) -> tuple[Price | Entry, str, str] | None:
        name = f"{provider}/{model}"
        try:
            return self._found[name]
        except KeyError:
            pass
        exact = self._exact.get(name)
        found: tuple[Price | Entry, str, str] | None
        if exact is not None:
            found = (exact[0], name, exact[1])
        else:
            match = next((p for p in self._patterns if p.regex.fullmatch(name)), None)
            if match is not None:
                found = (match.price, match.name, match.origin)
            elif self._defaults is not None:
                found = self._defaults.find(provider, model)
            else:
                found = None
        if len(self._found) < 4096:  # model names are few; a flood of new ones is not cached
            self._found[name] = found
        return found

    def lookup(self, provider: str, model: str, *, at: float | None = None) -> Priced | None:
        """The price of ``provider/model`` in effect now (or at ``at``), with where it came from."""
        found = self._find(provider, model)
        if found is None:
            return None
        entry, name, origin = found
        when = self._clock() if at is None else at
        price = self._resolve(entry, when)
        by_hour = bool(getattr(entry, "by_hour", False))
        return Priced(price, name, origin, by_hour, _changes(entry, price, when))

    def _resolve(self, entry: Price | Entry, at: float | None) -> Price:
        if isinstance(entry, Price) and entry.then is None:
            return entry
        return entry.at(self._clock() if at is None else at)

    def get(self, provider: str, model: str, *, at: float | None = None) -> Price | None:
        """Return the price of ``provider/model`` in effect now (or at the Unix time ``at``).

        None when the model is not priced.
        """
        found = self._find(provider, model)
        if found is None:
            return None
        return self._resolve(found[0], at)

    def merged(
        self,
        overrides: Mapping[str, Price],
        *,
        defaults: PriceSource | None = _UNSET,
        origin: str = CONFIGURATION,
    ) -> PriceTable:
        """Return a copy of this table with ``overrides`` set on top, over ``defaults``.

        Keys of ``overrides`` holding ``*`` or ``{date}`` are patterns; ``defaults`` is this
        table's unless given.
        """
        table = PriceTable(
            clock=self._clock, defaults=self._defaults if defaults is _UNSET else defaults
        )
        table._exact = dict(self._exact)
        table._patterns = list(self._patterns)
        for name, price in overrides.items():
            table.set(name, price, pattern=is_pattern(name), origin=origin)
        return table

    def names(self) -> list[str]:
        """Every name and pattern set here (not the default table's), sorted."""
        return sorted([*self._exact, *(p.name for p in self._patterns)])

    def entries(self, *, at: float | None = None) -> list[Priced]:
        """Every name and pattern set here (not the default table's), sorted, as of ``at``."""
        when = self._clock() if at is None else at
        out: list[Priced] = []
        for name, price, origin in [
            *((name, p, o) for name, (p, o) in self._exact.items()),
            *((p.name, p.price, p.origin) for p in self._patterns),
        ]:
            now = self._resolve(price, when)
            out.append(Priced(now, name, origin, changes=_changes(price, now, when)))
        return sorted(out, key=lambda priced: priced.name)

    def models(self, provider: str) -> list[str]:
        """The ``provider/model`` names priced for ``provider``, patterns left out.

        The exact names set here, then the default table's.
        """
        prefix = f"{provider}/"
        out = [name for name in self._exact if name.startswith(prefix)]
        listing = getattr(self._defaults, "models", None)
        if callable(listing):
            out += [name for name in listing(provider) if name not in self._exact]
        return out

    def origin(self, name: str) -> str | None:
        """Where the entry ``name`` (an exact name or a pattern) set here came from."""
        exact = self._exact.get(name)
        if exact is not None:
            return exact[1]
        return next((p.origin for p in self._patterns if p.name == name), None)

    @property
    def defaults(self) -> PriceSource | None:
        """The default table asked when nothing here matches."""
        return self._defaults


def _changes(entry: Price | Entry, price: Price, when: float) -> tuple[PriceChange, ...]:
    """The changes scheduled after ``when`` of an entry whose price then is ``price``."""
    if isinstance(entry, Price):
        out: list[PriceChange] = []
        while price.until is not None and price.then is not None:
            out.append(PriceChange(price.until, price.then))
            price = price.then
        return tuple(out)
    scheduled = getattr(entry, "changes", None)
    if not callable(scheduled):
        return ()
    return tuple(PriceChange(at, then) for at, then in scheduled(when))


def _rates_json(price: Price, above: int) -> dict[str, float]:
    keys = ("input", "output", "cache_read", "cache_write", "cache_write_1h")
    return dict(zip(keys, price.full_rates(above), strict=True))


_TIER_KEYS = ("above", "input", "output", "cache_read", "cache_write", "cache_write_1h")


def describe(priced: Priced, now: float, max_age_days: int) -> dict[str, Any]:
    """A JSON-ready account of a price: its rates, tiers, origin, date and whether it is stale.

    ``changes`` lists the scheduled changes (``at``, a Unix time, with the rates from then on;
    ``changes_at`` is the first one's time) and ``varies`` says the price depends on the hour.

    What ``llmproxy prices`` prints and the gateway dashboard shows.
    """
    price = priced.price
    inp, out, read, write = price.rates(0)
    return {
        "name": priced.name,
        "origin": priced.origin,
        "as_of": price.as_of,
        "age_days": price_age_days(price, now),
        "stale": is_stale(price, now, max_age_days),
        "input": inp,
        "output": out,
        "cache_read": read,
        "cache_write": write,
        "cache_write_1h": price.cache_write_1h_rate(0),
        "tiers": [
            dict(zip(_TIER_KEYS, values, strict=True))
            for values in ((tier.above, *price.full_rates(tier.above + 1)) for tier in price.tiers)
        ],
        "changes_at": priced.changes[0].at if priced.changes else None,
        "changes": [
            {"at": change.at, "as_of": change.price.as_of, **_rates_json(change.price, 0)}
            for change in priced.changes
        ],
        "varies": priced.varies,
    }
