"""The request flow end to end: the real openai SDK against a fake upstream on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmproxy import (
    BudgetExceeded,
    CallEvent,
    ConfigError,
    InvalidRequest,
    LLMBudget,
    LLMMessageHandler,
    Message,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderUnavailable,
    Proxy,
    RateLimited,
    RequestsPerMinute,
    StreamInterrupted,
)
from llmproxy.history.base import HistoryRecord
from llmproxy_openai import tokenizer
from llmproxy_testing._http import Fault, Reply
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.conftest import API_KEY, chat_requests

MakeProxy = Callable[..., Proxy]


def test_chat_returns_text_usage_and_model(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy()
    r = proxy.chat("Hello there", model="openai/gpt-5.4-mini")
    assert r.text == "Echo: Hello there"
    assert str(r) == r.text
    assert r.provider == "openai" and r.model == "gpt-5.4-mini"
    assert r.finish_reason == "stop"
    # The fake counts whitespace words: 2 words + 3 per message + 3 priming.
    assert (r.usage.input_tokens, r.usage.output_tokens) == (8, 3)
    assert r.usage.total_tokens == 11
    assert r.latency > 0
    body = chat_requests(upstream)[0]
    assert body["messages"] == [{"role": "user", "content": "Hello there"}]
    assert "max_completion_tokens" not in body  # no budget, no cap asked: nothing is invented


def test_a_prompt_naming_a_special_token_is_sent_and_budgeted(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    # Counting the prompt for the reservation treats "<|endoftext|>" as text (the tokenizer's
    # default refuses it, which made such a prompt fail before any call).
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000)])
    prompt = "What does <|endoftext|> mean in a prompt?"
    r = proxy.chat(prompt, model="openai/gpt-4o-mini")
    assert r.text == f"Echo: {prompt}"
    assert chat_requests(upstream)[0]["messages"][0]["content"] == prompt


def test_system_prompt_messages_and_extras(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy()
    proxy.chat(
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            Message("user", "c"),
        ],
        system="be brief",
        temperature=0.2,
        max_output_tokens=50,
        top_p=0.5,
    )
    body = chat_requests(upstream)[0]
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "be brief"
    assert body["temperature"] == 0.2
    assert body["top_p"] == 0.5
    assert body["max_completion_tokens"] == 50


def test_default_model_and_aliases(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy(
        {"default_model": "openai/gpt-4.1-mini", "aliases": {"fast": "openai/gpt-5.4-nano"}}
    )
    proxy.chat("x")
    proxy.chat("x", model="fast")
    proxy.chat("x", model="gpt-5.4")  # a bare name goes to the default model's provider
    proxy.chat("x", model="openai/a-model-released-tomorrow")  # names pass through
    assert [b["model"] for b in chat_requests(upstream)] == [
        "gpt-4.1-mini",
        "gpt-5.4-nano",
        "gpt-5.4",
        "a-model-released-tomorrow",
    ]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [{"role": "wizard", "content": "x"}]}, "prompt[0].role"),
        ({"prompt": [{"content": "x"}]}, "prompt[0].role"),
        ({"prompt": "x", "model": "nosuch/model"}, "model"),
        ({"prompt": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"prompt": "x", "max_output_tokens": -5}, "max_output_tokens"),
        ({"prompt": "x", "session_id": ""}, "session_id"),
    ],
)
def test_bad_input_is_a_typed_error_before_any_upstream_call(
    make_proxy: MakeProxy, upstream: FakeOpenAI, kwargs: dict[str, Any], field: str
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    prompt = kwargs.pop("prompt")
    with pytest.raises(InvalidRequest) as info:
        proxy.chat(prompt, **kwargs)
    assert info.value.field == field
    assert upstream.requests == []
    assert proxy.usage()[0].used == 0 and proxy.usage()[0].reserved == 0


def test_wrong_role_on_message_object() -> None:
    with pytest.raises(InvalidRequest) as info:
        Message("robot", "x")  # type: ignore[arg-type]
    assert info.value.field == "role"


def test_negative_budget_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        LLMBudget(max_tokens=-1)
    assert info.value.path == "max_tokens"
    with pytest.raises(ConfigError) as info:
        Proxy({"budgets": [{"kind": "tokens", "max_tokens": -3}]}, environ={})
    assert "max_tokens" in str(info.value)


def test_unknown_provider_error_lists_installed(make_proxy: MakeProxy) -> None:
    with pytest.raises(InvalidRequest, match=r"installed: .*openai"):
        make_proxy().chat("x", model="nosuch/m")


# -- budgets --------------------------------------------------------------------------------------


def test_budget_caps_output_and_settles_real_usage(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    budget = LLMBudget(max_tokens=200)
    proxy = make_proxy(budgets=[budget])
    call = proxy.chat("Hello there", max_output_tokens=1000)
    body = chat_requests(upstream)[0]
    provider = proxy.provider("openai")
    count = provider.count_tokens([Message("user", "Hello there")], "gpt-5.4-mini")
    margin = tokenizer.input_margin("gpt-5.4-mini")
    # The cap sent upstream is what the budget has left after the input estimate: the count
    # plus the margin the provider declares for what OpenAI may bill beyond it.
    assert body["max_completion_tokens"] == 200 - margin.reserve(count, messages=1)
    assert margin.reserve(count, messages=1) > count
    [usage] = proxy.usage()
    assert usage.used == call.usage.total_tokens
    assert usage.reserved == 0
    assert usage.remaining == 200 - call.usage.total_tokens


def test_cap_never_exceeds_the_model_limit(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000_000)])
    proxy.chat("x", model="openai/gpt-4o-mini", max_output_tokens=1_000_000)
    proxy.chat("x", model="openai/gpt-4o-mini")  # no cap asked: the configured default
    proxy.chat("x", model="openai/gpt-4o-mini", max_output_tokens=100)
    caps = [b["max_completion_tokens"] for b in chat_requests(upstream)]
    assert caps == [16_384, 4096, 100]


def test_budget_exceeded_before_upstream(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=30, name="tiny")])
    proxy.chat("one two three")
    used = proxy.usage()[0].used
    with pytest.raises(BudgetExceeded) as info:
        proxy.chat("this prompt is far too long for what is left of the tiny budget")
    err = info.value
    assert err.policy == "tiny" and err.scope == "global" and err.limit == 30
    assert err.used == used and err.remaining == 30 - used
    assert "tiny" in str(err)
    assert len(chat_requests(upstream)) == 1


def test_per_user_budgets_are_separate(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=25, scope="user")])
    proxy.chat("hello", user="alice")
    with pytest.raises(BudgetExceeded) as info:
        proxy.chat("hello again, alice; this prompt needs more tokens than remain", user="alice")
    assert info.value.scope == "user:alice"
    proxy.chat("hello", user="bob")


def test_budgets_from_config_and_env(env: dict[str, str], upstream: FakeOpenAI) -> None:
    env = {
        **env,
        "LLMPROXY_MAX_TOKENS": "20",
        "LLMPROXY_HISTORY_URL": "memory://",
        "LLMPROXY_LEDGER_URL": "memory://",
    }
    proxy = Proxy.from_env(env)
    assert [p.name for p in proxy.policies] == ["tokens-global"]  # named after kind and scope
    with pytest.raises(BudgetExceeded):
        proxy.chat("a prompt with many words in it, too many for twenty tokens of budget here")
    assert upstream.requests == []


def test_requests_per_minute(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy(budgets=[RequestsPerMinute(limit=2)])
    proxy.chat("a")
    proxy.chat("b")
    with pytest.raises(RateLimited) as info:
        proxy.chat("c")
    assert 0 < info.value.retry_after <= 60
    assert len(chat_requests(upstream)) == 2


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prompts=st.lists(
        st.tuples(
            st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40).filter(
                str.strip
            ),
            st.integers(1, 60),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_budget_never_goes_negative(make_proxy: MakeProxy, prompts: list[tuple[str, int]]) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=120)])
    for prompt, cap in prompts:
        with contextlib.suppress(BudgetExceeded):
            proxy.chat(prompt, max_output_tokens=cap)
        [usage] = proxy.usage()
        assert usage.reserved == 0
        assert usage.used <= 120
        assert usage.remaining >= 0


# -- retries ---------------------------------------------------------------------------------------


def test_retry_after_429_then_success(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    events: list[CallEvent] = []
    proxy = make_proxy(
        budgets=[LLMBudget(max_tokens=10_000), RequestsPerMinute(limit=100)],
        observers=[events.append],
    )
    upstream.enqueue(Fault.status(429, retry_after=0.02))
    r = proxy.chat("hi")
    assert r.text == "Echo: hi"
    assert len(chat_requests(upstream)) == 2
    tokens, rpm = proxy.usage()
    assert tokens.used == r.usage.total_tokens and tokens.reserved == 0
    assert rpm.used == 2  # every attempt counts as a request
    assert events[-1].attempts == 2 and events[-1].outcome == "ok"


def test_retries_exhausted_release_the_budget(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    events: list[CallEvent] = []
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000)], observers=[events.append])
    for _ in range(3):
        upstream.enqueue(Fault.status(500))
    with pytest.raises(ProviderUnavailable) as info:
        proxy.chat("hi")
    assert info.value.status == 500
    assert len(chat_requests(upstream)) == 3  # max_attempts
    [usage] = proxy.usage()
    assert usage.used == 0 and usage.reserved == 0
    assert [e.outcome for e in events] == ["error"]
    assert isinstance(events[0].error, ProviderUnavailable)


def test_bad_request_is_not_retried(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy()
    upstream.enqueue(Fault.status(400, message="bad model"))
    with pytest.raises(ProviderBadRequest, match="bad model"):
        proxy.chat("hi")
    assert len(chat_requests(upstream)) == 1


def test_deadline_stops_retries(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy({"retry": {"max_attempts": 10, "initial_backoff": 0.001, "deadline": 0.5}})
    upstream.enqueue(Fault.status(429, retry_after=5))
    with pytest.raises(Exception, match="429"):
        proxy.chat("hi")
    assert len(chat_requests(upstream)) == 1  # waiting 5 s would pass the 0.5 s deadline


async def test_async_retry(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy()
    upstream.enqueue(Fault.status(503))
    r = await proxy.achat("hi")
    assert r.text == "Echo: hi"
    assert len(chat_requests(upstream)) == 2


# -- history ---------------------------------------------------------------------------------------


def test_session_history_is_sent_and_stored(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy()
    proxy.chat("first", session_id="s1", system="sys")
    proxy.chat("second", session_id="s1", system="sys")
    proxy.chat("other", session_id="s2")
    second = chat_requests(upstream)[1]
    assert [(m["role"], m["content"]) for m in second["messages"]] == [
        ("system", "sys"),
        ("user", "first"),
        ("assistant", "Echo: first"),
        ("user", "second"),
    ]
    records = proxy.history.load("s1")
    assert [(r.role, r.content) for r in records] == [
        ("user", "first"),
        ("assistant", "Echo: first"),
        ("user", "second"),
        ("assistant", "Echo: second"),
    ]
    assert records[1].model == "gpt-5.4-mini" and records[1].provider == "openai"
    assert records[1].output_tokens == 2
    assert [r.content for r in proxy.history.load("s2")] == ["other", "Echo: other"]


def test_use_history_false_neither_reads_nor_writes(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy()
    proxy.chat("first", session_id="s")
    proxy.chat("second", session_id="s", use_history=False)
    assert len(chat_requests(upstream)[1]["messages"]) == 1
    assert len(proxy.history.load("s")) == 2


def test_failed_call_writes_nothing(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy()
    upstream.enqueue(Fault.status(400))
    with pytest.raises(ProviderBadRequest):
        proxy.chat("x", session_id="s")
    assert proxy.history.load("s") == []


def test_message_handler_receives_each_message(make_proxy: MakeProxy) -> None:
    pushed: list[HistoryRecord] = []

    class Handler(LLMMessageHandler):
        def push_message(self, message: HistoryRecord) -> None:
            pushed.append(message)

    proxy = make_proxy(message_handler=Handler())
    proxy.chat("hello", session_id="s")
    assert [(m.role, m.content, m.session_id) for m in pushed] == [
        ("user", "hello", "s"),
        ("assistant", "Echo: hello", "s"),
    ]


def test_embedded_sqlite_default_keeps_history_across_proxies(
    env: dict[str, str], upstream: FakeOpenAI
) -> None:
    first = Proxy(environ=env)
    first.chat("remember me", session_id="s")
    first.close()
    second = Proxy(environ=env)
    second.chat("again", session_id="s")
    assert [m["content"] for m in chat_requests(upstream)[1]["messages"]] == [
        "remember me",
        "Echo: remember me",
        "again",
    ]
    second.close()


# -- streaming -------------------------------------------------------------------------------------


def test_stream_events_usage_and_history(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    events = list(proxy.stream("tell me a story", session_id="s"))
    assert "".join(e.text for e in events) == "Echo: tell me a story"
    last = events[-1]
    assert last.done and last.usage is not None and last.response is not None
    assert last.response.text == "Echo: tell me a story"
    assert last.usage.output_tokens == 5 and not last.usage.estimated
    assert chat_requests(upstream)[0]["stream_options"] == {"include_usage": True}
    [usage] = proxy.usage()
    assert usage.used == last.usage.total_tokens and usage.reserved == 0
    assert proxy.history.load("s")[-1].content == "Echo: tell me a story"


def test_only_streams_have_a_time_to_first_token(make_proxy: MakeProxy) -> None:
    events: list[CallEvent] = []
    proxy = make_proxy(observers=[events.append])
    proxy.chat("whole")
    assert proxy.stream("streamed").text() == "Echo: streamed"
    whole, streamed = events
    assert whole.ttft is None
    assert streamed.ttft is not None and 0 < streamed.ttft <= streamed.latency


async def test_astream(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    texts = [e.text async for e in proxy.astream("async story", session_id="s")]
    assert "".join(texts) == "Echo: async story"
    assert (await proxy.history.aload("s"))[-1].content == "Echo: async story"
    assert proxy.usage()[0].reserved == 0


def test_stream_retries_before_first_chunk(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy()
    upstream.enqueue(Fault.status(429, retry_after=0.01))
    assert proxy.stream("x").text() == "Echo: x"
    assert len(chat_requests(upstream)) == 2


def test_broken_stream_is_stored_interrupted_and_counted(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    events: list[CallEvent] = []
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)], observers=[events.append])
    upstream.enqueue(Reply(text="one two three four five six"))
    upstream.enqueue(Fault.drop_after(2))
    received: list[str] = []
    proxy.chat("warm up")
    stream = proxy.stream("go", session_id="s")
    with pytest.raises(StreamInterrupted):
        received.extend(event.text for event in stream)
    assert "".join(received) == "Echo: go"[: len("".join(received))] and received
    stored = proxy.history.load("s")
    assert [r.role for r in stored] == ["user", "assistant"]
    assert stored[1].message.interrupted and stored[1].content == "".join(received)
    [usage] = proxy.usage()
    assert usage.reserved == 0
    assert events[-1].outcome == "interrupted" and events[-1].usage.estimated
    assert usage.used == events[0].usage.total_tokens + events[-1].usage.total_tokens
    assert len(chat_requests(upstream)) == 2  # not retried once text was delivered


def _failing_count(*_args: Any) -> int:
    raise ValueError("a plugin's tokenizer bug")


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_provider_that_cannot_count_leaves_no_hold_on_a_broken_stream(
    make_proxy: MakeProxy,
    upstream: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    # A stream that breaks arrives without usage, so the Proxy counts what arrived. A provider
    # plugin whose counting raised used to leave the call's reservation held until its lease
    # ran out (and the caller got the plugin's bare ValueError): the byte count, an upper
    # bound, is used instead, and the call is settled, stored and reported as interrupted.
    from llmproxy.tokens import text_upper_bound

    events: list[CallEvent] = []
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=100_000)], observers=[events.append])
    proxy.chat("warm up")
    monkeypatch.setattr(proxy.provider("openai"), "count_text_tokens", _failing_count)
    upstream.enqueue(Fault.drop_after(2))
    received: list[str] = []

    async def read() -> None:
        if mode == "sync":
            received.extend(event.text for event in proxy.stream("go", session_id="s"))
            return
        async for event in proxy.astream("go", session_id="s"):
            received.append(event.text)

    with pytest.raises(StreamInterrupted):
        await read()
    assert received  # part of the answer arrived before the break
    [usage] = proxy.usage()
    assert usage.reserved == 0
    last = events[-1]
    assert last.outcome == "interrupted" and last.usage.estimated
    assert last.usage.output_tokens == text_upper_bound("".join(received))
    assert usage.used == events[0].usage.total_tokens + last.usage.total_tokens
    assert proxy.history.load("s")[1].message.interrupted
    assert "provider 'openai' failed to count" in caplog.text


def test_a_provider_that_cannot_count_is_budgeted_by_bytes_before_the_call(
    make_proxy: MakeProxy,
    upstream: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from llmproxy.tokens import messages_upper_bound

    prompt = "count me " * 20  # 20 tokens or so, 180 bytes
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=150)])
    assert proxy.chat(prompt, max_output_tokens=5).text  # counted by the tokenizer: fits
    monkeypatch.setattr(proxy.provider("openai"), "count_tokens", _failing_count)
    assert messages_upper_bound([Message("user", prompt)]) > 150
    with pytest.raises(BudgetExceeded):  # the byte bound does not fit: refused, not overspent
        proxy.chat(prompt, max_output_tokens=5)
    assert "provider 'openai' failed to count the tokens of a" in caplog.text
    assert [u.reserved for u in proxy.usage()] == [0]


def test_abandoned_stream_is_stored_interrupted(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    upstream.enqueue(Reply(text="alpha beta gamma delta", chunk_delay=0.01))
    with proxy.stream("go", session_id="s") as stream:
        first = next(stream)
    assert first.text == "alpha"
    stored = proxy.history.load("s")
    assert stored[-1].message.interrupted and stored[-1].content == "alpha"
    assert stored[-1].output_tokens >= 1
    [usage] = proxy.usage()
    assert usage.reserved == 0 and usage.used > 0


def test_stream_dropped_by_garbage_collection_settles(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    stream = proxy.stream("go", session_id="s")
    next(stream)
    del stream
    gc.collect()
    assert proxy.usage()[0].reserved == 0
    assert proxy.history.load("s")[-1].message.interrupted


async def test_abandoned_async_stream(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    upstream.enqueue(Reply(text="alpha beta gamma delta", chunk_delay=0.01))
    async with proxy.astream("go", session_id="s") as stream:
        async for _event in stream:
            break
    stored = await proxy.history.aload("s")
    assert stored[-1].message.interrupted and stored[-1].content == "alpha"
    assert proxy.usage()[0].reserved == 0


def test_final_event_comes_before_settling_and_the_loop_end_settles(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    upstream.enqueue(Reply(text="alpha beta"))
    stream = proxy.stream("go", session_id="s")
    events = [next(stream), next(stream)]
    final = next(stream)
    assert final.done and final.usage is not None and final.usage.total_tokens > 0
    [usage] = proxy.usage()
    assert usage.reserved > 0 and usage.used == 0  # the reservation still holds the budget
    assert proxy.history.load("s") == []
    with pytest.raises(StopIteration):
        next(stream)
    [usage] = proxy.usage()
    assert usage.reserved == 0 and usage.used == final.usage.total_tokens
    assert [r.content for r in proxy.history.load("s")] == ["go", "alpha beta"]
    assert "".join(e.text for e in events) == "alpha beta"


def test_stream_left_after_its_final_event_settles_when_dropped(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    upstream.enqueue(Reply(text="alpha"))
    stream = proxy.stream("go", session_id="s")
    for event in stream:
        if event.done:
            break
    assert proxy.usage()[0].reserved > 0
    del stream, event
    gc.collect()
    assert proxy.usage()[0].reserved == 0
    assert not proxy.history.load("s")[-1].message.interrupted


async def test_async_stream_settles_after_its_final_event(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    for close in (False, True):
        upstream.enqueue(Reply(text="alpha beta"))
        stream = proxy.astream("go", session_id=f"s{close}")
        async for event in stream:
            if event.done:
                assert proxy.usage()[0].reserved > 0
                if close:
                    break
        if close:
            await stream.aclose()
            await stream.aclose()  # again: nothing left to do
        assert proxy.usage()[0].reserved == 0
        stored = await proxy.history.aload(f"s{close}")
        assert [r.content for r in stored] == ["go", "alpha beta"]


async def test_async_stream_budget_exceeded(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=3)])
    with pytest.raises(BudgetExceeded):
        async for _ in proxy.astream("too long for three tokens"):
            pass
    assert upstream.requests == []


async def test_concurrent_async_calls_share_one_budget(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=400)])
    results = await asyncio.gather(
        *(proxy.achat(f"call {i}", max_output_tokens=20) for i in range(32)), return_exceptions=True
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(f, BudgetExceeded) for f in failed)
    [usage] = proxy.usage()
    assert usage.used == sum(r.usage.total_tokens for r in ok)
    assert usage.used <= 400 and usage.reserved == 0


# -- observers and secrets ---------------------------------------------------------------


def test_one_event_per_call(make_proxy: MakeProxy) -> None:
    events: list[CallEvent] = []
    proxy = make_proxy(observers=[events.append])
    proxy.chat("a", session_id="s", user="u")
    list(proxy.stream("b"))
    assert len(events) == 2
    e = events[0]
    assert (e.model, e.provider, e.session_id, e.user, e.outcome) == (
        "gpt-5.4-mini",
        "openai",
        "s",
        "u",
        "ok",
    )
    assert e.usage.total_tokens > 0 and e.latency > 0 and e.error is None
    assert events[1].streamed


def test_api_key_never_leaks(
    make_proxy: MakeProxy,
    upstream: FakeOpenAI,
    env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = make_proxy()
    proxy.chat("hello", session_id="s")
    wrong = "sk-wrong-KEY-9876543210abcdef"
    bad = Proxy({"history_url": "memory://"}, environ={**env, "OPENAI_API_KEY": wrong})
    with pytest.raises(ProviderAuthError) as info:
        bad.chat("hello")
    texts = [
        repr(proxy),
        repr(proxy.provider("openai")),
        str(info.value),
        repr(info.value),
        caplog.text,
        repr(proxy.history.load("s")),
    ]
    for text in texts:
        for secret in (API_KEY, wrong):
            assert secret not in text
            assert secret[:8] not in text
            assert secret[-4:] not in text
    assert info.value.__suppress_context__  # the SDK's error, which quotes the key, is not chained
    bad.close()


def test_provider_key_from_config_table(upstream: FakeOpenAI, tmp_path: Any) -> None:
    proxy = Proxy(
        {
            "providers": {"openai": {"api_key": API_KEY, "base_url": upstream.base_url}},
            "history_url": "memory://",
        },
        environ={"LLMPROXY_DATA_DIR": str(tmp_path)},
    )
    assert proxy.chat("x").text == "Echo: x"
    proxy.close()


def test_usage_carries_cost_for_priced_models(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy()
    upstream.enqueue(
        Reply(
            text="ok",
            usage={
                "prompt_tokens": 1000,
                "completion_tokens": 100,
                "prompt_tokens_details": {"cached_tokens": 400},
            },
        )
    )
    r = proxy.chat("x", model="openai/gpt-5.4-mini")
    # 600 uncached x 0.75 + 400 cached x 0.075 + 100 output x 4.50, per million
    assert r.usage.cost == pytest.approx((600 * 0.75 + 400 * 0.075 + 100 * 4.5) / 1e6)
    assert proxy.chat("x", model="openai/unpriced-model").usage.cost is None


def test_a_call_is_priced_as_of_when_it_started(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    # A price that changes while a call runs: the reservation's rates and the settled cost both
    # use the price of the call's start, so the budget's hold covers what it settles.
    import time

    from llmproxy import CostBudget
    from llmproxy.pricing import Price

    proxy = make_proxy(budgets=[CostBudget(max_usd=1.0)])
    proxy.chat("warm up", model="openai/gpt-4o-mini")  # the provider and its client exist now
    (before,) = proxy.usage()
    switch = time.time() + 1.0  # the first event comes in milliseconds; leave a slow CI room
    proxy.prices.set("openai/gpt-4o-mini", Price(1.0, 2.0, until=switch, then=Price(100.0, 200.0)))
    upstream.enqueue(Reply(text="ok", usage={"prompt_tokens": 1000, "completion_tokens": 10}))
    stream = proxy.stream("x", model="openai/gpt-4o-mini")
    first = next(stream)  # reserved and sent before the switch
    assert time.time() < switch
    time.sleep(max(0.0, switch - time.time()) + 0.05)
    events = [first, *stream]
    cost = (1000 * 1.0 + 10 * 2.0) / 1e6
    assert events[-1].usage is not None
    assert events[-1].usage.cost == pytest.approx(cost)
    (row,) = proxy.usage()
    assert row.used - before.used == pytest.approx(cost) and row.reserved == 0
    # A call that starts after the switch pays the new price.
    upstream.enqueue(Reply(text="ok", usage={"prompt_tokens": 1000, "completion_tokens": 10}))
    later = proxy.chat("x", model="openai/gpt-4o-mini")
    assert later.usage.cost == pytest.approx((1000 * 100.0 + 10 * 200.0) / 1e6)


async def test_streams_reuse_upstream_connections(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy()
    for _ in range(5):
        list(proxy.stream("sync"))
        [e async for e in proxy.astream("async")]
    # One pooled connection per client (sync and async), not a new one per stream.
    assert upstream.accepted_count <= 2
    await proxy.aclose()
