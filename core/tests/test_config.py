"""Configuration from dicts, TOML and the environment, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmproxy import ConfigError, LLMBudget, Proxy, RequestsPerMinute
from llmproxy.config import ProxyConfig, RetryConfig, load_config


def test_defaults() -> None:
    config = load_config()
    assert config == ProxyConfig()
    assert config.default_model == "openai/gpt-5.4-mini"
    assert config.retry == RetryConfig()


def test_unknown_key_names_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"retry": {"max_attempts": 3, "bogus": 1}})
    assert "bogus" in str(info.value)
    assert "$.retry" in str(info.value)


def test_wrong_type_names_key_and_expected_type() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"retry": {"max_attempts": "three"}})
    message = str(info.value)
    assert "$.retry.max_attempts" in message and "int" in message


def test_validator_message_is_kept() -> None:
    with pytest.raises(ConfigError, match="max_attempts must be greater than 0"):
        load_config({"retry": {"max_attempts": 0}})


def test_toml_then_env_then_code(tmp_path: Path) -> None:
    path = tmp_path / "llmproxy.toml"
    path.write_text(
        'default_model = "openai/from-file"\n'
        'history_url = "sqlite:///file.db"\n'
        "[retry]\nmax_attempts = 7\n"
        '[aliases]\nfast = "openai/gpt-5.4-nano"\n'
        '[[budgets]]\nkind = "tokens"\nmax_tokens = 500\nscope = "user"\n'
    )
    env = {"LLMPROXY_CONFIG": str(path), "LLMPROXY_DEFAULT_MODEL": "openai/from-env"}
    config = load_config({"history_url": "memory://"}, environ=env)
    assert config.default_model == "openai/from-env"  # env beats the file
    assert config.history_url == "memory://"  # code beats both
    assert config.retry.max_attempts == 7
    assert config.aliases == {"fast": "openai/gpt-5.4-nano"}
    proxy = Proxy(config, environ={})
    # A configured budget is named after its kind, scope and window: shared and kept.
    assert proxy.policies == [LLMBudget(max_tokens=500, scope="user", name="tokens-user")]
    assert getattr(proxy.policies[0], "shared", False)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("default_model = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(path=tmp_path / "none.toml")


def test_env_budgets_and_bad_numbers() -> None:
    config = load_config(
        environ={"LLMPROXY_MAX_TOKENS": "1_000", "LLMPROXY_REQUESTS_PER_MINUTE": "30"}
    )
    proxy = Proxy(config, environ={})
    assert proxy.policies == [
        LLMBudget(max_tokens=1000, name="tokens-global"),
        RequestsPerMinute(limit=30, name="requests_per_minute-global"),
    ]
    with pytest.raises(ConfigError, match="LLMPROXY_MAX_TOKENS must be a whole number"):
        load_config(environ={"LLMPROXY_MAX_TOKENS": "lots"})
    with pytest.raises(ConfigError, match="must not be negative"):
        load_config(environ={"LLMPROXY_MAX_TOKENS": "-1"})


def test_configured_budgets_are_named_and_distinct() -> None:
    config = load_config(
        {
            "budgets": [
                {"kind": "cost", "max_usd": 5, "scope": ["user", "model"], "window": "month"},
                {"kind": "requests_per_minute", "limit": 3, "window": 10},
                {"max_tokens": 10, "name": "team"},
            ]
        }
    )
    assert [b["name"] for b in config.budgets] == [
        "cost-user+model-month",
        "requests_per_minute-global-10s",
        "team",
    ]
    assert all(getattr(p, "shared", False) for p in Proxy(config, environ={}).policies)
    with pytest.raises(ConfigError, match=r"budgets\[1\] and budgets\[0\] .*'tokens-global'"):
        load_config({"budgets": [{"max_tokens": 5}, {"max_tokens": 9}]})
    named = load_config({"budgets": [{"max_tokens": 5}, {"max_tokens": 9, "name": "b"}]})
    assert [b["name"] for b in named.budgets] == ["tokens-global", "b"]


def test_unknown_budget_kind_and_bad_policy_fields() -> None:
    with pytest.raises(ConfigError, match=r"budgets\[0\].kind 'dollars'"):
        Proxy({"budgets": [{"kind": "dollars", "limit": 5}]}, environ={})
    with pytest.raises(ConfigError, match="scope must be one of"):
        Proxy({"budgets": [{"kind": "tokens", "max_tokens": 5, "scope": "planet"}]}, environ={})
    with pytest.raises(ConfigError, match="extra fields"):
        Proxy({"budgets": [{"kind": "tokens", "max_tokens": 5, "color": "red"}]}, environ={})


def test_budget_names_default_from_kind_limit_scope() -> None:
    assert LLMBudget(max_tokens=10).name == "tokens-10-global"
    assert LLMBudget(max_tokens=10, scope="user").name == "tokens-10-user"
    assert LLMBudget(max_tokens=10, name="team-a").name == "team-a"
    assert RequestsPerMinute(limit=5).name == "rpm-5-global"


def test_budgets_must_be_policies() -> None:
    with pytest.raises(ConfigError, match="budgets must hold budget policies"):
        Proxy(environ={}, budgets=[1000])  # type: ignore[list-item]


def test_a_price_that_changes_is_answered_by_the_date_asked() -> None:
    from llmproxy.pricing import Price, PriceTable
    from llmproxy.types import Usage

    later = Price(3.0, 30.0)
    middle = Price(2.0, 20.0, until=2_000.0, then=later)
    first = Price(1.0, 10.0, 0.1, "2026-10", until=1_000.0, then=middle)
    now = [0.0]
    table = PriceTable({"p/m*": first}, clock=lambda: now[0], defaults=None)
    assert table.get("p", "m-1") == first
    now[0] = 999.999
    assert table.get("p", "m-1") == first  # the lookup is cached; the date is not
    now[0] = 1_000.0
    assert table.get("p", "m-1") == middle
    assert table.get("p", "m-1", at=2_500.0) == later
    assert table.get("p", "m-1", at=10.0) == first
    now[0] = 5_000.0
    assert table.merged({}).get("p", "m-2") == later  # a copy keeps the table's clock
    usage = Usage(1_000_000, 1_000_000)
    assert [first.at(t).cost(usage) for t in (0, 1_500, 9_999)] == [11.0, 22.0, 33.0]
    # An override without a change replaces the whole entry.
    assert table.merged({"p/m*": Price(5.0, 5.0)}).get("p", "m-1") == Price(5.0, 5.0)
    with pytest.raises(ConfigError, match="both until"):
        Price(1.0, 1.0, until=5.0)
    with pytest.raises(ConfigError, match="both until"):
        Price(1.0, 1.0, then=later)
    # The configuration's prices table takes the same shape.
    proxy = Proxy(
        {
            "prices": {
                "openai/x": {
                    "input": 1.0,
                    "output": 2.0,
                    "until": 0.0,
                    "then": {"input": 4.0, "output": 8.0},
                }
            }
        },
        environ={},
    )
    assert proxy.prices.get("openai", "x") == Price(4.0, 8.0)


def test_prices_from_plugins_and_config_overrides() -> None:
    from llmproxy.types import Usage

    proxy = Proxy(environ={})
    # From genai-prices, dated snapshots included (it declares them by name).
    mini = proxy.prices.get("openai", "gpt-5.4-mini")
    assert mini is not None and (mini.input, mini.output, mini.cached_input) == (0.75, 4.5, 0.075)
    assert proxy.prices.get("openai", "gpt-5.4-mini-2026-03-17") == mini
    assert proxy.prices.get("openai", "a-model-released-tomorrow") is None
    custom = Proxy({"prices": {"openai/gpt-5.4-mini": {"input": 1.0, "output": 2.0}}}, environ={})
    price = custom.prices.get("openai", "gpt-5.4-mini")
    assert price is not None
    assert price.cost(Usage(1_000_000, 500_000, 200_000)) == 2.0
    with pytest.raises(ConfigError, match="non-negative"):
        Proxy({"prices": {"openai/x": {"input": -1.0, "output": 2.0}}}, environ={})
