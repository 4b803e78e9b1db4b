"""A real redis-server for the whole session (FLUSHALL before each test), and store factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from llmproxy_redis_history import RedisHistoryStore
from llmproxy_testing.redis_fixtures import redis_server, redis_url


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test server (bytes, like the seed's example)."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_store(redis_url: str) -> Iterator[Callable[..., RedisHistoryStore]]:
    made: list[RedisHistoryStore] = []

    def make(url: str | None = None, **options: Any) -> RedisHistoryStore:
        store = RedisHistoryStore(url or redis_url, environ={}, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


class RoundTrips:
    """Counts the network requests the server read, from ``INFO stats`` ``total_reads_processed``.

    A request (one command, or a whole pipeline or MULTI/EXEC written at once) is one read on
    the server, and the store waits for each reply before sending more, so reads are round
    trips. The measuring ``INFO`` calls use one connection of their own and are subtracted.
    """

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self.start = self._reads()

    def _reads(self) -> int:
        return int(self._client.info("stats")["total_reads_processed"])

    def __call__(self) -> int:
        """Return the round trips since the last call (and start counting again)."""
        now = self._reads()
        count = now - self.start - 1
        self.start = now
        return count

    def close(self) -> None:
        self._client.close()


@pytest.fixture
def round_trips(redis_url: str) -> Iterator[RoundTrips]:
    counter = RoundTrips(redis_url)
    yield counter
    counter.close()
