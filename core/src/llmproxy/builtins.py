"""The built-in plugin: memory and SQLite stores, ledgers and response caches; core policies.

Registered like any other plugin (it is listed in ``DEFAULT_PLUGINS``), so ``llmproxy
plugins`` shows it and third-party plugins can replace a scheme.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmproxy import env
from llmproxy.budget.base import Ledger
from llmproxy.budget.policy import CostBudget, LLMBudget, RequestsPerMinute, TokensPerMinute
from llmproxy.cache.base import CacheSettings, ResponseCache
from llmproxy.history.base import HistoryStore
from llmproxy.hookspecs import hookimpl
from llmproxy.registry import RegisterCache, RegisterHistoryStore, RegisterLedger, RegisterPolicy
from llmproxy.urls import sqlite_path


def _memory_store(url: str, environ: Mapping[str, str]) -> HistoryStore:
    from llmproxy.history.memory import MemoryHistoryStore

    return MemoryHistoryStore()


def _sqlite_store(url: str, environ: Mapping[str, str]) -> HistoryStore:
    from llmproxy.history.sqlite import SQLiteHistoryStore

    return SQLiteHistoryStore(sqlite_path(url, env.data_dir(environ) / "history.db"))


def _memory_ledger(url: str, environ: Mapping[str, str]) -> Ledger:
    from llmproxy.budget.memory import SETTLED_GRACE, MemoryLedger

    grace = env.seconds(environ, env.LEDGER_SETTLED_GRACE) or SETTLED_GRACE
    return MemoryLedger(settled_grace=grace)


def _sqlite_ledger(url: str, environ: Mapping[str, str]) -> Ledger:
    from llmproxy.budget.memory import SETTLED_GRACE
    from llmproxy.budget.sqlite import SQLiteLedger

    grace = env.seconds(environ, env.LEDGER_SETTLED_GRACE) or SETTLED_GRACE
    ttl = env.seconds(environ, env.LEDGER_LEASE_SECONDS)  # checked even with leasing off
    ledger = SQLiteLedger(
        sqlite_path(url, env.data_dir(environ) / "ledger.db"), settled_grace=grace
    )
    if not env.ledger_lease(environ):
        return ledger
    from llmproxy.budget.lease import LEASE_TTL, LeasingLedger

    return LeasingLedger(ledger, ttl=ttl or LEASE_TTL)


@hookimpl
def register_history_stores(register: RegisterHistoryStore) -> None:
    """Register ``memory://`` and ``sqlite:///path`` history stores."""
    register("memory", _memory_store)
    register("sqlite", _sqlite_store)


@hookimpl
def register_ledgers(register: RegisterLedger) -> None:
    """Register ``memory://`` and ``sqlite:///path`` ledgers."""
    register("memory", _memory_ledger)
    register("sqlite", _sqlite_ledger)


def _memory_cache(url: str, settings: CacheSettings) -> ResponseCache:
    from llmproxy.cache.memory import MemoryCache

    return MemoryCache(settings)


def _sqlite_cache(url: str, settings: CacheSettings) -> ResponseCache:
    from llmproxy.cache.sqlite import SQLiteCache

    return SQLiteCache(sqlite_path(url, env.data_dir(settings.environ) / "cache.db"), settings)


@hookimpl
def register_caches(register: RegisterCache) -> None:
    """Register ``memory://`` and ``sqlite:///path`` response caches."""
    register("memory", _memory_cache)
    register("sqlite", _sqlite_cache)


@hookimpl
def register_budget_policies(register: RegisterPolicy) -> None:
    """Register the policy kinds: tokens, cost, requests_per_minute, tokens_per_minute."""
    register("tokens", LLMBudget)
    register("cost", CostBudget)
    register("requests_per_minute", RequestsPerMinute)
    register("tokens_per_minute", TokensPerMinute)
