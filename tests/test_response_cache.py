"""The response cache end to end: the real openai SDK against a fake upstream on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmproxy import (
    CallEvent,
    ConfigError,
    InvalidRequest,
    LLMBudget,
    ProviderBadRequest,
    Proxy,
    RequestsPerMinute,
)
from llmproxy.cache import CacheSettings, MemoryCache
from llmproxy.tools import ClientTool, tool
from llmproxy_testing._http import Fault, Reply
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.conftest import chat_requests

MakeProxy = Callable[..., Proxy]
MODEL = "openai/gpt-5.4-mini"


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 50_000.0

    def __call__(self) -> float:
        return self.now


def cached_proxy(make_proxy: MakeProxy, **config: Any) -> tuple[Proxy, list[CallEvent]]:
    events: list[CallEvent] = []
    proxy = make_proxy({"cache": {"url": "memory://", **config}}, observers=[events.append])
    return proxy, events


def test_a_repeated_call_is_answered_from_the_cache(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy, events = cached_proxy(make_proxy)
    first = proxy.chat("Hello there", model=MODEL, cache=True)
    second = proxy.chat("Hello there", model=MODEL, cache=True)
    assert len(chat_requests(upstream)) == 1
    assert second.text == first.text == "Echo: Hello there"
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert first.usage.total_tokens > 0
    assert second.usage.total_tokens == 0 and not second.usage.cost
    assert second.model == first.model and second.finish_reason == first.finish_reason
    assert [(e.cache_hit, e.attempts, e.outcome) for e in events] == [
        (False, 1, "ok"),
        (True, 0, "ok"),
    ]
    assert events[1].usage.total_tokens == 0


def test_calls_without_cache_neither_read_nor_fill_it(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy, _ = cached_proxy(make_proxy)
    proxy.chat("hi", model=MODEL)
    proxy.chat("hi", model=MODEL, cache=True)
    proxy.chat("hi", model=MODEL, cache=False)
    assert len(chat_requests(upstream)) == 3
    assert proxy.chat("hi", model=MODEL, cache=True).cache_hit


@pytest.mark.parametrize(
    "change",
    [
        {"model": "openai/gpt-5.4-nano"},
        {"system": "be brief"},
        {"temperature": 0.3},
        {"max_output_tokens": 77},
        {"top_p": 0.5},
        {"stop": ["\n"]},
        {"seed": 3},
        {"tools": [ClientTool("lookup", "find things")]},
        {"user": "someone"},
        {"key": "key-2"},
    ],
)
def test_each_part_of_the_request_is_part_of_the_key(
    make_proxy: MakeProxy, upstream: FakeOpenAI, change: dict[str, Any]
) -> None:
    proxy, _ = cached_proxy(make_proxy)
    base: dict[str, Any] = {"model": MODEL, "cache": True}
    proxy.chat("same words", **base)
    changed = proxy.chat("same words", **{**base, **change})
    assert not changed.cache_hit
    assert len(chat_requests(upstream)) == 2
    assert proxy.chat("same words", **{**base, **change}).cache_hit


def test_users_and_keys_are_isolated_unless_the_cache_is_shared(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy, _ = cached_proxy(make_proxy)
    proxy.chat("q", model=MODEL, user="alice", key="k1", cache=True)
    assert not proxy.chat("q", model=MODEL, user="bob", key="k1", cache=True).cache_hit
    assert not proxy.chat("q", model=MODEL, user="alice", key="k2", cache=True).cache_hit
    assert proxy.chat("q", model=MODEL, user="alice", key="k1", cache=True).cache_hit
    assert len(chat_requests(upstream)) == 3

    shared, _ = cached_proxy(make_proxy, scope="shared")
    shared.chat("q", model=MODEL, user="alice", key="k1", cache=True)
    assert shared.chat("q", model=MODEL, user="bob", key="k2", cache=True).cache_hit
    assert len(chat_requests(upstream)) == 4


def test_the_session_history_is_part_of_the_key_and_a_hit_is_stored(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy, _ = cached_proxy(make_proxy)
    proxy.chat("hello", model=MODEL, session_id="s1", cache=True)
    hit = proxy.chat("hello", model=MODEL, session_id="s2", cache=True)
    assert hit.cache_hit and hit.session_id == "s2"
    stored = proxy.history.load("s2")
    assert [(r.role, r.content) for r in stored] == [("user", "hello"), ("assistant", hit.text)]
    # The session now has history, so the same words are a new request.
    again = proxy.chat("hello", model=MODEL, session_id="s2", cache=True)
    assert not again.cache_hit
    assert len(chat_requests(upstream)) == 2


def test_a_hit_spends_no_budget_and_no_request(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    budget = LLMBudget(max_tokens=1_000)
    rpm = RequestsPerMinute(limit=1)
    proxy = make_proxy({"cache": {"url": "memory://"}}, budgets=[budget, rpm])
    proxy.chat("count me", model=MODEL, cache=True)
    before = _spent(proxy)
    assert [used for _, used in before] == [1.0, 11.0]  # one request, its tokens
    for _ in range(3):  # a second live call would be refused by the one-per-minute limit
        assert proxy.chat("count me", model=MODEL, cache=True).cache_hit
    assert _spent(proxy) == before
    assert len(chat_requests(upstream)) == 1


def _spent(proxy: Proxy) -> list[tuple[str, float]]:
    return sorted((u.claim.policy, u.used + u.reserved) for u in proxy.usage(model=MODEL))


def test_an_entry_expires_by_its_ttl(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    clock = Clock()
    proxy = make_proxy({"cache": {"ttl": 100}}, cache=MemoryCache(CacheSettings(clock=clock)))
    proxy.chat("a", model=MODEL, cache=True)  # the configured ttl: 100 s
    proxy.chat("b", model=MODEL, cache=10)
    clock.now += 50
    assert proxy.chat("a", model=MODEL, cache=True).cache_hit
    assert not proxy.chat("b", model=MODEL, cache=10).cache_hit  # expired, asked again
    clock.now += 51
    assert not proxy.chat("a", model=MODEL, cache=True).cache_hit
    assert len(chat_requests(upstream)) == 4


def test_the_cache_is_bounded_by_entries(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy, _ = cached_proxy(make_proxy, max_entries=2)
    for prompt in ("one", "two", "three"):
        proxy.chat(prompt, model=MODEL, cache=True)
    assert proxy.cache.stats()[0] == 2
    assert not proxy.chat("one", model=MODEL, cache=True).cache_hit  # the oldest went first
    assert proxy.chat("three", model=MODEL, cache=True).cache_hit


def test_a_stream_is_served_from_the_cache_as_a_stream(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy, events = cached_proxy(make_proxy)
    long = "word " * 40
    with proxy.stream(long, model=MODEL, cache=True, session_id="s") as live:
        live_events = list(live)
    with proxy.stream(long, model=MODEL, cache=True, session_id="t") as cached:
        cached_events = list(cached)
    assert len(chat_requests(upstream)) == 1
    text = "".join(e.text for e in live_events)
    assert "".join(e.text for e in cached_events) == text
    assert len(cached_events) > 2  # pieces, then the final event
    assert all(not e.done and e.text for e in cached_events[:-1])
    final = cached_events[-1]
    assert final.done and final.response is not None and final.response.cache_hit
    assert final.response.text == text and final.usage is not None
    assert final.usage.total_tokens == 0
    assert final.finish_reason == live_events[-1].finish_reason
    assert [e.cache_hit for e in events] == [False, True]
    assert [r.content for r in proxy.history.load("t")] == [long, text]
    # A whole call and a stream of one request share the entry.
    assert proxy.chat(long, model=MODEL, cache=True).cache_hit


def test_async_calls_and_streams_use_the_cache(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy, _ = cached_proxy(make_proxy)

    async def main() -> tuple[bool, str]:
        await proxy.achat("async", model=MODEL, cache=True)
        hit = await proxy.achat("async", model=MODEL, cache=True)
        pieces = [e.text async for e in proxy.astream("async", model=MODEL, cache=True)]
        return hit.cache_hit, "".join(pieces)

    hit, text = asyncio.run(main())
    assert hit and text == "Echo: async"
    assert len(chat_requests(upstream)) == 1


def test_failures_are_never_cached(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy, _ = cached_proxy(make_proxy)
    upstream.enqueue(Fault.status(400))
    with pytest.raises(ProviderBadRequest):
        proxy.chat("bad", model=MODEL, cache=True)
    assert not proxy.chat("bad", model=MODEL, cache=True).cache_hit
    assert proxy.cache.stats()[0] == 1


def test_a_stream_cut_short_is_not_cached(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy, _ = cached_proxy(make_proxy)
    with proxy.stream("many words " * 20, model=MODEL, cache=True) as stream:
        next(iter(stream))
    assert proxy.cache.stats()[0] == 0
    assert not proxy.chat("many words " * 20, model=MODEL, cache=True).cache_hit


def test_tool_rounds_run_by_the_proxy_are_not_cached_handed_back_calls_are(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    @tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    proxy, _ = cached_proxy(make_proxy)
    call = {"name": "weather", "arguments": {"city": "Hanoi"}, "id": "c1"}
    upstream.enqueue(Reply(tool_calls=[call]), Reply(text="It is sunny."))
    assert proxy.chat("weather?", model=MODEL, tools=[weather], cache=True).text == "It is sunny."
    assert proxy.cache.stats()[0] == 0

    upstream.enqueue(Reply(tool_calls=[call]))
    first = proxy.chat("weather?", model=MODEL, tools=[weather], run_tools=False, cache=True)
    assert first.message.tool_calls
    again = proxy.chat("weather?", model=MODEL, tools=[weather], run_tools=False, cache=True)
    assert again.cache_hit and again.message.tool_calls == first.message.tool_calls
    assert again.finish_reason == "tool_calls"


def test_a_reply_from_a_fallback_model_is_not_cached(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy, _ = cached_proxy(make_proxy)
    upstream.enqueue(*[Fault.status(503)] * 3)
    r = proxy.chat("x", model=MODEL, fallbacks=["openai/gpt-5.4-nano"], cache=True)
    assert r.model == "gpt-5.4-nano"
    assert proxy.cache.stats()[0] == 0


def test_a_sqlite_cache_is_shared_by_two_proxies(
    make_proxy: MakeProxy, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    make_proxy({"cache": {"url": url}}).chat("shared", model=MODEL, cache=True)
    assert make_proxy({"cache": {"url": url}}).chat("shared", model=MODEL, cache=True).cache_hit
    assert len(chat_requests(upstream)) == 1


def test_the_cache_url_comes_from_the_environment(
    make_proxy: MakeProxy, env: dict[str, str], upstream: FakeOpenAI
) -> None:
    proxy = Proxy.from_env({**env, "LLMPROXY_CACHE_URL": "memory://"})
    try:
        proxy.chat("env", model=MODEL, cache=True)
        assert proxy.chat("env", model=MODEL, cache=True).cache_hit
    finally:
        proxy.close()


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "yes", [1]])
def test_a_bad_cache_option_is_refused_by_name(make_proxy: MakeProxy, bad: Any) -> None:
    proxy, _ = cached_proxy(make_proxy)
    with pytest.raises(InvalidRequest, match="cache must be True, False or a time to live") as e:
        proxy.chat("x", model=MODEL, cache=bad)
    assert e.value.field == "cache"


def test_asking_for_the_cache_without_one_says_how_to_configure_it(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy()
    with pytest.raises(ConfigError, match="LLMPROXY_CACHE_URL"):
        proxy.chat("x", model=MODEL, cache=True)
    assert chat_requests(upstream) == []
    proxy.chat("x", model=MODEL, cache=False)  # off needs no cache


def test_bad_cache_configuration_is_refused(make_proxy: MakeProxy) -> None:
    with pytest.raises(ConfigError, match="scope"):
        make_proxy({"cache": {"url": "memory://", "scope": "everyone"}})
    with pytest.raises(ConfigError, match="ttl"):
        make_proxy({"cache": {"url": "memory://", "ttl": 0}})
    with pytest.raises(ConfigError, match="nosuch://"):
        make_proxy({"cache": {"url": "nosuch://x"}})


def test_a_hit_is_parsed_against_the_calls_schema(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    proxy, _ = cached_proxy(make_proxy)
    upstream.enqueue(Reply(text='{"name": "Ada"}'))
    assert proxy.chat("who?", model=MODEL, schema=schema, cache=True).parsed == {"name": "Ada"}
    hit = proxy.chat("who?", model=MODEL, schema=schema, cache=True)
    assert hit.cache_hit and hit.parsed == {"name": "Ada"}
    assert not proxy.chat("who?", model=MODEL, cache=True).cache_hit  # no schema: another key
