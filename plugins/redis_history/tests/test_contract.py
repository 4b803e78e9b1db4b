"""The Redis store passes the history-store contract, sync and async, with and without cache."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from llmproxy.history.base import HistoryStore
from llmproxy_redis_history import RedisHistoryStore
from llmproxy_testing.contracts import HistoryStoreContract


class TestRedisHistoryStore(HistoryStoreContract):
    @pytest.fixture
    def store(self, make_store: Callable[..., RedisHistoryStore]) -> RedisHistoryStore:
        return make_store()


class TestRedisHistoryStoreNoCache(HistoryStoreContract):
    @pytest.fixture
    def store(self, make_store: Callable[..., RedisHistoryStore]) -> RedisHistoryStore:
        return make_store(cache=False, prefix="nocache")


class _AsyncOnly:
    """Presents a store's async methods as the sync protocol, each call in a new event loop."""

    def __init__(self, store: RedisHistoryStore) -> None:
        import asyncio

        self._store = store
        self._run = asyncio.run

    def load(self, session_id, limit=None):  # type: ignore[no-untyped-def]
        return self._run(self._store.aload(session_id, limit))

    def append(self, records):  # type: ignore[no-untyped-def]
        return self._run(self._store.aappend(records))

    def sessions(self):  # type: ignore[no-untyped-def]
        return self._run(self._store.asessions())

    def delete(self, session_id):  # type: ignore[no-untyped-def]
        return self._run(self._store.adelete(session_id))

    def close(self) -> None:
        self._store.close()

    aload = property(lambda self: self._store.aload)
    aappend = property(lambda self: self._store.aappend)
    asessions = property(lambda self: self._store.asessions)
    adelete = property(lambda self: self._store.adelete)


class TestRedisHistoryStoreAsync(HistoryStoreContract):
    """Every contract test through the async methods (redis.asyncio), one event loop per call."""

    @pytest.fixture
    def store(self, make_store: Callable[..., RedisHistoryStore]) -> HistoryStore:
        return _AsyncOnly(make_store(prefix="async"))
