"""Redis down or frozen: calls fail fast (or go on without history), nothing is lost or doubled,
and the store picks up where it left once Redis is back."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from llmproxy import Proxy
from llmproxy.errors import StoreError
from llmproxy.history.base import HistoryRecord
from llmproxy.types import Message
from llmproxy_redis_history import RedisHistoryStore, RedisUnavailable
from llmproxy_testing.redis_server import RedisServer, free_port

Make = Callable[..., RedisHistoryStore]


def exchange(session: str, n: int) -> list[HistoryRecord]:
    return [
        HistoryRecord(session, Message("user", f"q{n}"), created_at=float(n)),
        HistoryRecord(session, Message("assistant", f"a{n}"), created_at=float(n)),
    ]


def contents(records: list[HistoryRecord]) -> list[str]:
    return [r.content for r in records]


@pytest.fixture
def nothing_listening() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_unreachable_raises_quickly(nothing_listening: str) -> None:
    store = RedisHistoryStore(nothing_listening, environ={}, connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match=r"127\.0\.0\.1.*running and reachable"):
        store.load("s")
    with pytest.raises(RedisUnavailable):
        store.append(exchange("s", 1))
    with pytest.raises(StoreError):
        store.sessions()
    assert time.monotonic() - started < 5
    store.close()


async def test_unreachable_skip_goes_on_without_history(
    nothing_listening: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisHistoryStore(nothing_listening + "?on_unavailable=skip", environ={})
    assert store.load("s") == []
    store.append(exchange("s", 1))
    assert await store.aload("s") == []
    await store.aappend(exchange("s", 1))
    assert "going on without history" in caplog.text
    with pytest.raises(RedisUnavailable):  # listing and deleting always say so
        store.delete("s")
    await store.aclose()


def test_timeouts_never_hang_and_never_double_an_exchange(
    make_store: Make, redis_server: RedisServer
) -> None:
    store = make_store(socket_timeout=0.3)
    store.append(exchange("s", 1))
    with redis_server.frozen():
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match="may or may not have been stored"):
            store.append(exchange("s", 2))
        with pytest.raises(RedisUnavailable, match=r"no answer within 0\.3s"):
            store.load("s")
        assert time.monotonic() - started < 1.0
    # The frozen server still ran the append it had received: stored once, never twice.
    assert contents(make_store(cache=False).load("s")) == ["q1", "a1", "q2", "a2"]
    assert contents(store.load("s")) == ["q1", "a1", "q2", "a2"]
    store.append(exchange("s", 3))
    assert len(store.load("s")) == 6


async def test_async_timeout_and_skip(make_store: Make, redis_server: RedisServer) -> None:
    store = make_store(socket_timeout=0.3, on_unavailable="skip", cache=False)
    await store.aappend(exchange("s", 1))
    with redis_server.frozen():
        started = time.monotonic()
        assert await store.aload("s") == []
        assert time.monotonic() - started < 0.9
    assert contents(await store.aload("s")) == ["q1", "a1"]
    await store.aclose()


def test_a_broken_connection_is_replaced_without_losing_or_doubling(
    make_store: Make, raw: redis.Redis
) -> None:
    store = make_store()
    store.append(exchange("s", 1))
    assert raw.client_kill_filter(_type="normal", skipme=True) >= 1
    store.append(exchange("s", 2))  # the pool notices the dead socket and reconnects
    assert contents(store.load("s")) == ["q1", "a1", "q2", "a2"]
    assert contents(make_store(cache=False).load("s")) == ["q1", "a1", "q2", "a2"]


@pytest.fixture
def persistent_server() -> Iterator[RedisServer]:
    with RedisServer(args=["--appendonly", "yes", "--appendfsync", "always"]) as server:
        yield server


def test_server_down_then_back(persistent_server: RedisServer) -> None:
    url = persistent_server.url + "?connect_timeout=0.5&socket_timeout=0.5"
    store = RedisHistoryStore(url, environ={})
    skipping = RedisHistoryStore(url + "&on_unavailable=skip", environ={})
    store.load("s")
    store.append(exchange("s", 1))
    store.append(exchange("s", 2))
    assert len(store.load("s")) == 4
    persistent_server.stop()
    with pytest.raises(RedisUnavailable):
        store.load("s")  # the cache is not trusted once tracking is lost
    with pytest.raises(RedisUnavailable):
        store.append(exchange("s", 3))
    skipping.append(exchange("s", 3))
    assert skipping.load("s") == []
    persistent_server.restart()
    # Back: what was stored is there once, what failed is not, and writes go on.
    assert contents(store.load("s")) == ["q1", "a1", "q2", "a2"]
    store.append(exchange("s", 4))
    assert contents(skipping.load("s")) == ["q1", "a1", "q2", "a2", "q4", "a4"]
    assert contents(store.load("s")) == ["q1", "a1", "q2", "a2", "q4", "a4"]
    store.close()
    skipping.close()


def test_proxy_goes_on_without_history_when_configured(
    nothing_listening: str, tmp_path: object
) -> None:
    from llmproxy_testing.fake_openai import FakeOpenAI

    with FakeOpenAI(api_key="sk-test-key-0123456789") as upstream:
        env = {
            "OPENAI_API_KEY": "sk-test-key-0123456789",
            "OPENAI_BASE_URL": upstream.base_url,
            "LLMPROXY_HISTORY_URL": nothing_listening + "?on_unavailable=skip",
            "LLMPROXY_LEDGER_URL": "memory://",
        }
        with Proxy.from_env(env) as proxy:
            assert proxy.chat("hi", session_id="s").text == "Echo: hi"
        env["LLMPROXY_HISTORY_URL"] = nothing_listening
        with Proxy.from_env(env) as proxy, pytest.raises(StoreError):
            proxy.chat("hi", session_id="s")
