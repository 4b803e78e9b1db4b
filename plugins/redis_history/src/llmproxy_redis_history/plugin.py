"""The entry point llmproxy loads: the ``redis://`` and ``rediss://`` history stores and caches."""

from __future__ import annotations

from collections.abc import Mapping

import llmproxy
from llmproxy.cache.base import CacheSettings, ResponseCache
from llmproxy.history.base import HistoryStore
from llmproxy.registry import RegisterCache, RegisterHistoryStore


def _store(url: str, environ: Mapping[str, str]) -> HistoryStore:
    # Imported here so that discovering plugins does not import redis-py.
    from llmproxy_redis_history.store import RedisHistoryStore

    return RedisHistoryStore.from_url(url, environ)


@llmproxy.hookimpl
def register_history_stores(register: RegisterHistoryStore) -> None:
    """Register ``redis://`` and ``rediss://`` (TLS) history stores."""
    register("redis", _store)
    register("rediss", _store)


def _cache(url: str, settings: CacheSettings) -> ResponseCache:
    from llmproxy_redis_history.response_cache import RedisResponseCache

    return RedisResponseCache(url, settings)


@llmproxy.hookimpl
def register_caches(register: RegisterCache) -> None:
    """Register ``redis://`` and ``rediss://`` response caches."""
    register("redis", _cache)
    register("rediss", _cache)
