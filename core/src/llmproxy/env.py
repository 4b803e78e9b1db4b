"""The environment variables the core reads, in one place.

==============================  =================================================================
Variable                        Meaning
==============================  =================================================================
``LLMPROXY_CONFIG``             Path of a TOML configuration file (see ``llmproxy.config``).
``LLMPROXY_DEFAULT_MODEL``      Model used when a call names none (``openai/gpt-5.4-mini``).
``LLMPROXY_HISTORY_URL``        History store: ``memory://``, ``sqlite:///path.db`` (default:
                                ``history.db`` in the data dir); plugins add schemes.
``LLMPROXY_LEDGER_URL``         Budget ledger: ``memory://``, ``sqlite:///path.db`` (default:
                                ``ledger.db`` in the data dir); plugins add schemes.
``LLMPROXY_LEDGER_LEASE``       ``on`` or ``off`` (default ``off``; ``llmproxy serve`` defaults it
                                to ``on``): an SQLite ledger admits most calls from budget leases
                                held per process (``llmproxy.budget.lease``), writing settles in
                                batches every 100 ms instead of two transactions per call.
``LLMPROXY_LEDGER_LEASE_SECONDS`` Length of a budget lease of ``LLMPROXY_LEDGER_LEASE`` (default
                                900): how long a killed process's leases keep budget from the
                                others before they are charged in full (a crash can under-use a
                                budget, never overspend it). Renewed every third of it (at most
                                every 60 s) while the process lives.
``LLMPROXY_LEDGER_SETTLED_GRACE`` Seconds a memory or SQLite ledger remembers a settled or
                                charged reservation id (default 86400, 24 h): a repeated settle
                                is a no-op and a late settle replaces an expiry charge once.
                                The memory ledger keeps only charged ids (at most 100,000):
                                a repeated settle is a no-op there whatever the grace.
``LLMPROXY_CACHE_URL``          Response cache (``cache.url``): ``memory://``, ``sqlite:///path.db``,
                                ``redis://host:6379/0`` (with ``llmproxy-redis-history``). Unset:
                                no cache; calls opt in with ``cache=True`` or ``cache=<seconds>``
                                (see ``llmproxy.cache``).
``LLMPROXY_DATA_DIR``           Where the embedded SQLite files live (default: the user data
                                dir, e.g. ``~/.local/share/llmproxy``), the journal of writes
                                that missed their store (``journal.db``, ``llmproxy.journal``)
                                included.
``LLMPROXY_PLUGINS``            Comma list of plugin (entry point or distribution) names to load;
                                set but empty loads none. Unset: all installed plugins. A name
                                that matches no installed plugin is a ``PluginError`` in
                                ``llmproxy plugins``.
``LLMPROXY_TRACE_PLUGINS``      ``1`` (``true``, ``yes``, ``on``): log every plugin hook call with
                                the plugins it reached and its duration (logger
                                ``llmproxy.plugins``, INFO; to stderr when the application set up
                                no logging, as the CLI does not). For plugin authors.
``LLMPROXY_MAX_TOKENS``         A global token budget (``LLMBudget(max_tokens=...)``) for
                                ``Proxy.from_env`` and the CLI, named ``tokens-global``: kept
                                in the ledger across runs (a new limit keeps the spend).
``LLMPROXY_REQUESTS_PER_MINUTE`` A global requests-per-minute limit for ``Proxy.from_env``,
                                named ``requests_per_minute-global``.
``LLMPROXY_PROVIDERS__NAME__KEY`` Sets ``KEY`` of the ``[providers.NAME]`` table (both lower-cased),
                                e.g. ``LLMPROXY_PROVIDERS__GROQ__KIND=openai-compatible``,
                                ``LLMPROXY_PROVIDERS__GROQ__BASE_URL=...``,
                                ``LLMPROXY_PROVIDERS__GROQ__API_KEY_ENV=GROQ_API_KEY``. A value
                                that starts with ``{`` is JSON (``DEFAULT_HEADERS``,
                                ``DEFAULT_QUERY``, ``PRICES``, ``MAX_OUTPUT_TOKENS``): an invalid
                                one is a ``ConfigError`` naming the variable. Wins over the TOML
                                file, key by key.
``LLMPROXY_PRICE_MAX_AGE_DAYS`` Days after which a price's date (``as_of``) makes it stale
                                (default 90; 0 turns the flag off): ``llmproxy prices`` and the
                                gateway dashboard flag it. Configuration key
                                ``price_max_age_days``; the variable wins over the file. Prices
                                come from genai-prices, the plugins and ``[prices]``
                                (``llmproxy.pricing``); no variable changes which.
``XDG_DATA_HOME``, ``APPDATA``  Read to find the user data dir when ``LLMPROXY_DATA_DIR`` is unset.
``LLMPROXY_REDIS_URL``          Where Redis is, for the Redis plugins (``llmproxy.redis_url``
                                resolves it); wins over the seed's variables below.
``LLM_PROXY_OPEN_AI_IOREDIS_HOST``       The seed library's Redis host (default ``localhost``).
``LLM_PROXY_OPEN_AI_IOREDIS_PORT``       The seed's Redis port (default ``6379``).
``LLM_PROXY_OPEN_AI_IOREDIS_DB_INDEX``   The seed's Redis database index (default ``0``).
``LLM_PROXY_OPEN_AI_IOREDIS_KEY_PREFIX`` The seed's key prefix (default ``llm_proxy``).
==============================  =================================================================

The seed's services (``OpenAIService``, ``DeepSeekService``, ``GeminiService``) keep history in
Redis, as the seed did, when any of the four seed variables is set and ``LLMPROXY_HISTORY_URL``
is not (nor ``history_url`` in the configuration); a ``message_handler`` given to the service
still wins. That needs ``llmproxy-redis-history``; without it such a service raises
``ConfigError`` saying to install it or to set ``LLMPROXY_HISTORY_URL``. A plain ``Proxy`` does
not look at the seed variables: its default store stays embedded SQLite.

Provider variables (``OPENAI_API_KEY``...) are read by each provider plugin's own ``env.py``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from llmproxy.errors import ConfigError

CONFIG = "LLMPROXY_CONFIG"
DEFAULT_MODEL = "LLMPROXY_DEFAULT_MODEL"
HISTORY_URL = "LLMPROXY_HISTORY_URL"
LEDGER_URL = "LLMPROXY_LEDGER_URL"
CACHE_URL = "LLMPROXY_CACHE_URL"
LEDGER_LEASE = "LLMPROXY_LEDGER_LEASE"
LEDGER_LEASE_SECONDS = "LLMPROXY_LEDGER_LEASE_SECONDS"
LEDGER_SETTLED_GRACE = "LLMPROXY_LEDGER_SETTLED_GRACE"
DATA_DIR = "LLMPROXY_DATA_DIR"
PLUGINS = "LLMPROXY_PLUGINS"
MAX_TOKENS = "LLMPROXY_MAX_TOKENS"
REQUESTS_PER_MINUTE = "LLMPROXY_REQUESTS_PER_MINUTE"
PRICE_MAX_AGE_DAYS = "LLMPROXY_PRICE_MAX_AGE_DAYS"
PROVIDERS_PREFIX = "LLMPROXY_PROVIDERS__"


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Return the directory for the embedded SQLite files (not created here)."""
    env = os.environ if environ is None else environ
    explicit = env.get(DATA_DIR)
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "win32":
        base = (
            env.get("LOCALAPPDATA") or env.get("APPDATA") or str(Path.home() / "AppData" / "Local")
        )
        return Path(base) / "llmproxy"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "llmproxy"
    xdg = env.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "llmproxy"


_SWITCH: Final = {
    "on": True,
    "1": True,
    "true": True,
    "yes": True,
    "off": False,
    "0": False,
    "false": False,
    "no": False,
}


def switch(raw: str) -> bool | None:
    """An on/off word as a bool, or None for anything else (the caller names what to fix).

    The words: ``on``/``off``, ``1``/``0``, ``true``/``false``, ``yes``/``no``, in any case.
    """
    return _SWITCH.get(raw.strip().lower())


def ledger_lease(environ: Mapping[str, str]) -> bool:
    """Whether an SQLite ledger leases budgets (``LLMPROXY_LEDGER_LEASE``; default off)."""
    raw = environ.get(LEDGER_LEASE, "")
    if not raw.strip():
        return False
    value = switch(raw)
    if value is None:
        raise ConfigError(f"{LEDGER_LEASE} must be on or off, got {raw!r}", path=LEDGER_LEASE)
    return value


def _int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}", path=name) from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}", path=name)
    return value


def seconds(environ: Mapping[str, str], name: str) -> float | None:
    """Read a positive number of seconds from variable ``name``; None when unset or empty."""
    raw = environ.get(name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}", path=name) from None
    if not value > 0:
        raise ConfigError(f"{name} must be greater than 0, got {raw!r}", path=name)
    return value


def seconds_option(options: Mapping[str, Any], key: str, provider: str) -> float | None:
    """A positive number of seconds from the ``[providers.NAME]`` table, None when absent.

    A value that is not a positive number is a ConfigError naming ``providers.NAME.key``.
    """
    value = options.get(key)
    if value is None:
        return None
    path = f"providers.{provider}.{key}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{path} must be a number of seconds, got {value!r}", path=path)
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{path} must be a number of seconds, got {value!r}", path=path) from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{path} must be a positive number of seconds, got {value!r}", path=path)
    return seconds


def flag_option(options: Mapping[str, Any], key: str, default: bool, provider: str) -> bool:
    """An on/off option from the ``[providers.NAME]`` table: a TOML boolean or an on/off word.

    ``LLMPROXY_PROVIDERS__NAME__KEY=false`` arrives as the string ``"false"``, which must not
    read as true (as ``bool("false")`` would); anything else is a ConfigError naming
    ``providers.NAME.key``.
    """
    value = options.get(key, default)
    if isinstance(value, bool):
        return value
    flag = switch(value) if isinstance(value, str) else None
    if flag is None:
        path = f"providers.{provider}.{key}"
        raise ConfigError(f"{path} must be true or false, got {value!r}", path=path)
    return flag


def config_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Return the configuration keys set by environment variables, as a config dict."""
    out: dict[str, Any] = {}
    if environ.get(DEFAULT_MODEL):
        out["default_model"] = environ[DEFAULT_MODEL]
    if environ.get(HISTORY_URL):
        out["history_url"] = environ[HISTORY_URL]
    if environ.get(LEDGER_URL):
        out["ledger_url"] = environ[LEDGER_URL]
    if environ.get(CACHE_URL):
        out["cache"] = {"url": environ[CACHE_URL]}
    max_age = _int(environ, PRICE_MAX_AGE_DAYS)
    if max_age is not None:
        out["price_max_age_days"] = max_age
    budgets: list[dict[str, Any]] = []
    max_tokens = _int(environ, MAX_TOKENS)
    if max_tokens is not None:
        budgets.append({"kind": "tokens", "max_tokens": max_tokens})
    rpm = _int(environ, REQUESTS_PER_MINUTE)
    if rpm is not None:
        budgets.append({"kind": "requests_per_minute", "limit": rpm})
    if budgets:
        out["budgets"] = budgets
    providers = provider_overrides(environ)
    if providers:
        out["providers"] = providers
    return out


def provider_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The ``[providers.NAME]`` keys set by ``LLMPROXY_PROVIDERS__NAME__KEY`` variables.

    >>> provider_overrides({"LLMPROXY_PROVIDERS__OLLAMA__PRESET": "ollama",
    ...                     "LLMPROXY_PROVIDERS__OLLAMA__DEFAULT_QUERY": '{"a": "b"}'})
    {'ollama': {'preset': 'ollama', 'default_query': {'a': 'b'}}}
    """
    out: dict[str, dict[str, Any]] = {}
    for variable, raw in environ.items():
        if not variable.startswith(PROVIDERS_PREFIX):
            continue
        name, sep, key = variable[len(PROVIDERS_PREFIX) :].partition("__")
        if not sep or not name or not key or "__" in key:
            raise ConfigError(
                f"{variable}: expected {PROVIDERS_PREFIX}NAME__KEY (e.g."
                f" {PROVIDERS_PREFIX}OLLAMA__BASE_URL)",
                path=variable,
            )
        value: Any = raw
        if raw.lstrip().startswith("{"):
            try:
                value = json.loads(raw)
            except ValueError as exc:
                raise ConfigError(f"{variable} is not valid JSON: {exc}", path=variable) from None
        out.setdefault(name.lower(), {})[key.lower()] = value
    return out
