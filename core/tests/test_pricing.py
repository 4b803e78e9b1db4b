"""Prices: exact names and declared patterns, genai-prices as the default, tiers, cache rates."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmproxy import ConfigError, Proxy
from llmproxy.config import load_config
from llmproxy.errors import PluginError
from llmproxy.genai_table import GenaiPrices, data_date
from llmproxy.price_report import report
from llmproxy.pricing import (
    Price,
    PriceChange,
    PriceTable,
    Tier,
    describe,
    is_stale,
    price_age_days,
    price_date,
)
from llmproxy.registry import Registry
from llmproxy.types import Usage

FAMILY = Price(2.5, 15.0, 0.25, "2026-11-01")
PRO = Price(30.0, 180.0, None, "2026-11-01")


def table(prices: dict[str, Price]) -> PriceTable:
    return PriceTable(prices, defaults=None)


# --------------------------------------------------------------------------- matching


def test_an_undeclared_variant_is_not_priced_by_its_family() -> None:
    t = table({"openai/gpt-5.4": FAMILY})
    assert t.get("openai", "gpt-5.4") == FAMILY
    assert t.get("openai", "gpt-5.4-pro") is None
    assert t.get("openai", "gpt-5.4-2026-03-05") is None
    assert t.get("openai", "gpt-5.4x") is None


def test_a_declared_date_pattern_prices_snapshots_only() -> None:
    t = table({"openai/gpt-5.4": FAMILY})
    t.set("openai/gpt-5.4-{date}", FAMILY, pattern=True)
    assert t.get("openai", "gpt-5.4-2026-03-05") == FAMILY
    assert t.get("openai", "gpt-5.4-20260305") == FAMILY
    assert t.get("openai", "gpt-5.4-pro") is None
    assert t.get("openai", "gpt-5.4-pro-2026-03-05") is None
    assert t.get("openai", "gpt-5.4-2026-03") is None


def test_a_declared_star_pattern_means_what_it_says_and_an_exact_name_wins() -> None:
    t = table({"openai/gpt-5.4-*": FAMILY})  # a configuration key with * is a pattern
    assert t.get("openai", "gpt-5.4-pro") == FAMILY
    assert t.get("openai", "gpt-5.4") is None  # the pattern needs the "-"
    t.set("openai/gpt-5.4-pro", PRO)
    assert t.get("openai", "gpt-5.4-pro") == PRO
    assert t.get("openai", "gpt-5.4-pro-2026-03-05") == FAMILY
    # More literal characters win over fewer, whatever the order they were set in.
    t.set("openai/gpt-5.4-pro-*", PRO, pattern=True)
    assert t.get("openai", "gpt-5.4-pro-2026-03-05") == PRO
    assert t.names() == ["openai/gpt-5.4-*", "openai/gpt-5.4-pro", "openai/gpt-5.4-pro-*"]


def test_a_star_must_be_declared_a_pattern() -> None:
    t = table({})
    with pytest.raises(ConfigError, match="not declared a pattern"):
        t.set("openai/gpt-5.4*", FAMILY)
    with pytest.raises(ConfigError, match="provider/model"):
        t.set("gpt-5.4", FAMILY)
    registry = Registry()
    register = registry.price_register("someplugin")
    with pytest.raises(PluginError, match=r"someplugin.*pattern=True"):
        register("openai/gpt-5.4*", FAMILY)
    register("openai/gpt-5.4-{date}", FAMILY, pattern=True)
    found = registry.prices.lookup("openai", "gpt-5.4-2026-03-05")
    assert found is not None
    assert (found.name, found.origin) == ("openai/gpt-5.4-{date}", "plugin someplugin")


def test_configuration_wins_over_plugins_which_win_over_genai_prices() -> None:
    registry = Registry()
    registry.price_register("p")("openai/gpt-5.4-mini", Price(1.0, 2.0, as_of="2026-01-01"))
    base = registry.prices
    plugin = base.lookup("openai", "gpt-5.4-mini")
    assert plugin is not None and plugin.origin == "plugin p" and plugin.price.input == 1.0
    merged = base.merged({"openai/gpt-5.4-mini": Price(3.0, 4.0)})
    mine = merged.lookup("openai", "gpt-5.4-mini")
    assert mine is not None and mine.origin == "configuration" and mine.price.input == 3.0
    nano = merged.lookup("openai", "gpt-5.4-nano")
    assert nano is not None and nano.origin.startswith("genai-prices ")
    assert merged.merged({}, defaults=None).get("openai", "gpt-5.4-nano") is None


# --------------------------------------------------------------------------- genai-prices


def test_genai_prices_names_and_snapshots() -> None:
    g = GenaiPrices()
    pro = g.find("openai", "gpt-5.4-pro")
    family = g.find("openai", "gpt-5.4")
    assert pro is not None and family is not None
    assert pro[1] == "openai/gpt-5.4-pro"
    assert pro[0].at(0).input > family[0].at(0).input  # never billed at the family's rate
    assert g.find("openai", "gpt-5.4-ultra") is None
    # A starts_with rule counts for a dated snapshot, not for a variant.
    snapshot = g.find("anthropic", "claude-sonnet-4-6-20260101")
    assert snapshot is not None and snapshot[1] == "anthropic/claude-sonnet-4-6"
    assert g.find("anthropic", "claude-sonnet-4-6-fast") is None
    # Names are matched case-insensitively, as genai-prices does.
    assert g.find("openai", "GPT-5.4-PRO") is not None


def test_provider_names_map_onto_genai_prices_ids() -> None:
    g = GenaiPrices(
        {
            "groq": "https://api.groq.com/openai/v1",
            "fast": "https://api.groq.com/openai/v1",
            "local": "http://127.0.0.1:11434/v1",
            "openai": "https://example.openai.azure.com/openai/v1",
        }
    )
    assert g.provider_id("gemini") == "google"
    assert g.provider_id("deepseek") == "deepseek"
    assert g.provider_id("anthropic") == "anthropic"
    assert g.provider_id("fast") == "groq"  # known by its URL, whatever its name
    assert g.provider_id("groq") == "groq"
    assert g.provider_id("local") is None  # a server of its own has no default prices
    assert g.provider_id("openai") == "azure"  # a URL that matches wins over the name
    assert GenaiPrices().provider_id("openai") == "openai"
    assert GenaiPrices().provider_id("mistral") == "mistral"  # a plugin named as genai-prices
    assert GenaiPrices().provider_id("my-llm") is None
    assert g.find("local", "llama-3.3-70b") is None
    # The configuration's provider tables feed the URLs.
    config = load_config(
        {
            "providers": {
                "fast": {
                    "kind": "openai-compatible",
                    "base_url": "https://api.groq.com/openai/v1",
                }
            }
        }
    )
    assert GenaiPrices.for_providers(config.providers).provider_id("fast") == "groq"


def test_genai_prices_tiers_cache_writes_and_dates() -> None:
    g = GenaiPrices()
    found = g.find("anthropic", "claude-sonnet-4-5")
    assert found is not None
    price = found[0].at(0)
    # genai-prices' cache_write_mtok is Anthropic's 5-minute rate, 1.25x input; the 1-hour
    # rate (2x) is kept apart, for the writes a usage reports as hour-long.
    assert price.cache_write == 1.25 * price.input
    assert price.cache_write_1h == 2 * price.input
    assert price.tiers[0].cache_write == 1.25 * price.tiers[0].input
    assert price.tiers[0].cache_write_1h == 2 * price.tiers[0].input
    assert price.cached_input is not None and price.cached_input < price.input
    assert price.tiers and price.tiers[0].above == 200_000
    assert price.tiers[0].input > price.input
    assert price_date(price.as_of) is not None
    # DeepSeek's peak hours are billed at the peak rate, the rest at the off-peak one.
    day = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
    flash = g.find("deepseek", "deepseek-flash")
    assert flash is not None
    varying = PriceTable({}, defaults=GenaiPrices()).lookup("deepseek", "deepseek-flash")
    assert varying is not None and varying.varies
    fixed = PriceTable({}, defaults=GenaiPrices()).lookup("openai", "gpt-5.4")
    assert fixed is not None and not fixed.varies
    peak = flash[0].at((day + dt.timedelta(hours=2)).timestamp())
    off_peak = flash[0].at((day + dt.timedelta(hours=12)).timestamp())
    assert peak.input == 2 * off_peak.input


def test_a_genai_price_is_dated_by_its_start_date_where_it_has_one() -> None:
    # genai-prices dates Claude Sonnet 4.6's current price from 2026-03-13 (a
    # StartDateConstraint); before that it had long-context tiers and no start date.
    now = dt.datetime(2026, 12, 2, tzinfo=dt.UTC).timestamp()
    earlier = dt.datetime(2026, 1, 10, tzinfo=dt.UTC).timestamp()
    table = PriceTable({}, defaults=GenaiPrices())
    current = table.lookup("anthropic", "claude-sonnet-4-6", at=now)
    assert current is not None and current.price.as_of == "2026-03-13"
    assert not current.price.tiers
    assert describe(current, now, 90)["age_days"] == 264
    assert describe(current, now, 90)["stale"] is True  # its real age, not the data's
    before = table.lookup("anthropic", "claude-sonnet-4-6", at=earlier)
    from genai_prices import data_snapshot

    data = data_date(data_snapshot.get_snapshot().providers)
    assert before is not None and before.price.tiers and before.price.as_of == data
    # An undated price (no condition) keeps the data's date.
    plain = table.lookup("anthropic", "claude-haiku-4-5", at=now)
    assert plain is not None and plain.price.as_of == data


def test_the_data_date_is_a_checked_date_never_in_the_future() -> None:
    from genai_prices import data_snapshot

    providers = data_snapshot.get_snapshot().providers
    date = data_date(providers)
    assert date and dt.date.fromisoformat(date) <= dt.datetime.now(dt.UTC).date()
    early = data_date(providers, today=dt.date(2026, 10, 1))
    assert early and early <= "2026-10-01" and early <= date


# --------------------------------------------------------------------------- cost and bound


def test_cost_of_cache_reads_writes_and_tiers() -> None:
    price = Price(
        3.0,
        15.0,
        0.3,
        cache_write=6.0,
        tiers=[Tier(above=200_000, input=6.0, output=22.5, cached_input=0.6)],
    )
    usage = Usage(1_000, 100, cached_input_tokens=200, cache_write_tokens=300)
    assert price.cost(usage) == pytest.approx((500 * 3 + 200 * 0.3 + 300 * 6 + 100 * 15) / 1e6)
    long = Usage(300_000, 100, cached_input_tokens=100_000, cache_write_tokens=0)
    # Above 200k tokens every token pays the tier's rates (its cache write defaults to input).
    assert price.cost(long) == pytest.approx((200_000 * 6 + 100_000 * 0.6 + 100 * 22.5) / 1e6)
    assert price.rates(300_000) == (6.0, 22.5, 0.6, 6.0)
    assert price.bound(1_000) == (6.0, 15.0)  # the cache write rate is the dearest input
    assert price.bound(300_000) == (6.0, 22.5)
    # Writes kept for an hour pay the 1-hour rate (which defaults to the cache write rate).
    anthropic = Price(3.0, 15.0, 0.3, cache_write=3.75, cache_write_1h=6.0)
    mixed = Usage(1_000, 100, 200, cache_write_tokens=300, cache_write_1h_tokens=100)
    assert anthropic.cost(mixed) == pytest.approx(
        (500 * 3 + 200 * 0.3 + 200 * 3.75 + 100 * 6.0 + 100 * 15) / 1e6
    )
    assert price.cost(mixed) == pytest.approx((500 * 3 + 200 * 0.3 + 300 * 6 + 100 * 15) / 1e6)
    assert anthropic.bound(1_000) == (6.0, 15.0)  # the 1-hour rate is the dearest input
    with pytest.raises(ConfigError, match="same input length"):
        Price(1.0, 1.0, tiers=[Tier(10, 1.0, 1.0), Tier(10, 2.0, 2.0)])
    with pytest.raises(ConfigError, match="whole number"):
        Tier(-1, 1.0, 1.0)


@st.composite
def prices(draw: st.DrawFn) -> Price:
    rate = st.floats(0, 100, allow_nan=False)
    optional = st.none() | rate
    aboves = draw(st.lists(st.integers(0, 2_000_000), max_size=3, unique=True))
    tiers = [
        Tier(
            a, draw(rate), draw(rate), draw(optional), draw(optional), cache_write_1h=draw(optional)
        )
        for a in aboves
    ]
    return Price(
        draw(rate),
        draw(rate),
        draw(optional),
        cache_write=draw(optional),
        cache_write_1h=draw(optional),
        tiers=tiers,
    )


@st.composite
def reserved_and_used(draw: st.DrawFn) -> tuple[int, int, Usage]:
    reserved_input = draw(st.integers(0, 3_000_000))
    cap = draw(st.integers(0, 200_000))
    used_input = draw(st.integers(0, reserved_input))
    read = draw(st.integers(0, used_input))
    write = draw(st.integers(0, used_input - read))
    hour = draw(st.integers(0, write))
    output = draw(st.integers(0, cap))
    reasoning = draw(st.integers(0, output))
    usage = Usage(
        used_input, output, read, reasoning, cache_write_tokens=write, cache_write_1h_tokens=hour
    )
    return reserved_input, cap, usage


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prices(), reserved_and_used())
def test_the_reserve_bound_covers_any_usage_within_it(
    price: Price, counts: tuple[int, int, Usage]
) -> None:
    reserved_input, cap, usage = counts
    input_rate, output_rate = price.bound(reserved_input)
    held = (reserved_input * input_rate + cap * output_rate) / 1_000_000
    assert price.cost(usage) <= held + 1e-9


def _genai_prices() -> list[Price]:
    g = GenaiPrices()
    names = [
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-opus-4-6"),
        ("gemini", "gemini-3.1-pro-preview"),
        ("openai", "gpt-5.4-pro"),
        ("openai", "gpt-5.5"),
        ("deepseek", "deepseek-v4-pro"),
    ]
    out = []
    for provider, model in names:
        found = g.find(provider, model)
        assert found is not None, (provider, model)
        out.append(found[0].at(0))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_genai_prices()), reserved_and_used())
def test_the_reserve_bound_covers_genai_prices_too(
    price: Price, counts: tuple[int, int, Usage]
) -> None:
    reserved_input, cap, usage = counts
    input_rate, output_rate = price.bound(reserved_input)
    assert price.cost(usage) <= (reserved_input * input_rate + cap * output_rate) / 1e6 + 1e-9


# --------------------------------------------------------------------------- configuration


def test_the_configuration_takes_cache_writes_tiers_and_patterns() -> None:
    proxy = Proxy(
        {
            "prices": {
                "openai/mine": {
                    "input": 1.0,
                    "output": 2.0,
                    "cache_write": 1.25,
                    "tiers": [{"above": 100_000, "input": 2.0, "output": 4.0}],
                },
                "openai/mine-{date}": {"input": 1.0, "output": 2.0},
            },
            "price_max_age_days": 30,
        },
        environ={},
    )
    price = proxy.prices.get("openai", "mine")
    assert price is not None
    assert price.cache_write == 1.25 and price.tiers == (Tier(100_000, 2.0, 4.0),)
    assert proxy.prices.get("openai", "mine-2026-01-01") == Price(1.0, 2.0)
    assert proxy.prices.get("openai", "mine-pro") is None
    assert proxy.config.price_max_age_days == 30
    assert load_config(environ={"LLMPROXY_PRICE_MAX_AGE_DAYS": "7"}).price_max_age_days == 7
    with pytest.raises(ConfigError, match="LLMPROXY_PRICE_MAX_AGE_DAYS"):
        load_config(environ={"LLMPROXY_PRICE_MAX_AGE_DAYS": "soon"})
    with pytest.raises(ConfigError, match="price_max_age_days"):
        load_config({"price_max_age_days": -1})


# --------------------------------------------------------------------------- dates and report


def test_price_dates_ages_and_staleness() -> None:
    now = dt.datetime(2026, 12, 2, tzinfo=dt.UTC).timestamp()
    assert price_date("2026-06") == dt.date(2026, 6, 1)
    assert price_date("2026-11-03") == dt.date(2026, 11, 3)
    assert price_date("") is None and price_date("June") is None
    assert price_age_days(Price(1, 1, as_of="2026-11-02"), now) == 30
    assert not is_stale(Price(1, 1, as_of="2026-11-02"), now, 30)
    assert is_stale(Price(1, 1, as_of="2026-11-01"), now, 30)
    assert is_stale(Price(1, 1), now, 30)  # undated: nobody knows how old it is
    assert not is_stale(Price(1, 1, as_of="2020-01-01"), now, 0)  # 0: the check is off


def test_report_shows_rates_tiers_origin_date_and_the_stale_flag() -> None:
    now = dt.datetime(2026, 12, 2, tzinfo=dt.UTC).timestamp()
    registry = Registry()
    registry.price_register("acme")(
        "acme/old",
        Price(1.0, 2.0, 0.1, "2026-01-15", tiers=[Tier(128_000, 2.0, 4.0)]),
    )
    t = registry.prices.merged({"acme/new": Price(1.0, 2.0, as_of="2026-11-30")}, defaults=None)
    args = {"default_model": "acme/new", "aliases": {"cheap": "acme/new"}, "max_age_days": 90}
    out = io.StringIO()
    assert report(t, out, model="acme/old", now=now, **args) == 0  # type: ignore[arg-type]
    text = out.getvalue()
    assert "input $1, output $2, cache read $0.1, cache write $1 per 1M tokens" in text
    assert "above 128,000 input tokens: input $2, output $4" in text
    assert "from    plugin acme" in text
    assert "as of   2026-01-15, 321 days ago  STALE: older than 90 days" in text
    out = io.StringIO()
    assert report(t, out, model="cheap", now=now, **args) == 0  # type: ignore[arg-type]
    assert "acme/new" in out.getvalue() and "STALE" not in out.getvalue()
    out = io.StringIO()
    assert report(t, out, model="acme/old-pro", now=now, **args) == 1  # type: ignore[arg-type]
    assert "no price" in out.getvalue() and 'prices."acme/old-pro"' in out.getvalue()
    out = io.StringIO()
    report(t, out, model=None, as_json=True, now=now, **args)  # type: ignore[arg-type]
    listed = json.loads(out.getvalue())
    assert set(listed["prices"]) == {"acme/old", "acme/new"}
    assert listed["prices"]["acme/old"]["stale"] is True
    assert listed["prices"]["acme/new"]["origin"] == "configuration"


def test_genai_prices_dated_prices_are_listed_as_changes_ahead() -> None:
    """genai-prices' own dated prices are changes, like a plugin's until/then; not 'varies'."""
    t = PriceTable({}, defaults=GenaiPrices())
    now = dt.datetime(2026, 12, 2, tzinfo=dt.UTC).timestamp()
    new_year = dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()
    priced = t.lookup("gemini", "gemini-3.6-flash", at=now)
    assert priced is not None and priced.origin.startswith("genai-prices ")
    assert not priced.varies  # only the date changes it, and that is listed
    [change] = priced.changes
    assert change.at == new_year
    assert change.price == t.get("gemini", "gemini-3.6-flash", at=new_year)
    assert change.price.input == 2 * priced.price.input
    later = t.lookup("gemini", "gemini-3.6-flash", at=new_year + 1)
    assert later is not None and later.changes == () and later.price == change.price
    # DeepSeek's off-peak hours are no scheduled change: the price varies by the hour.
    hourly = t.lookup("deepseek", "deepseek-flash", at=now)
    assert hourly is not None and hourly.varies and hourly.changes == ()
    # The report lists both under the same headings as a plugin's.
    args = {"default_model": "openai/gpt-5.4", "aliases": {}, "max_age_days": 0}
    out = io.StringIO()
    report(t, out, model="gemini/gemini-3.6-flash", now=now, **args)  # type: ignore[arg-type]
    text = out.getvalue()
    assert "  changes 2027-01-01 00:00 UTC: input $1.5, output $7.5," in text
    assert "varies" not in text
    out = io.StringIO()
    report(t, out, model="deepseek/deepseek-flash", now=now, **args)  # type: ignore[arg-type]
    assert "  varies  by the hour of the call" in out.getvalue()
    assert "changes" not in out.getvalue()
    out = io.StringIO()
    report(t, out, model="gemini/gemini-3.6-flash", now=now, as_json=True, **args)  # type: ignore[arg-type]
    row = json.loads(out.getvalue())["price"]
    assert row["changes_at"] == new_year
    assert row["changes"] == [
        {"at": new_year, "as_of": change.price.as_of, "input": 1.5, "output": 7.5,
         "cache_read": 0.15, "cache_write": 1.5, "cache_write_1h": 1.5}
    ]  # fmt: skip


def test_a_plugins_announced_changes_are_all_listed() -> None:
    last = Price(3.0, 6.0, as_of="2026-12")
    middle = Price(2.0, 4.0, until=2_000.0, then=last)
    registry = Registry()
    registry.price_register("acme")("acme/m", Price(1.0, 2.0, until=1_000.0, then=middle))
    t = registry.prices.merged({}, defaults=None)
    priced = t.lookup("acme", "m", at=10.0)
    assert priced is not None and not priced.varies
    assert priced.changes == (PriceChange(1_000.0, middle), PriceChange(2_000.0, last))
    after_first = t.lookup("acme", "m", at=1_500.0)
    assert after_first is not None and after_first.changes == (PriceChange(2_000.0, last),)
    [entry] = t.entries(at=10.0)
    assert entry.changes == priced.changes
    out = io.StringIO()
    args = {"default_model": "acme/m", "aliases": {}, "max_age_days": 0}
    report(t, out, model=None, now=10.0, **args)  # type: ignore[arg-type]
    text = out.getvalue()
    assert "  changes 1970-01-01 00:16 UTC: input $2, output $4," in text
    assert "  changes 1970-01-01 00:33 UTC: input $3, output $6," in text


def test_the_prices_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmproxy.cli import main

    monkeypatch.setenv("LLMPROXY_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LLMPROXY_CONFIG", raising=False)
    monkeypatch.setenv("LLMPROXY_PRICE_MAX_AGE_DAYS", "0")

    assert main(["prices", "openai/gpt-5.4-pro", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["price"]
    assert row["origin"].startswith("genai-prices ") and row["tiers"]
    assert main(["prices", "openai/gpt-5.4-ultra"]) == 1
    assert "no price" in capsys.readouterr().out


def test_the_prices_command_shows_every_deployment_of_a_routed_alias(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmproxy.cli import main

    config = tmp_path / "llmproxy.toml"
    config.write_text(
        'default_model = "openai/gpt-5.4"\n'
        "[aliases]\n"
        'clever = "smart"\n'
        "[models.smart]\n"
        'deployments = [{ model = "openai/gpt-5.4", weight = 3 },'
        ' { model = "anthropic/claude-sonnet-4-6" }]\n'
        "[models.odd]\n"
        'deployments = ["openai/gpt-5.4", "openai/gpt-5.4-ultra"]\n'
    )
    monkeypatch.setenv("LLMPROXY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LLMPROXY_CONFIG", str(config))
    monkeypatch.setenv("LLMPROXY_PRICE_MAX_AGE_DAYS", "0")

    assert main(["prices", "smart"]) == 0
    text = capsys.readouterr().out
    assert "no price" not in text and "refused" not in text
    assert "smart: routed over 2 deployments" in text
    assert "openai/gpt-5.4\n  price   input $2.5" in text
    assert "anthropic/claude-sonnet-4-6\n  price   input $3, output $15" in text
    assert main(["prices", "clever", "--json"]) == 0  # an alias of the routed alias
    shown = json.loads(capsys.readouterr().out)
    assert shown["model"] == "smart"
    assert shown["deployments"]["anthropic/claude-sonnet-4-6"]["cache_write"] == 3.75
    # A deployment with no price is named, and the command says so by its status.
    assert main(["prices", "odd"]) == 1
    text = capsys.readouterr().out
    assert "openai/gpt-5.4-ultra\n  no price" in text and "openai/gpt-5.4\n  price" in text
    # The listing names the routed aliases and prices their deployments.
    assert main(["prices", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["routes"]["smart"] == ["openai/gpt-5.4", "anthropic/claude-sonnet-4-6"]
    assert listed["prices"]["anthropic/claude-sonnet-4-6"]["input"] == 3.0
    assert listed["prices"]["openai/gpt-5.4-ultra"] is None
    assert "openai/smart" not in listed["prices"]
    assert main(["prices"]) == 0
    assert "smart\n  routed  over openai/gpt-5.4, anthropic/claude-sonnet-4-6" in (
        capsys.readouterr().out
    )


def test_models_lists_exact_names_and_genai_prices_current_models() -> None:
    registry = Registry()
    registry.price_register("p")("gemini/my-tuned", Price(1.0, 1.0))
    registry.price_register("p")("gemini/my-tuned-{date}", Price(1.0, 1.0), pattern=True)
    listed = registry.prices.models("gemini")
    assert listed[0] == "gemini/my-tuned"
    assert "gemini/my-tuned-{date}" not in listed
    assert "gemini/gemini-3.1-pro-preview" in listed
    assert not [name for name in listed if "claude" in name]  # Vertex AI's, not the Gemini API's
    assert "openai/gpt-5.4-pro" in registry.prices.models("openai")
    assert registry.prices.models("local") == []


def test_a_missing_genai_prices_means_no_default_prices(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "genai_prices", None)  # import genai_prices fails
    g = GenaiPrices()
    assert g.find("openai", "gpt-5.4") is None
    assert g.models("openai") == []
    assert "genai-prices cannot be imported" in caplog.text
    assert table({"openai/x": FAMILY}).merged({}, defaults=g).get("openai", "gpt-5.4") is None
