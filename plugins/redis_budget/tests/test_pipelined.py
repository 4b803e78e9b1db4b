"""A Redis ledger and Redis history on one server: the last settle rides in the history write.

Round trips are counted on the server (``INFO stats`` ``total_reads_processed``): a call costs
one pipeline holding the history load and the reserve, and one write holding the settle and
the append (``test_round_trips.py`` counts them on the client and lists the commands).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from llmproxy import LLMBudget, Proxy
from llmproxy.budget.base import Claim
from llmproxy.budget.policy import CallScope
from llmproxy.budget.routed import shared_ledger
from llmproxy.pipelining import shared
from llmproxy_redis_budget import RedisLedger
from llmproxy_redis_history import RedisHistoryStore
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.redis_server import RedisServer

KEY = "sk-test-redis-pipelined-0123456789"
MODEL = "openai/gpt-5.4-mini"


class Reads:
    """Requests the server read since the last call (the measuring INFO excluded)."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self.start = self._reads()

    def _reads(self) -> int:
        return int(self._client.info("stats")["total_reads_processed"])

    def __call__(self) -> int:
        now = self._reads()
        count, self.start = now - self.start - 1, now
        return count

    def close(self) -> None:
        self._client.close()


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
def reads(redis_url: str) -> Iterator[Reads]:
    counter = Reads(redis_url)
    yield counter
    counter.close()


BUDGET = LLMBudget(max_tokens=100_000, name="pipelined")


def _proxy(upstream: FakeOpenAI, history: str, ledger: str, data_dir: Path | None = None) -> Proxy:
    environ = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.base_url}
    if data_dir is not None:
        environ["LLMPROXY_DATA_DIR"] = str(data_dir)
    return Proxy(
        {"history_url": history, "ledger_url": ledger, "default_model": MODEL},
        budgets=[BUDGET],
        environ=environ,
    )


def _claim() -> Claim:
    return BUDGET.claim(CallScope(model="gpt-5.4-mini", provider="openai"))


def _used(proxy: Proxy) -> tuple[float, float]:
    (state,) = proxy.ledger.usage([_claim()])
    return state.used, state.reserved


def test_one_write_for_settle_and_history(
    upstream: FakeOpenAI, redis_url: str, reads: Reads
) -> None:
    proxy = _proxy(upstream, redis_url, redis_url)
    try:
        history: object = proxy.history
        assert shared(proxy.ledger, history) is history
        for _ in range(2):  # a new session, then a cached one: every connection is open
            proxy.chat("warm up", session_id="warm")
        spent = proxy.ledger.usage([_claim()])[0].used
        for index in range(4):
            reads()
            reply = proxy.chat("Hello there", session_id=f"s{index}")
            trips = reads()
            spent += reply.usage.input_tokens + reply.usage.output_tokens
            if index:  # the first call also connects and loads scripts
                assert trips == 2, trips  # load + reserve, settle + append
        reads()
        proxy.chat("And again", session_id="s3")  # the session is cached: no load
        assert reads() == 2
        assert _used(proxy)[1] == 0
        history = proxy.history.load("s3")
        assert [r.role for r in history] == ["user", "assistant"] * 2
        assert _used(proxy)[0] > spent
    finally:
        proxy.close()


async def test_one_write_async(upstream: FakeOpenAI, redis_url: str, reads: Reads) -> None:
    proxy = _proxy(upstream, redis_url, redis_url)
    try:
        spent = 0
        for index in range(4):
            reads()
            reply = await proxy.achat("Hello there", session_id=f"a{index}")
            trips = reads()
            spent += reply.usage.input_tokens + reply.usage.output_tokens
            if index:
                assert trips == 2, trips
        (state,) = await proxy.ledger.ausage([_claim()])
        assert (state.used, state.reserved) == (spent, 0)
        history = await proxy.history.aload("a3")
        assert [r.role for r in history] == ["user", "assistant"]
    finally:
        await proxy.aclose()


def test_streams_share_the_write(upstream: FakeOpenAI, redis_url: str, reads: Reads) -> None:
    proxy = _proxy(upstream, redis_url, redis_url)
    try:
        proxy.chat("warm up", session_id="warm")
        for index in range(2):
            reads()
            with proxy.stream("Hello there", session_id=f"t{index}") as stream:
                text = stream.text()
            assert reads() == 2
            assert proxy.history.load(f"t{index}")[-1].content == text
        assert _used(proxy)[1] == 0
    finally:
        proxy.close()


def test_budget_alone_is_two(upstream: FakeOpenAI, redis_url: str, reads: Reads) -> None:
    proxy = _proxy(upstream, "memory://", redis_url)
    try:
        assert shared(proxy.ledger, proxy.history) is None
        proxy.chat("warm up", session_id="w")
        reads()
        proxy.chat("Hello there", session_id="w2")
        assert reads() == 2
    finally:
        proxy.close()


def test_other_database_is_not_shared(upstream: FakeOpenAI, redis_url: str) -> None:
    other = redis_url.rsplit("/", 1)[0] + "/3"
    proxy = _proxy(upstream, other, redis_url)
    try:
        assert shared(proxy.ledger, proxy.history) is None
        proxy.chat("Hello there", session_id="x")
        assert _used(proxy)[1] == 0
        assert len(proxy.history.load("x")) == 2
    finally:
        proxy.close()


def test_noscript_falls_back(upstream: FakeOpenAI, redis_url: str, raw: Any) -> None:
    proxy = _proxy(upstream, redis_url, redis_url)
    try:
        proxy.chat("warm up", session_id="n0")
        # The settle is queued after the reserve: flush the scripts between them.
        ledger = shared_ledger(proxy.ledger)
        assert isinstance(ledger, RedisLedger)
        queue = ledger.queue_settle

        def flushing(*args: Any, **kwargs: Any) -> Any:
            raw.script_flush()
            return queue(*args, **kwargs)

        ledger.queue_settle = flushing  # type: ignore[method-assign]
        reply = proxy.chat("Hello there", session_id="n1")
        assert len(proxy.history.load("n1")) == 2
        used, reserved = _used(proxy)
        assert reserved == 0 and used >= reply.usage.total_tokens
    finally:
        proxy.close()


def _down_proxy(
    upstream: FakeOpenAI, redis_url: str, history: str, ledger: str, data_dir: Path | None = None
) -> tuple[Proxy, RedisHistoryStore, RedisLedger]:
    proxy = _proxy(upstream, redis_url + history, redis_url + ledger, data_dir)
    store, ledger_obj = proxy.history, shared_ledger(proxy.ledger)
    assert isinstance(store, RedisHistoryStore) and isinstance(ledger_obj, RedisLedger)
    proxy.chat("warm up", session_id="d0")
    return proxy, store, ledger_obj


def _break_after_reserve(proxy: Proxy, server: RedisServer) -> None:
    """Stop Redis once the reserve is done, so only the shared write meets the outage."""
    ledger = shared_ledger(proxy.ledger)
    assert isinstance(ledger, RedisLedger)
    queue = ledger.queue_settle

    def stopping(*args: Any, **kwargs: Any) -> Any:
        queued = queue(*args, **kwargs)
        server.stop()
        return queued

    ledger.queue_settle = stopping  # type: ignore[method-assign]


def test_down_fail_open_skip_goes_on(
    upstream: FakeOpenAI, redis_url: str, redis_server: RedisServer, caplog: Any
) -> None:
    proxy, _store, ledger = _down_proxy(
        upstream, redis_url, "?on_unavailable=skip", "?fail=open&socket_timeout=0.5"
    )
    try:
        _break_after_reserve(proxy, redis_server)
        with caplog.at_level(logging.WARNING):
            reply = proxy.chat("Hello there", session_id="d1")
        assert reply.text
        assert "going on without history" in caplog.text
        assert ledger.breaker.failures >= 1
    finally:
        proxy.close()
        redis_server.restart()


def test_down_fail_closed_keeps_the_answer_and_journals_the_writes(
    upstream: FakeOpenAI, redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    proxy, _store, _ledger = _down_proxy(
        upstream,
        redis_url,
        "?on_unavailable=skip",
        "?fail=closed&socket_timeout=0.5",
        tmp_path,
    )
    try:
        _break_after_reserve(proxy, redis_server)
        # The upstream answered and was paid: the answer is kept, the settle and the
        # history write it rode in wait in the journal for Redis.
        reply = proxy.chat("Hello there", session_id="d1")
        assert reply.text
        pending = _journaled(tmp_path, redis_url)
        assert sorted((p.settle is not None, len(p.records)) for p in pending) == [
            (False, 2),  # the history write: the user's message and the answer
            (True, 0),  # the settle
        ]
    finally:
        proxy.close()
        redis_server.restart()


def _journaled(data_dir: Path, redis_url: str) -> list[Any]:
    from llmproxy.journal import Journal

    journal = Journal.in_data_dir({"LLMPROXY_DATA_DIR": str(data_dir)})
    try:
        ledger_url = redis_url + "?fail=closed&socket_timeout=0.5"
        history_url = redis_url + "?on_unavailable=skip"
        return journal.pending(ledger_url=ledger_url, history_url=None) + journal.pending(
            ledger_url=None, history_url=history_url
        )
    finally:
        journal.close()


async def test_down_async_history_is_journaled(
    upstream: FakeOpenAI, redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    proxy, _store, ledger = _down_proxy(
        upstream, redis_url, "?socket_timeout=0.5", "?fail=open&socket_timeout=0.5", tmp_path
    )
    try:
        await proxy.achat("warm up", session_id="d0")
        _break_after_reserve(proxy, redis_server)
        reply = await proxy.achat("Hello there", session_id="d1")
        assert reply.text
        assert ledger.breaker.failures >= 1
        assert len(proxy._journal_open()) >= 1
    finally:
        await proxy.aclose()
        redis_server.restart()
