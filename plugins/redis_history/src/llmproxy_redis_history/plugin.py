"""The entry point llmproxy loads: registers the ``redis://`` and ``rediss://`` history stores."""

from __future__ import annotations

from collections.abc import Mapping

import llmproxy
from llmproxy.history.base import HistoryStore
from llmproxy.registry import RegisterHistoryStore


def _store(url: str, environ: Mapping[str, str]) -> HistoryStore:
    # Imported here so that discovering plugins does not import redis-py.
    from llmproxy_redis_history.store import RedisHistoryStore

    return RedisHistoryStore.from_url(url, environ)


@llmproxy.hookimpl
def register_history_stores(register: RegisterHistoryStore) -> None:
    """Register ``redis://`` and ``rediss://`` (TLS) history stores."""
    register("redis", _store)
    register("rediss", _store)
