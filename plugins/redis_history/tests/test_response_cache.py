"""The Redis response cache against the real redis-server the suite starts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from llmproxy import Proxy
from llmproxy.cache import CacheSettings
from llmproxy.errors import StoreError
from llmproxy_redis_history.response_cache import RedisResponseCache
from llmproxy_testing.fake_openai import FakeOpenAI

API_KEY = "sk-test-SECRET0123456789abcdefXYZ"
MODEL = "openai/gpt-5.4-mini"


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


MakeCache = Callable[..., RedisResponseCache]


@pytest.fixture
def make_cache(redis_url: str) -> Iterator[MakeCache]:
    made: list[RedisResponseCache] = []

    def make(url: str | None = None, **kwargs: object) -> RedisResponseCache:
        cache = RedisResponseCache(url or redis_url, CacheSettings(**kwargs))  # type: ignore[arg-type]
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


def test_a_value_is_kept_replaced_and_cleared(make_cache: MakeCache, raw: redis.Redis) -> None:
    cache = make_cache()
    assert cache.get("k") is None
    cache.put("k", b"one", 60)
    assert cache.get("k") == b"one"
    cache.put("k", b"three", 60)
    assert cache.get("k") == b"three"
    assert cache.stats() == (1, 5)
    assert 0 < raw.pttl("{llm_proxy:response_cache}:e:k") <= 60_000  # Redis drops it too
    cache.clear()
    assert cache.get("k") is None and cache.stats() == (0, 0)
    assert raw.keys("*response_cache*") == []


def test_entries_expire_by_the_stores_clock(make_cache: MakeCache) -> None:
    clock = Clock()
    cache = make_cache(clock=clock)
    cache.put("a", b"1", 10)
    clock.now += 9.9
    assert cache.get("a") == b"1"
    clock.now += 0.1
    assert cache.get("a") is None
    cache.put("b", b"2", 10)  # a write drops what expired from the index and sizes
    assert cache.stats() == (1, 1)


def test_the_oldest_entries_are_evicted_past_the_bounds(make_cache: MakeCache) -> None:
    clock = Clock()
    cache = make_cache(max_entries=3, max_bytes=10, clock=clock)
    for name in "abcd":
        clock.now += 1
        cache.put(name, name.encode(), 60)
    assert [cache.get(n) for n in "abcd"] == [None, b"b", b"c", b"d"]
    clock.now += 1
    cache.put("big", b"12345678", 60)  # 3 + 8 bytes: b, the oldest, makes room
    assert [cache.get(n) for n in ("b", "c", "d", "big")] == [None, b"c", b"d", b"12345678"]
    assert cache.stats() == (3, 10)
    cache.put("huge", b"x" * 11, 60)
    assert cache.get("huge") is None and cache.stats() == (3, 10)


def test_two_stores_share_entries_and_prefixes_keep_apart(
    make_cache: MakeCache, redis_url: str
) -> None:
    make_cache().put("k", b"v", 60)
    assert make_cache().get("k") == b"v"
    assert make_cache(f"{redis_url}?prefix=other").get("k") is None


def test_the_async_methods_use_one_client_per_loop(make_cache: MakeCache) -> None:
    cache = make_cache()

    async def main() -> bytes | None:
        await cache.aput("k", b"async", 60)
        value = await cache.aget("k")
        await cache.aclose()
        return value

    assert asyncio.run(main()) == b"async"
    assert cache.get("k") == b"async"


def test_an_unreachable_redis_is_a_store_error() -> None:
    cache = RedisResponseCache(
        "redis://127.0.0.1:1/0?connect_timeout=0.2", CacheSettings(environ={})
    )
    with pytest.raises(StoreError, match="check that Redis is running"):
        cache.get("k")
    cache.close()


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def make_proxy(upstream: FakeOpenAI, tmp_path: Path) -> Iterator[Callable[[str], Proxy]]:
    made: list[Proxy] = []
    environ = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": upstream.base_url,
        "LLMPROXY_DATA_DIR": str(tmp_path),
    }

    def make(url: str) -> Proxy:
        proxy = Proxy(
            {"cache": {"url": url}}, history="memory://", ledger="memory://", environ=environ
        )
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


def _chats(upstream: FakeOpenAI) -> int:
    return sum(r.path.endswith("/chat/completions") for r in upstream.requests)


def test_two_proxies_share_replies_through_redis(
    make_proxy: Callable[[str], Proxy], upstream: FakeOpenAI, redis_url: str
) -> None:
    first = make_proxy(redis_url)
    assert not first.chat("hello redis", model=MODEL, cache=True).cache_hit
    second = make_proxy(redis_url)
    hit = second.chat("hello redis", model=MODEL, cache=True)
    assert hit.cache_hit and hit.text == "Echo: hello redis"
    events = list(second.stream("hello redis", model=MODEL, cache=True))
    assert "".join(e.text for e in events) == hit.text and events[-1].done
    assert _chats(upstream) == 1


def test_a_call_goes_on_uncached_when_redis_is_down(
    make_proxy: Callable[[str], Proxy], upstream: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = make_proxy("redis://127.0.0.1:1/0?connect_timeout=0.2")
    with caplog.at_level(logging.WARNING, logger="llmproxy"):
        assert proxy.chat("x", model=MODEL, cache=True).text == "Echo: x"
        assert not proxy.chat("x", model=MODEL, cache=True).cache_hit
    assert _chats(upstream) == 2
    assert "response cache lookup failed" in caplog.text
    assert "could not keep a reply in the response cache" in caplog.text
