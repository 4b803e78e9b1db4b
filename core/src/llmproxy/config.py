"""Configuration: attrs classes that cattrs builds from a dict, a TOML file and the environment.

Precedence, lowest first: defaults, the TOML file (``LLMPROXY_CONFIG`` or an explicit path),
environment variables (see :mod:`llmproxy.env`), then what is passed in code. An unknown key or a
wrong type raises :class:`~llmproxy.errors.ConfigError` naming the key path, e.g.
``retry.max_attempts: expected int, got 'three'``.

Example ``llmproxy.toml``::

    default_model = "openai/gpt-5.4-mini"
    history_url = "sqlite:///var/lib/app/history.db"

    [aliases]
    fast = "openai/gpt-5.4-nano"

    [retry]
    max_attempts = 4

    [cache]                         # the response cache, for calls that ask for it
    url = "sqlite:///var/lib/app/cache.db"
    ttl = 3600

    [models.smart]                  # one name, several deployments (see llmproxy.routing)
    strategy = "weighted"
    deployments = [{ model = "openai/gpt-5.4", weight = 3 }, { model = "azure/gpt-5.4" }]

    [providers.openai]
    base_url = "https://api.openai.com/v1"

    [providers.ollama]              # any OpenAI-compatible server, from configuration alone
    kind = "openai-compatible"
    base_url = "http://localhost:11434/v1"

    [[budgets]]
    kind = "tokens"
    max_tokens = 1_000_000
    scope = "user"
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import cattrs
from attrs import field, frozen
from cattrs.v import format_exception

from llmproxy import env as envvars
from llmproxy.errors import ConfigError
from llmproxy.pricing import DEFAULT_MAX_AGE_DAYS, Price
from llmproxy.secret import register

DEFAULT_MODEL = "openai/gpt-5.4-mini"

COMPATIBLE_KIND = "openai-compatible"
"""The ``kind`` of a ``[providers.NAME]`` table served by the OpenAI plugin's provider."""

PROVIDER_KINDS = frozenset((COMPATIBLE_KIND,))
"""The ``kind`` values a ``[providers.NAME]`` table may have."""

PRESETS: dict[str, dict[str, Any]] = {
    "ollama": {"base_url": "http://localhost:11434/v1"},
    "vllm": {"base_url": "http://localhost:8000/v1"},
    "lmstudio": {"base_url": "http://localhost:1234/v1"},
    "openrouter": {"base_url": "https://openrouter.ai/api/v1", "api_key_env": "OPENROUTER_API_KEY"},
    "groq": {"base_url": "https://api.groq.com/openai/v1", "api_key_env": "GROQ_API_KEY"},
    "together": {"base_url": "https://api.together.xyz/v1", "api_key_env": "TOGETHER_API_KEY"},
    "azure": {
        "api_key_env": "AZURE_OPENAI_API_KEY",
        "api_key_header": "api-key",
        "default_query": {"api-version": "2024-10-21"},
    },
}
"""What ``preset = "NAME"`` fills in an ``openai-compatible`` table (its own keys win).

Local servers (``ollama``, ``vllm``, ``lmstudio``) need no key; the hosted ones read theirs
from the variable named. ``azure`` (Azure OpenAI) sends its key in the ``api-key`` header and
the API version in the query, and leaves ``base_url`` to the table: the URL names the resource
and the deployment (see the README).
"""

_STRING_TABLES = ("default_headers", "default_query")


def _str_table(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{path} must be a table of strings, got {value!r}", path=path)
    return dict(value)


def provider_table(name: str, table: Any) -> Any:
    """Check one ``[providers.NAME]`` table; an ``openai-compatible`` one gets its preset.

    A table without ``kind`` belongs to the plugin of the same name, which checks its own keys.
    With ``kind = "openai-compatible"``: ``base_url`` (a string; or from ``preset``) is
    required, ``api_key_env`` names the variable holding the key (none: a keyless local
    server), ``api_key_header`` the header it goes in (else ``Authorization: Bearer``),
    ``default_headers`` and ``default_query`` are tables of strings, ``prices`` maps a
    model to a price table and ``max_output_tokens`` a model to its output limit. A wrong value
    is a :class:`ConfigError` naming ``providers.NAME.key``.

    >>> provider_table("ollama", {"kind": "openai-compatible", "preset": "ollama"})["base_url"]
    'http://localhost:11434/v1'
    """
    where = f"providers.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table, got {table!r}", path=where)
    if "kind" not in table:
        return table
    kind = table["kind"]
    if kind not in PROVIDER_KINDS:
        raise ConfigError(
            f"{where}.kind must be one of {', '.join(sorted(PROVIDER_KINDS))}, got {kind!r}",
            path=f"{where}.kind",
        )
    out: dict[str, Any] = {}
    preset = table.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(
                f"{where}.preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}",
                path=f"{where}.preset",
            )
        out.update(PRESETS[preset])
    out.update(table)
    base_url = out.get("base_url")
    if not isinstance(base_url, str) or not base_url:
        raise ConfigError(
            f"{where}.base_url is required (the server's URL, e.g. http://localhost:11434/v1),"
            f" got {base_url!r}",
            path=f"{where}.base_url",
        )
    for key in ("api_key_env", "api_key", "api_key_header"):
        value = out.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(
                f"{where}.{key} must be a non-empty string, got {value!r}", path=f"{where}.{key}"
            )
    for key in _STRING_TABLES:
        if key in out:
            out[key] = _str_table(out[key], f"{where}.{key}")
    limits = out.get("max_output_tokens")
    if limits is not None:
        path = f"{where}.max_output_tokens"
        if not isinstance(limits, Mapping):
            raise ConfigError(
                f"{path} must be a table of model = tokens, got {limits!r}", path=path
            )
        checked: dict[str, int] = {}
        for model, limit in limits.items():
            if isinstance(limit, str) and limit.strip().isdigit():
                limit = int(limit)
            if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
                raise ConfigError(
                    f"{path}.{model} must be a whole number above 0, got {limit!r}",
                    path=f"{path}.{model}",
                )
            checked[str(model)] = limit
        out["max_output_tokens"] = checked
    prices = out.get("prices")
    if prices is not None:
        path = f"{where}.prices"
        if not isinstance(prices, Mapping):
            raise ConfigError(f"{path} must be a table of model = price, got {prices!r}", path=path)
        out["prices"] = {
            str(model): structure(price, Price, where=f"{path}.{model}")
            if isinstance(price, Mapping)
            else _not_a_price(price, f"{path}.{model}")
            for model, price in prices.items()
        }
    return out


def _not_a_price(value: Any, path: str) -> Price:
    raise ConfigError(
        f"{path} must be a table such as {{ input = 0.2, output = 0.6 }}, got {value!r}",
        path=path,
    )


def _provider_tables(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value  # (cattrs says what is wrong)
    return {name: provider_table(str(name), table) for name, table in value.items()}


def _model_tables(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value  # (cattrs says what is wrong)
    from llmproxy.routing import model_table  # routing imports this module

    return {str(name): model_table(str(name), table) for name, table in value.items()}


def _positive(_i: object, a: attrs.Attribute[Any], v: float | None) -> None:
    if v is not None and v <= 0:
        raise ConfigError(f"{a.name} must be greater than 0, got {v}", path=a.name)


def _not_negative(_i: object, a: attrs.Attribute[Any], v: float | None) -> None:
    if v is not None and v < 0:
        raise ConfigError(f"{a.name} must not be negative, got {v}", path=a.name)


def _cache_scope(_i: object, _a: attrs.Attribute[Any], v: str) -> None:
    if v not in ("user", "shared"):
        raise ConfigError(
            f"cache.scope must be user (entries per user and key) or shared, got {v!r}",
            path="cache.scope",
        )


@frozen
class CacheConfig:
    """The response cache (see :mod:`llmproxy.cache`): where, for how long, shared by whom.

    ``url`` chooses the store (``memory://``, ``sqlite:///path``, ``redis://...``; None: no
    cache, and a call asking for one is a ConfigError); ``ttl`` is the seconds an entry lives
    when a call asks ``cache=True`` (default 3600); ``scope`` is ``user`` (entries are only
    served to the same ``user`` and gateway key, the default) or ``shared`` (served to all);
    ``max_entries`` and ``max_bytes`` bound a memory or SQLite store (defaults 10,000 and
    64 MiB), evicting the oldest entries first.
    """

    url: str | None = None
    ttl: float = field(default=3600.0, validator=_positive)
    scope: str = field(default="user", validator=_cache_scope)
    max_entries: int = field(default=10_000, validator=_positive)
    max_bytes: int = field(default=64 * 1024 * 1024, validator=_positive)


@frozen
class RetryConfig:
    """How the Proxy retries a failed attempt (429, 5xx, timeouts, dropped connections).

    Delays grow by ``multiplier`` from ``initial_backoff`` up to ``max_backoff``, with up to
    ``jitter`` (a fraction) taken off at random; a ``retry-after`` from the service is honoured
    when longer. ``deadline`` (seconds, default 300) is a call's overall deadline, streams
    included: no attempt starts after it, and each attempt is told the time left
    (``ChatRequest.timeout``), which the provider holds it to (a stream's first chunk and its
    last), so a hung upstream is cut off at the deadline rather than at the SDK's own timeout.
    It stays well under the reservation lease; raise both for very long generations.
    """

    max_attempts: int = field(default=3, validator=_positive)
    initial_backoff: float = field(default=0.5, validator=_not_negative)
    max_backoff: float = field(default=20.0, validator=_not_negative)
    multiplier: float = field(default=2.0, validator=_positive)
    jitter: float = field(default=0.5, validator=_not_negative)
    deadline: float | None = field(default=300.0, validator=_positive)


def _budget_name(entry: Mapping[str, Any]) -> str | None:
    """The name of a configured budget without one: its kind, scope and window.

    None when those are not what a policy takes (the policy's own checks then say what).
    """
    kind = entry.get("kind", "tokens")
    scope = entry.get("scope", "global")
    window = entry.get("window", "total")
    if isinstance(scope, (list, tuple)) and scope and all(isinstance(s, str) for s in scope):
        scope = "+".join(scope)
    if not isinstance(kind, str) or not isinstance(scope, str):
        return None
    name = f"{kind}-{scope}"
    if window == "total":
        return name
    if isinstance(window, str):
        return f"{name}-{window}"
    if isinstance(window, bool) or not isinstance(window, (int, float)):
        return None
    seconds = str(int(window)) if float(window).is_integer() else f"{window:g}"
    return f"{name}-{seconds}s"


def named_budgets(entries: Any) -> list[dict[str, Any]]:
    """Give every configured budget table a name, so that its budget is shared and kept.

    A table without ``name`` is named after its kind, scope and window (``tokens-global``,
    ``cost-user-month``, ``requests_per_minute-key``): not after its limit, so raising a limit
    keeps what was spent. Two tables counted under one name and scope are refused.

    >>> named_budgets([{"kind": "cost", "max_usd": 50, "scope": "user", "window": "month"}])
    [{'kind': 'cost', 'max_usd': 50, 'scope': 'user', 'window': 'month', 'name': 'cost-user-month'}]
    """
    if not isinstance(entries, (list, tuple)):
        return entries  # type: ignore[no-any-return]  # (cattrs says what is wrong)
    out: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            out.append(entry)
            continue
        entry = dict(entry)
        if not entry.get("name"):
            name = _budget_name(entry)
            if name is None:
                out.append(entry)
                continue
            entry["name"] = name
        name = entry["name"]
        scope = entry.get("scope", "global")
        where = (name, "+".join(scope) if isinstance(scope, (list, tuple)) else str(scope))
        first = seen.setdefault(where, index)
        if first != index:
            raise ConfigError(
                f"budgets[{index}] and budgets[{first}] would both be counted as {name!r}"
                f' (scope {where[1]}): give each a distinct name = "..."',
                path=f"$.budgets[{index}].name",
            )
        out.append(entry)
    return out


@frozen
class ProxyConfig:
    """Everything a :class:`~llmproxy.Proxy` is configured with.

    ``providers`` maps a provider name to its table (``api_key``, ``base_url``, ``timeout`` and
    provider-specific keys); ``budgets`` is a list of budget policy tables, each with a ``kind``
    registered by a plugin (``tokens``, ``requests_per_minute``), built once plugins are loaded;
    every one is named (see :func:`named_budgets`), so it is counted in the configured ledger,
    shared by the processes using it and kept across runs.
    ``history_url``/``ledger_url`` choose the stores by URL; None means the embedded SQLite
    files in the data dir. ``history_limit`` caps how many past messages are sent as context.
    ``prices`` wins over the plugins' and the default (genai-prices) tables:
    ``{"openai/gpt-5.4-mini": {"input": 0.25, "output": 2.0, "cached_input": 0.025}}`` in USD
    per million tokens (also ``cache_write`` and ``tiers``; a key holding ``*`` or ``{date}`` is
    a pattern, see :mod:`llmproxy.pricing`).
    ``fallbacks`` maps a model to the models tried in turn when it fails with a retryable error.
    ``on_limit`` is ``raise`` (RateLimited at once) or ``wait`` (sleep ``retry_after`` and try
    again); ``limit_wait`` bounds, in seconds, how long a call waits for a rate limit or for
    budget held by calls in flight to be released. ``reservation_lease`` (seconds, default 600)
    is how long a hold whose owner died blocks its budget before it is charged in full; the
    holds of live calls are renewed every third of it, so no call outlives its hold. (The other
    lease lengths are environment settings, see :mod:`llmproxy.env`:
    ``LLMPROXY_LEDGER_LEASE_SECONDS`` for SQLite budget leases, and
    ``LLMPROXY_LEDGER_SETTLED_GRACE`` for how long settled and charged ids are remembered. A
    crash can under-use a budget, never overspend it.)
    A provider table with ``kind = "openai-compatible"`` declares a provider of its own (see
    :func:`provider_table`); its ``prices`` are folded into ``prices`` as ``NAME/model``.
    ``default_max_output_tokens`` caps a call's output when the call sets no cap and a token
    budget applies. ``cache`` is the response cache's table (:class:`CacheConfig`).
    ``models`` maps an alias to its deployments, routing strategy and cooldown (a
    ``[models.NAME]`` table, see :mod:`llmproxy.routing` and :func:`llmproxy.routing.model_table`).
    ``price_max_age_days`` (default 90; 0: never) is the age past which a price is flagged as
    stale by ``llmproxy prices`` and the gateway dashboard (``LLMPROXY_PRICE_MAX_AGE_DAYS``).
    """

    default_model: str = DEFAULT_MODEL
    aliases: dict[str, str] = attrs.Factory(dict)
    history_url: str | None = None
    ledger_url: str | None = None
    use_history: bool = True
    history_limit: int = field(default=100, validator=_positive)
    max_tool_rounds: int = field(default=8, validator=_not_negative)
    default_max_output_tokens: int = field(default=4096, validator=_positive)
    reservation_lease: float = field(default=600.0, validator=_positive)
    on_limit: str = field(default="raise", validator=attrs.validators.in_(("raise", "wait")))
    limit_wait: float = field(default=30.0, validator=_not_negative)
    retry: RetryConfig = attrs.Factory(RetryConfig)
    providers: dict[str, dict[str, Any]] = field(factory=dict, converter=_provider_tables)
    budgets: list[dict[str, Any]] = field(factory=list, converter=named_budgets)
    prices: dict[str, Price] = attrs.Factory(dict)
    fallbacks: dict[str, list[str]] = attrs.Factory(dict)
    cache: CacheConfig = attrs.Factory(CacheConfig)
    models: dict[str, dict[str, Any]] = field(factory=dict, converter=_model_tables)
    price_max_age_days: int = field(default=DEFAULT_MAX_AGE_DAYS, validator=_not_negative)

    def __attrs_post_init__(self) -> None:
        both = sorted(set(self.models) & set(self.aliases))
        if both:
            raise ConfigError(
                f"{both[0]!r} is both an alias ([aliases]) and a model with deployments"
                " ([models]): keep one",
                path=f"models.{both[0]}",
            )
        # A configured key is a secret from the start, whether or not its provider is used:
        # it is masked in everything the process stores, sends upstream or logs.
        for table in self.providers.values():
            key = table.get("api_key") if isinstance(table, Mapping) else None
            if isinstance(key, str):
                register(key)
        # An openai-compatible table's prices are those of NAME/model, unless set in prices.
        table_prices = {
            f"{name}/{model}": price
            for name, table in self.providers.items()
            if isinstance(table, Mapping) and isinstance(table.get("prices"), Mapping)
            for model, price in table["prices"].items()
        }
        if table_prices:
            object.__setattr__(self, "prices", {**table_prices, **self.prices})


converter = cattrs.Converter(forbid_extra_keys=True)


def _str_or_number(value: Any, _type: Any) -> str | float:
    # The policy's own validator says what the value may be; this only refuses wrong types.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"expected a string or a number, got {type(value).__name__}")
    return value


def _str_or_strings(value: Any, _type: Any) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"expected a string or a list of strings, got {value!r}")


converter.register_structure_hook_func(lambda t: t == (str | float), _str_or_number)
converter.register_structure_hook_func(lambda t: t == (str | Sequence[str]), _str_or_strings)


def _type_name(tp: object) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _format_exception(exc: BaseException, type_: type[Any] | None) -> str:
    # Our validators already say what is wrong and what to do; keep their words.
    if isinstance(exc, ConfigError):
        return str(exc)
    return format_exception(exc, type_)


def structure(data: Mapping[str, Any], cls: type[Any], *, where: str = "configuration") -> Any:
    """Build ``cls`` from ``data`` with cattrs, turning every failure into one ConfigError."""
    try:
        return converter.structure(dict(data), cls)
    except ConfigError:
        raise
    except cattrs.BaseValidationError as exc:
        problems = cattrs.transform_error(exc, path="$", format_exception=_format_exception)
        message = "; ".join(problems)
        path = problems[0].rsplit(" @ ", 1)[-1] if problems else None
        raise ConfigError(f"invalid {where}: {message}", path=path) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {where}: {exc}") from None


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML configuration file, with a ConfigError naming the file on failure."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist", path=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"configuration file {path} is not valid TOML: {exc}", path=str(path)
        ) from None


def load_config(
    data: Mapping[str, Any] | None = None,
    *,
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ProxyConfig:
    """Build a :class:`ProxyConfig` from a TOML file, the environment and ``data``, in that order.

    ``environ`` defaults to no environment at all; pass ``os.environ`` to read it (as
    :meth:`llmproxy.Proxy.from_env` does). ``path`` defaults to ``LLMPROXY_CONFIG`` when set.
    """
    env = environ or {}
    merged: dict[str, Any] = {}
    file_path = path or env.get(envvars.CONFIG)
    if file_path:
        merged = _merge(merged, read_toml(file_path))
    merged = _merge(merged, envvars.config_overrides(env))
    if data:
        merged = _merge(merged, data)
    config: ProxyConfig = structure(merged, ProxyConfig)
    return config
