"""Redis down or frozen: calls fail fast (or go on without history), nothing is lost or doubled,
and the store picks up where it left once Redis is back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
import redis

from llmproxy import Proxy
from llmproxy.errors import StoreError
from llmproxy.history.base import HistoryRecord
from llmproxy.journal import Journal, replay
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


def test_a_replayed_append_that_had_landed_is_stored_once(
    make_store: Make, redis_server: RedisServer, raw: redis.Redis, tmp_path: Path
) -> None:
    """The SIGSTOP case with the journal: the append timed out, Redis applied it on SIGCONT,
    and the journal's replay of the same records (same ids) stores nothing twice."""
    store = make_store(socket_timeout=0.3)
    url = store.settings.safe_url
    records = [attrs.evolve(record, id=uuid.uuid4().hex) for record in exchange("s", 1)]
    assert contents(store.load("s")) == []  # cached as empty: the cache must stay right too
    with redis_server.frozen(), Journal(tmp_path / "journal.db") as journal:
        with pytest.raises(RedisUnavailable, match="may or may not have been stored"):
            store.append(records)
        journal.add(
            ledger_url=None, history_url=url, reservation=None, settle=None, records=records
        )
    with Journal(tmp_path / "journal.db") as journal:  # a restarted process replays it
        assert replay(journal, ledger=None, history=store, ledger_url=None, history_url=url) == 1
        assert len(journal) == 0
    assert store.load("s") == records
    assert make_store(cache=False).load("s") == records
    store.append(records)  # and once more, with the cache warm
    assert store.load("s") == records
    # The seed's read-back: each message once in the global list, under its record id.
    keys: list[bytes] = raw.lrange("llm_proxy:llm_proxy_history_key_list", 0, -1)  # type: ignore[assignment]
    assert [raw.hgetall(key)[b"content"] for key in keys] == [b"q1", b"a1"]
    assert [key.rsplit(b":", 1)[1].decode() for key in keys] == [r.id for r in records]


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
