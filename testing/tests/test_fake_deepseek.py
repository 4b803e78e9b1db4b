"""Tests for the fake DeepSeek upstream, driven by the real ``openai`` SDK (DeepSeek's client)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from llmproxy_testing.fake_deepseek import (
    DEFAULT_REASONING,
    REASONING_REQUIRED_MESSAGE,
    FakeDeepSeek,
    Fault,
    Reply,
    thinking_enabled,
)

KEY = "sk-ds-fake-0123456789abcdef-wxyz"
MODEL = "deepseek-flash"
OFF = {"thinking": {"type": "disabled"}}


@pytest.fixture
def server() -> Iterator[FakeDeepSeek]:
    with FakeDeepSeek(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def client(server: FakeDeepSeek) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    yield c
    c.close()


def ask(client: openai.OpenAI, messages: list[dict[str, Any]] | str, **kwargs: Any) -> Any:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return client.chat.completions.create(model=MODEL, messages=messages, **kwargs)  # type: ignore[arg-type]


def test_root_paths_like_deepseek_and_v1_paths_too(
    server: FakeDeepSeek, client: openai.OpenAI
) -> None:
    assert server.base_url == server.url
    r = ask(client, "Hello there")
    assert server.last_request.path == "/chat/completions"
    assert r.choices[0].message.content == "Echo: Hello there"
    v1 = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    assert ask(v1, "Hi").choices[0].message.content == "Echo: Hi"
    assert server.last_request.path == "/v1/chat/completions"
    assert [m.id for m in client.models.list()] == ["deepseek-flash", "deepseek-v4-pro"]
    v1.close()


def test_thinking_is_on_by_default_and_off_on_request(
    server: FakeDeepSeek, client: openai.OpenAI
) -> None:
    r = ask(client, "Hello there")
    message = r.choices[0].message.model_dump()
    assert message["reasoning_content"] == DEFAULT_REASONING
    assert r.usage is not None
    details = r.usage.completion_tokens_details
    assert details is not None
    assert details.reasoning_tokens == 3
    assert r.usage.completion_tokens == 3 + 3
    off = ask(client, "Hello there", extra_body=OFF)
    assert "reasoning_content" not in off.choices[0].message.model_dump()
    assert off.usage is not None
    assert off.usage.completion_tokens == 3
    server.enqueue(Reply(text="ok", reasoning="scripted thought"))
    scripted = ask(client, "x").choices[0].message.model_dump()
    assert scripted["reasoning_content"] == "scripted thought"
    assert thinking_enabled({}) and thinking_enabled({"thinking": {"type": "enabled"}})
    assert not thinking_enabled(OFF)


def test_reasoning_default_can_be_a_callable() -> None:
    with FakeDeepSeek(reasoning=lambda body: f"{len(body['messages'])} message(s)") as srv:
        c = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        assert ask(c, "x").choices[0].message.model_dump()["reasoning_content"] == "1 message(s)"
        c.close()


def test_streams_send_reasoning_deltas_before_the_answer(client: openai.OpenAI) -> None:
    kinds: list[tuple[str, str]] = []
    usage = None
    for chunk in ask(client, "Hi you", stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta.model_dump()
            if delta.get("reasoning_content"):
                kinds.append(("reasoning", delta["reasoning_content"]))
            if delta.get("content"):
                kinds.append(("content", delta["content"]))
    assert kinds == [
        ("reasoning", "Thinking"),
        ("reasoning", " it"),
        ("reasoning", " over."),
        ("content", "Echo:"),
        ("content", " Hi"),
        ("content", " you"),
    ]
    assert usage is not None
    assert usage.model_dump()["prompt_cache_miss_tokens"] == usage.prompt_tokens


def test_usage_has_cache_fields(server: FakeDeepSeek, client: openai.OpenAI) -> None:
    usage = ask(client, "How are you?").usage.model_dump()
    assert usage["prompt_tokens"] == 3 + 3 + 3
    assert (usage["prompt_cache_hit_tokens"], usage["prompt_cache_miss_tokens"]) == (0, 9)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    server.enqueue(Reply(text="Fine", usage={"prompt_cache_hit_tokens": 4}))
    usage = ask(client, "How are you?").usage.model_dump()
    assert (usage["prompt_cache_hit_tokens"], usage["prompt_cache_miss_tokens"]) == (4, 5)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 4
    server.enqueue(
        Reply(text="Fine", usage={"prompt_cache_hit_tokens": 2, "prompt_cache_miss_tokens": 1})
    )
    usage = ask(client, "How are you?").usage.model_dump()
    assert (usage["prompt_cache_hit_tokens"], usage["prompt_cache_miss_tokens"]) == (2, 1)


def test_prefix_cache_counts_shared_leading_messages() -> None:
    with FakeDeepSeek(prefix_cache=True) as srv:
        c = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        first = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
        assert ask(c, first).usage.model_dump()["prompt_cache_hit_tokens"] == 0
        again = [
            *first,
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ]
        # system (2 words + 3) and user (1 + 3) were sent before
        assert ask(c, again).usage.model_dump()["prompt_cache_hit_tokens"] == 9
        c.close()


def test_reasoning_must_come_back_after_tool_calls(
    server: FakeDeepSeek, client: openai.OpenAI
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "21C"},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, history)
    assert info.value.status_code == 400
    assert REASONING_REQUIRED_MESSAGE in str(info.value)
    assert ask(client, history, extra_body=OFF).choices[0].message.content == "Echo: Weather?"
    history[1]["reasoning_content"] = ""
    assert ask(client, history).choices[0].message.content == "Echo: Weather?"


def test_output_cap_is_max_tokens_with_reasoning_first(
    server: FakeDeepSeek, client: openai.OpenAI
) -> None:
    server.enqueue(Reply(text="one two three"))
    r = ask(client, "count", max_tokens=4)
    message = r.choices[0].message.model_dump()
    assert (message["reasoning_content"], message["content"]) == (DEFAULT_REASONING, "one")
    assert r.choices[0].finish_reason == "length"
    server.enqueue(Reply(text="one two three"))
    ignored = ask(client, "count", max_completion_tokens=1)  # not DeepSeek's field
    assert ignored.choices[0].message.content == "one two three"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        ask(client, "count", max_tokens=0)


def test_faults_and_auth(server: FakeDeepSeek, client: openai.OpenAI) -> None:
    server.enqueue(Fault.status(429, retry_after=3))
    with pytest.raises(openai.RateLimitError) as info:
        ask(client, "x")
    assert info.value.response.headers["retry-after"] == "3"
    bad = openai.OpenAI(base_url=server.base_url, api_key="sk-wrong-key-123456", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        ask(bad, "x")
    bad.close()
