"""The default price table: the ``genai-prices`` package, read strictly.

``genai-prices`` (by Pydantic) is a maintained table of model prices: dated, with tiers by
context length and cache read and write prices. It is imported the first time a model is not
priced by the configuration or a plugin (not at start-up: see bench/README.md for what the
import costs), and its current snapshot is read then (the bundled data, or newer data when the
application runs genai-prices' own ``UpdatePrices``).

Provider names: llmproxy's ``openai``, ``anthropic`` and ``deepseek`` are genai-prices' ids of
the same name and ``gemini`` is ``google``. Any other provider (an ``openai-compatible`` table)
is known by its ``base_url``, matched against genai-prices' API URL patterns
(``https://api.groq.com/openai/v1`` is ``groq``, an Azure endpoint is ``azure``), or else by a
name equal to a genai-prices id. A configured ``base_url`` that matches a genai-prices provider
wins over the name. A provider that is none of these (a local server) has no default prices.

Matching is strict, as everywhere in llmproxy's prices (see :mod:`llmproxy.pricing`): a model
is priced by a genai-prices entry only when the entry declares that name, by an ``equals``
clause, a ``regex`` clause, or a ``starts_with``/``contains`` clause whose remainder is nothing
but a snapshot date (``-20250514``, ``-2025-05-14``, ``@20250514``, ``-0324``). So
``claude-sonnet-4-6-20260101`` is priced as ``claude-sonnet-4-6``, but an unknown
``claude-sonnet-4-6-fast`` is not priced by the family's rule.

What is converted: input, output (the highest of the output and reasoning rates, as llmproxy
bills reasoning as output), cache read, cache write and tiers by context length. genai-prices'
``cache_write_mtok`` is Anthropic's 5-minute write rate (1.25x input, what the default
``{"type": "ephemeral"}`` breakpoint costs) and ``cache_write_1h_mtok`` its 1-hour rate (2x
input): they become ``Price.cache_write`` and ``Price.cache_write_1h``, and a usage bills the
writes it reports as hour-long (``Usage.cache_write_1h_tokens``) at the second. A price with
only a 1-hour write rate bills every write at it (never less than the bill). Prices by time
of day (DeepSeek's peak hours) and dated prices are applied at the moment of the call;
``llmproxy prices`` lists the dated ones ahead as changes and says when a price varies with
the hour. Other units (per-request fees, audio, images, web searches) are not counted.

The date of a genai-prices price (``as_of``) is the day it took effect where genai-prices
dates it (a ``StartDateConstraint``: Claude Sonnet 4.6's price of 2026-03-13 is dated
2026-03-13), so the stale flag reflects the price's real age; a price genai-prices does not date
(one with no condition, or one by the time of day) is dated by its data: the newest date the
data says its prices were checked on (see :func:`data_date`).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from llmproxy.pricing import Entry, Price, Tier

if TYPE_CHECKING:
    from decimal import Decimal

    from genai_prices import types as gp

#: llmproxy provider names whose genai-prices id differs or that are known without a URL.
PROVIDER_IDS: Mapping[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "deepseek": "deepseek",
    "gemini": "google",
}

logger = logging.getLogger(__name__)

#: The data date of each genai-prices snapshot read so far (by ``id``: snapshots live on).
_DATES: dict[int, str] = {}

#: What a provider's model list keeps of its genai-prices provider's (the Gemini API serves
#: Google's own models; genai-prices' ``google`` has Vertex AI's Claude too).
_LISTED: Mapping[str, tuple[str, ...]] = {"gemini": ("gemini", "gemma", "text-embedding")}

_SNAPSHOT = re.compile(r"(?:[-@](?:\d{8}|\d{4}-\d{2}-\d{2}|\d{4}))?")
_CHECKED = re.compile(
    r"\b(?:checked|verified|released|updated|retrieved|confirmed|as of)\b[^.;()]{0,60}?"
    r"\b(20\d{2})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])\b",
    re.IGNORECASE,
)

_INPUT = ("input_mtok", "input_text_mtok")
_OUTPUT = ("output_mtok", "output_text_mtok", "output_reasoning_mtok", "output_text_reasoning_mtok")
_READ = ("cache_read_mtok", "cache_text_read_mtok")
#: The cache write rates of the default time to live (Anthropic's 5 minutes).
_WRITE = (
    "cache_write_mtok",
    "cache_write_5m_mtok",
    "cache_text_write_mtok",
    "cache_text_write_5m_mtok",
)
#: The 1-hour cache write rates.
_WRITE_1H = ("cache_write_1h_mtok", "cache_text_write_1h_mtok")


def version() -> str:
    """The installed genai-prices version (imports nothing)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("genai-prices")
    except PackageNotFoundError:
        return "not installed"


def _declares(clause: Any, name: str) -> bool:
    """Whether a genai-prices match clause declares ``name`` (see the module's note)."""
    from genai_prices import types as gp

    if isinstance(clause, gp.ClauseEquals):
        return name == clause.equals.lower()
    if isinstance(clause, gp.ClauseRegex):
        return clause.is_match(name)
    if isinstance(clause, gp.ClauseStartsWith | gp.ClauseContains):
        prefix = (
            clause.starts_with if isinstance(clause, gp.ClauseStartsWith) else clause.contains
        ).lower()
        if not name.startswith(prefix):
            return False
        rest = name[len(prefix) :]
        if prefix.endswith(("-", "@")):
            return bool(rest) and _SNAPSHOT.fullmatch(prefix[-1] + rest) is not None
        return _SNAPSHOT.fullmatch(rest) is not None
    if isinstance(clause, gp.ClauseEndsWith):
        return name == clause.ends_with.lower()
    if isinstance(clause, gp.ClauseOr):
        return any(_declares(c, name) for c in clause.or_)
    if isinstance(clause, gp.ClauseAnd):
        return all(_declares(c, name) for c in clause.and_)
    return False


def _rate(value: Any, above: int) -> Decimal | None:
    """One genai-prices price (a Decimal or tiers) for a call whose input exceeds ``above``."""
    from decimal import Decimal

    from genai_prices import types as gp

    if isinstance(value, gp.TieredPrices):
        rate = value.base
        for tier in value.tiers:
            if tier.start <= above:
                rate = tier.price
        return rate
    return value if isinstance(value, Decimal) else None


def _highest(model_price: Any, keys: Iterable[str], above: int) -> float | None:
    rates = [_rate(getattr(model_price, key, None), above) for key in keys]
    present = [r for r in rates if r is not None]
    return float(max(present)) if present else None


def _writes(model_price: Any, above: int) -> tuple[float | None, float | None]:
    """The (cache write, 1-hour cache write) rates; a lone 1-hour rate is both."""
    hour = _highest(model_price, _WRITE_1H, above)
    write = _highest(model_price, _WRITE, above)
    return (hour if write is None else write), hour


def to_price(model_price: Any, as_of: str) -> Price | None:
    """Convert a genai-prices ``ModelPrice`` to a :class:`Price`; None without a token price."""
    from genai_prices import types as gp

    keys = (*_INPUT, *_OUTPUT, *_READ, *_WRITE, *_WRITE_1H)
    starts = sorted(
        {
            tier.start
            for key in keys
            if isinstance(value := getattr(model_price, key, None), gp.TieredPrices)
            for tier in value.tiers
        }
    )
    inp = _highest(model_price, _INPUT, -1)
    if inp is None:
        return None
    tiers = []
    for start in starts:
        tier_input = _highest(model_price, _INPUT, start)
        assert tier_input is not None
        tier_write, tier_hour = _writes(model_price, start)
        tiers.append(
            Tier(
                above=start,
                input=tier_input,
                output=_highest(model_price, _OUTPUT, start) or 0.0,
                cached_input=_highest(model_price, _READ, start),
                cache_write=tier_write,
                cache_write_1h=tier_hour,
            )
        )
    write, hour = _writes(model_price, -1)
    return Price(
        inp,
        _highest(model_price, _OUTPUT, -1) or 0.0,
        _highest(model_price, _READ, -1),
        as_of,
        cache_write=write,
        cache_write_1h=hour,
        tiers=tuple(tiers),
    )


def data_date(providers: Iterable[gp.Provider], *, today: dt.date | None = None) -> str:
    """The newest date the data's notes say prices were checked on, no later than today.

    genai-prices publishes no date for its data; its maintainers' notes do (``Prices checked
    against ... on 2026-11-03``, ``verified on ...``). Dates the data merely names (a price's
    start, an announced change) are not read: they may lie ahead of the data. "" when no note
    has one.
    """
    limit = today or dt.datetime.now(dt.UTC).date()
    newest = dt.date.min
    for provider in providers:
        notes = [provider.price_comments, provider.description]
        notes += [m.price_comments for m in provider.models]
        for note in notes:
            for year, month, day in _CHECKED.findall(note or ""):
                try:
                    seen = dt.date(int(year), int(month), int(day))
                except ValueError:
                    continue
                if newest < seen <= limit:
                    newest = seen
    return newest.isoformat() if newest != dt.date.min else ""


class _Dated:
    """A genai-prices model whose price depends on the date or time of day of the call."""

    def __init__(self, model: gp.ModelInfo, as_of: str) -> None:
        self._model = model
        self._as_of = as_of
        self._converted: dict[int, Price | None] = {}

    def at(self, when: float) -> Price:
        """The price in effect at ``when`` (a Unix time), dated by its start where it has one."""
        model_price = self._model.get_prices(dt.datetime.fromtimestamp(when, dt.UTC))
        key = id(model_price)
        try:
            price = self._converted[key]
        except KeyError:
            price = self._converted[key] = to_price(model_price, self._date_of(model_price))
        if price is None:  # a condition without token prices: billed at the highest one
            return self._highest()
        return price

    @property
    def by_hour(self) -> bool:
        """Whether the price depends on the hour of the call (DeepSeek's off-peak hours)."""
        from genai_prices import types as gp

        assert not isinstance(self._model.prices, gp.ModelPrice)
        return any(isinstance(c.constraint, gp.TimeOfDateConstraint) for c in self._model.prices)

    def changes(self, after: float) -> list[tuple[float, Price]]:
        """genai-prices' dated prices starting after ``after``: (when, price), soonest first.

        A dated price starts at midnight UTC of its date (genai-prices' rule); a date whose
        price is the same as the moment before is no change and left out.
        """
        from genai_prices import types as gp

        assert not isinstance(self._model.prices, gp.ModelPrice)
        days = sorted(
            {
                c.constraint.start_date
                for c in self._model.prices
                if isinstance(c.constraint, gp.StartDateConstraint)
            }
        )
        out: list[tuple[float, Price]] = []
        for day in days:
            start = dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()
            if start <= after:
                continue
            price = self.at(start)
            if price != self.at(start - 1):
                out.append((start, price))
        return out

    def _date_of(self, model_price: Any) -> str:
        """The start date genai-prices gives ``model_price``, else the data's date."""
        from genai_prices import types as gp

        conditionals = self._model.prices
        assert not isinstance(conditionals, gp.ModelPrice)  # a _Dated has conditions
        for conditional in conditionals:
            constraint = conditional.constraint
            if conditional.prices is model_price and isinstance(constraint, gp.StartDateConstraint):
                return constraint.start_date.isoformat()
        return self._as_of

    def _highest(self) -> Price:
        from genai_prices import types as gp

        assert not isinstance(self._model.prices, gp.ModelPrice)
        prices = [to_price(c.prices, self._as_of) for c in self._model.prices]
        known = [p for p in prices if p is not None]
        return max(known, key=lambda p: (p.input, p.output))


class GenaiPrices:
    """Prices from genai-prices, for the llmproxy provider names it can place.

    ``base_urls`` maps a provider name to its configured ``base_url`` (an ``openai-compatible``
    table's), to find which genai-prices provider serves it.
    """

    def __init__(self, base_urls: Mapping[str, str] | None = None) -> None:
        self._base_urls = dict(base_urls or {})
        self._listed: dict[str, list[str]] = {}
        self._loaded: tuple[Any, str, str] | None = None  # snapshot, data date, origin

    @classmethod
    def for_providers(cls, providers: Mapping[str, Mapping[str, Any]]) -> GenaiPrices:
        """The table for a configuration's ``[providers.NAME]`` tables (their ``base_url``)."""
        urls = {
            name: str(table["base_url"])
            for name, table in providers.items()
            if isinstance(table, Mapping) and table.get("base_url")
        }
        return cls(urls)

    def _load(self) -> tuple[Any, str, str]:
        if self._loaded is None:
            try:
                from genai_prices import data_snapshot
            except ImportError as exc:  # a dependency of llmproxy: only a broken install
                logger.warning("genai-prices cannot be imported (%s): no default prices", exc)
                self._loaded = (None, "", "genai-prices not installed")
                return self._loaded
            snapshot = data_snapshot.get_snapshot()
            as_of = _DATES.get(id(snapshot))
            if as_of is None:  # one scan per snapshot, not per Proxy
                as_of = _DATES[id(snapshot)] = data_date(snapshot.providers)
            self._loaded = (snapshot, as_of, f"genai-prices {version()}")
        return self._loaded

    def models(self, provider: str) -> list[str]:
        """The ``provider/model`` names genai-prices prices for an llmproxy provider name.

        Each current model by its own id (its snapshots and aliases are priced too, not listed;
        models genai-prices marks deprecated are left out, and for ``gemini`` the models of
        others that Google's Vertex AI serves).
        """
        listed = self._listed.get(provider)
        if listed is None:
            pid = self.provider_id(provider)  # None as well when genai-prices is missing
            snapshot = self._load()[0]
            infos: list[gp.ModelInfo] = (
                []
                if pid is None
                else next((p.models for p in snapshot.providers if p.id == pid), [])
            )
            listed = self._listed[provider] = [
                f"{provider}/{info.id}"
                for info in infos
                if not info.deprecated
                and info.id.lower().startswith(_LISTED.get(provider, ""))
                and _declares(info.match, info.id.lower())
                and self.find(provider, info.id)
            ]
        return list(listed)

    def describe(self) -> str:
        """Which genai-prices this is and the date of its data (imports it)."""
        _snapshot, as_of, origin = self._load()
        return f"{origin}, data checked {as_of or 'on an unknown date'}"

    def provider_id(self, provider: str) -> str | None:
        """The genai-prices provider id of an llmproxy provider name, or None."""
        snapshot = self._load()[0]
        if snapshot is None:
            return None
        url = self._base_urls.get(provider)
        if url:
            for candidate in snapshot.providers:
                if re.match(candidate.api_pattern, url):
                    return str(candidate.id)
        if provider in PROVIDER_IDS:
            return PROVIDER_IDS[provider]
        if url:
            return None  # a server of its own, whatever its name
        return provider if any(p.id == provider for p in snapshot.providers) else None

    def model(self, provider: str, model: str) -> gp.ModelInfo | None:
        """The genai-prices model that declares ``model`` at ``provider``, or None."""
        snapshot = self._load()[0]
        pid = self.provider_id(provider)
        if pid is None:
            return None
        by_id = {p.id: p for p in snapshot.providers}
        chain = [by_id[pid]] if pid in by_id else []
        if chain:
            chain += [by_id[f] for f in chain[0].fallback_model_providers or () if f in by_id]
        name = model.lower().removeprefix("models/")
        for candidate in chain:
            for info in candidate.models:
                if _declares(info.match, name):
                    return info  # type: ignore[no-any-return]
        return None

    def find(self, provider: str, model: str) -> tuple[Entry, str, str] | None:
        """The price entry of ``provider/model`` with its genai-prices name and origin."""
        info = self.model(provider, model)
        if info is None:
            return None
        from genai_prices import types as gp

        _snapshot, as_of, origin = self._load()
        name = f"{self.provider_id(provider)}/{info.id}"
        if isinstance(info.prices, gp.ModelPrice):
            price = to_price(info.prices, as_of)
            return None if price is None else (price, name, origin)
        if all(to_price(c.prices, as_of) is None for c in info.prices):
            return None
        return _Dated(info, as_of), name, origin
