"""OpenAIProvider through the real openai SDK against FakeOpenAI: requests, answers, errors."""

from __future__ import annotations

import asyncio
import email.utils
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmproxy.errors import (
    ConfigError,
    MissingCredentials,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderResponseError,
    ProviderTimeout,
    ProviderUnavailable,
)
from llmproxy.registry import ProviderSettings
from llmproxy.secret import Secret
from llmproxy.tokens import messages_upper_bound
from llmproxy.types import ChatRequest, Chunk, Completion, Message, ToolCall, Usage
from llmproxy_openai import env, models, tokenizer
from llmproxy_openai.provider import (
    OpenAIProvider,
    asse_lines,
    retry_after,
    sse_lines,
    usage_from_wire,
)
from llmproxy_openai.service import OpenAILLMConfig
from llmproxy_testing.fake_openai import FakeOpenAI, Fault, Reply

MODEL = "gpt-4o-mini"


def request(
    text: str = "Hello there",
    *,
    model: str = MODEL,
    messages: tuple[Message, ...] | None = None,
    **kwargs: Any,
) -> ChatRequest:
    return ChatRequest(messages or (Message("user", text),), model, "openai", **kwargs)


async def complete(provider: OpenAIProvider, req: ChatRequest, mode: str) -> Completion:
    if mode == "sync":
        return provider.chat(req)
    return await provider.achat(req)


async def collect(
    provider: OpenAIProvider, req: ChatRequest, mode: str, into: list[Chunk] | None = None
) -> list[Chunk]:
    """Read a whole stream into ``into`` (when given), so a test sees what came before an error."""
    chunks: list[Chunk] = [] if into is None else into
    if mode == "sync":
        for chunk in provider.stream(req):
            chunks.append(chunk)
    else:
        async for chunk in provider.astream(req):
            chunks.append(chunk)
    return chunks


def joined_text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def final_usage(chunks: list[Chunk]) -> Usage:
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1, usages
    return usages[0]


# --------------------------------------------------------------------------- answers


async def test_chat_returns_text_finish_reason_usage_and_id(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    completion = await complete(provider, request("Hello there"), mode)
    assert completion.message == Message("assistant", "Echo: Hello there")
    assert completion.finish_reason == "stop"
    assert completion.model == MODEL
    assert completion.id is not None
    assert completion.id.startswith("chatcmpl-")
    # The fake counts words: prompt = 3 + (2 words + 3); completion = 3 words.
    assert completion.usage == Usage(input_tokens=8, output_tokens=3)
    body = server.last_request.json()
    assert body["model"] == MODEL
    assert body["messages"] == [{"role": "user", "content": "Hello there"}]
    assert "stream" not in body


async def test_chat_sends_the_bearer_key(
    provider: OpenAIProvider, server: FakeOpenAI, api_key: str, mode: str
) -> None:
    await complete(provider, request(), mode)
    assert server.last_request.headers["authorization"] == f"Bearer {api_key}"
    assert server.last_request.path == "/v1/chat/completions"


async def test_stream_yields_text_deltas_then_finish_and_usage(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Reply(text="Once upon a time there was a fox."))
    chunks = await collect(provider, request("Tell me a story."), mode)
    assert joined_text(chunks) == "Once upon a time there was a fox."
    assert len([c for c in chunks if c.text]) == 8  # one delta per word: it really streamed
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert final_usage(chunks) == Usage(input_tokens=10, output_tokens=8)
    assert {c.model for c in chunks} == {MODEL}
    assert len({c.id for c in chunks}) == 1


async def test_stream_request_asks_for_usage(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    await collect(provider, request(), mode)
    body = server.last_request.json()
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_stream_keeps_caller_stream_options_but_forces_usage(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    req = request(extra={"stream_options": {"include_usage": False, "include_obfuscation": False}})
    chunks = await collect(provider, req, mode)
    assert server.last_request.json()["stream_options"] == {
        "include_usage": True,
        "include_obfuscation": False,
    }
    assert final_usage(chunks).output_tokens == 3


async def test_max_output_tokens_is_sent_as_max_completion_tokens(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Reply(text="one two three four five six"))
    completion = await complete(provider, request(max_output_tokens=2), mode)
    body = server.last_request.json()
    assert body["max_completion_tokens"] == 2
    assert "max_tokens" not in body
    # The fake honours the cap, so the answer is cut and says so.
    assert completion.message.content == "one two"
    assert completion.finish_reason == "length"


async def test_stream_sends_max_completion_tokens(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Reply(text="one two three four five six"))
    chunks = await collect(provider, request(max_output_tokens=3), mode)
    assert server.last_request.json()["max_completion_tokens"] == 3
    assert joined_text(chunks) == "one two three"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]


async def test_no_output_cap_when_max_output_tokens_is_none(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    await complete(provider, request(max_output_tokens=None), mode)
    body = server.last_request.json()
    assert "max_completion_tokens" not in body
    assert "max_tokens" not in body
    assert "temperature" not in body


async def test_temperature_and_extra_pass_through(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    req = request(
        temperature=0.2,
        extra={
            "top_p": 0.5,
            "seed": 7,
            "extra_body": {"reasoning_effort": "low", "custom_flag": True},
        },
    )
    await complete(provider, req, mode)
    body = server.last_request.json()
    assert body["temperature"] == 0.2
    assert body["top_p"] == 0.5
    assert body["seed"] == 7
    # extra_body is merged into the JSON body by the SDK, not sent as a key of its own.
    assert body["reasoning_effort"] == "low"
    assert body["custom_flag"] is True
    assert "extra_body" not in body


async def test_extra_passes_through_on_streams(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    await collect(provider, request(extra={"top_p": 0.25, "extra_body": {"custom_flag": 1}}), mode)
    body = server.last_request.json()
    assert body["top_p"] == 0.25
    assert body["custom_flag"] == 1


async def test_request_options_become_headers_query_and_timeout(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    req = request(
        extra={
            "extra_headers": {"X-Trace": "abc"},
            "extra_query": {"api-version": "2026-01"},
            "timeout": 30.0,
            "top_p": openai.NOT_GIVEN,
            "seed": openai.omit,
        }
    )
    await complete(provider, req, mode)
    await collect(provider, req, mode)
    for sent in server.requests[-2:]:
        assert sent.headers["x-trace"] == "abc"
        assert sent.query == {"api-version": "2026-01"}
        body = sent.json()
        assert not {"extra_headers", "extra_query", "timeout", "top_p", "seed"} & body.keys()


@pytest.mark.parametrize("streamed", [False, True])
async def test_an_unknown_parameter_is_refused_by_name_before_any_request(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str, streamed: bool
) -> None:
    req = request(extra={"top_pp": 0.5})
    call = collect(provider, req, mode) if streamed else complete(provider, req, mode)
    with pytest.raises(ProviderBadRequest, match=r"no parameter 'top_pp'.*extra_body"):
        await call
    assert server.requests == []


async def test_messages_go_out_in_wire_form(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    messages = (
        Message("system", "Be brief."),
        Message("user", "Weather in Paris?", name="alice"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "sunny", tool_call_id="call_1"),
    )
    await complete(provider, request(messages=messages), mode)
    assert server.last_request.json()["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?", "name": "alice"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]


# --------------------------------------------------------------------------- usage


async def test_usage_maps_cached_and_reasoning_tokens(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(
        Reply(
            text="Fine.",
            usage={
                "prompt_tokens": 1200,
                "completion_tokens": 300,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "completion_tokens_details": {"reasoning_tokens": 256},
            },
        )
    )
    completion = await complete(provider, request(), mode)
    assert completion.usage == Usage(
        input_tokens=1200, output_tokens=300, cached_input_tokens=1024, reasoning_tokens=256
    )


async def test_stream_usage_maps_cached_and_reasoning_tokens(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(
        Reply(
            text="Fine.",
            usage={
                "prompt_tokens": 50,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 32},
                "completion_tokens_details": {"reasoning_tokens": 15},
            },
        )
    )
    chunks = await collect(provider, request(), mode)
    assert final_usage(chunks) == Usage(50, 20, 32, 15)


async def test_usage_reads_deepseek_prompt_cache_hit_tokens(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(
        Reply(
            text="Fine.",
            usage={
                "prompt_tokens": 100,
                "completion_tokens": 10,
                "prompt_cache_hit_tokens": 64,
                "prompt_cache_miss_tokens": 36,
                "prompt_tokens_details": None,
                "completion_tokens_details": None,
            },
        )
    )
    completion = await complete(provider, request(), mode)
    assert completion.usage == Usage(input_tokens=100, output_tokens=10, cached_input_tokens=64)


def test_usage_from_wire_edge_cases() -> None:
    assert usage_from_wire(None) is None
    assert usage_from_wire({}) is None
    assert usage_from_wire(
        {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": None}
    ) == Usage(5, 2)
    # OpenAI's own cached_tokens wins over DeepSeek's field when both are present.
    wire = {
        "prompt_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 4},
        "prompt_cache_hit_tokens": 8,
    }
    assert usage_from_wire(wire) == Usage(9, 0, 4, 0)
    # OpenRouter's (and llmproxy's gateway's) prompt-cache writes.
    written = {
        "prompt_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 5},
    }
    assert usage_from_wire(written) == Usage(9, 0, 2, 0, cache_write_tokens=5)


async def test_chat_without_usage_reports_none(
    provider: OpenAIProvider, json_route: Callable[[int, Any], None], mode: str
) -> None:
    json_route(
        200,
        {
            "id": "x1",
            "object": "chat.completion",
            "model": "compat-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
        },
    )
    completion = await complete(provider, request(), mode)
    assert completion.usage is None
    assert completion.message.content == "hi"
    assert completion.model == "compat-model"


# --------------------------------------------------------------------------- reasoning


async def test_reasoning_content_goes_to_message_reasoning(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Reply(text="The answer is 4.", reasoning="Two plus two makes four."))
    completion = await complete(provider, request("What is 2+2?"), mode)
    assert completion.message.content == "The answer is 4."
    assert completion.message.reasoning == "Two plus two makes four."
    assert "plus" not in completion.message.content
    assert completion.usage is not None
    assert completion.usage.reasoning_tokens == 5


async def test_stream_reasoning_deltas_stay_out_of_text(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Reply(text="The answer is 4.", reasoning="Two plus two makes four."))
    chunks = await collect(provider, request("What is 2+2?"), mode)
    assert joined_text(chunks) == "The answer is 4."
    assert "".join(c.reasoning for c in chunks) == "Two plus two makes four."
    assert not any(c.text and c.reasoning for c in chunks)
    # Reasoning arrives before the answer.
    first_text = next(i for i, c in enumerate(chunks) if c.text)
    last_reasoning = max(i for i, c in enumerate(chunks) if c.reasoning)
    assert last_reasoning < first_text


async def test_no_reasoning_is_none_not_empty(provider: OpenAIProvider, mode: str) -> None:
    completion = await complete(provider, request(), mode)
    assert completion.message.reasoning is None


# --------------------------------------------------------------------------- tool calls


async def test_tool_calls_are_parsed(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(
        Reply(
            tool_calls=[
                {"id": "call_a", "name": "get_weather", "arguments": {"city": "Paris"}},
                {"id": "call_b", "name": "get_time", "arguments": '{"tz": "UTC"}'},
            ]
        )
    )
    completion = await complete(provider, request("Weather and time?"), mode)
    assert completion.finish_reason == "tool_calls"
    assert completion.message.content == ""
    assert completion.message.tool_calls == (
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_time", '{"tz": "UTC"}'),
    )


async def test_streamed_tool_calls_from_the_fake(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Reply(tool_calls=[{"id": "call_a", "name": "lookup", "arguments": {"q": "x"}}]))
    chunks = await collect(provider, request(), mode)
    calls = [c.tool_calls for c in chunks if c.tool_calls]
    assert calls == [(ToolCall("call_a", "lookup", '{"q": "x"}'),)]
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]


def _chunk(
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "chatcmpl-t",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": choices,
        "usage": usage,
    }


async def test_streamed_parallel_tool_calls_are_assembled_by_index(
    provider: OpenAIProvider, sse_route: Callable[..., None], mode: str
) -> None:
    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **fields}]}

    sse_route(
        [
            _chunk({"role": "assistant", "content": None}),
            # The second call starts first: order comes from the index, not from arrival.
            _chunk(
                call(
                    1, id="call_b", type="function", function={"name": "get_time", "arguments": ""}
                )
            ),
            _chunk(
                call(
                    0,
                    id="call_a",
                    type="function",
                    function={"name": "get_weather", "arguments": ""},
                )
            ),
            _chunk(call(0, function={"arguments": '{"ci'})),
            _chunk(call(1, function={"arguments": '{"tz": '})),
            _chunk(call(0, function={"arguments": 'ty": "Paris"}'})),
            _chunk(call(1, function={"arguments": '"UTC"}'})),
            _chunk({}, "tool_calls"),
            _chunk(None, usage={"prompt_tokens": 10, "completion_tokens": 7}),
            b"data: [DONE]\n\n",
        ]
    )
    chunks = await collect(provider, request(), mode)
    with_calls = [c for c in chunks if c.tool_calls]
    assert len(with_calls) == 1, "the assembled calls are delivered once, when the answer ends"
    assert with_calls[0].tool_calls == (
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_time", '{"tz": "UTC"}'),
    )
    assert with_calls[0].finish_reason == "tool_calls"
    assert final_usage(chunks) == Usage(10, 7)
    assert joined_text(chunks) == ""


async def test_streamed_tool_call_without_arguments_gets_empty_object(
    provider: OpenAIProvider, sse_route: Callable[..., None], mode: str
) -> None:
    sse_route(
        [
            _chunk({"tool_calls": [{"index": 0, "id": "call_z", "function": {"name": "now"}}]}),
            _chunk({}, "tool_calls"),
            b"data: [DONE]\n\n",
        ]
    )
    chunks = await collect(provider, request(), mode)
    assert [c.tool_calls for c in chunks if c.tool_calls] == [(ToolCall("call_z", "now", "{}"),)]


async def test_streamed_tool_calls_delivered_when_done_comes_without_finish_reason(
    provider: OpenAIProvider, sse_route: Callable[..., None], mode: str
) -> None:
    sse_route(
        [
            _chunk({"tool_calls": [{"index": 0, "id": "call_q", "function": {"name": "now"}}]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"tz": "UTC"}'}}]}),
            b"data: [DONE]\n\n",
        ]
    )
    chunks = await collect(provider, request(), mode)
    calls = [c for c in chunks if c.tool_calls]
    assert [c.tool_calls for c in calls] == [(ToolCall("call_q", "now", '{"tz": "UTC"}'),)]
    assert calls[0].finish_reason == "tool_calls"


async def test_stream_ignores_comments_and_blank_lines(
    provider: OpenAIProvider, sse_route: Callable[..., None], mode: str
) -> None:
    sse_route(
        [
            b": keep-alive\n\n",
            _chunk({"content": "Hi"}),
            b"event: message\n",
            _chunk({"content": " there"}),
            _chunk({}, "stop"),
            b"data: [DONE]\n\n",
        ]
    )
    chunks = await collect(provider, request(), mode)
    assert joined_text(chunks) == "Hi there"


async def test_stream_stops_reading_at_done(
    provider: OpenAIProvider, sse_route: Callable[..., None], mode: str
) -> None:
    sse_route(
        [
            _chunk({"content": "Hi"}),
            _chunk({}, "stop"),
            b"data: [DONE]\n\n",
            _chunk({"content": "late"}),
        ]
    )
    chunks = await collect(provider, request(), mode)
    assert joined_text(chunks) == "Hi"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "error_class", "retryable"),
    [
        (400, ProviderBadRequest, False),
        (404, ProviderBadRequest, False),
        (422, ProviderBadRequest, False),
        (401, ProviderAuthError, False),
        (403, ProviderAuthError, False),
        (408, ProviderTimeout, True),
        (429, ProviderRateLimited, True),
        (500, ProviderUnavailable, True),
        (503, ProviderUnavailable, True),
    ],
)
async def test_status_errors_map_onto_the_core_tree(
    provider: OpenAIProvider,
    server: FakeOpenAI,
    api_key: str,
    mode: str,
    status: int,
    error_class: type[ProviderError],
    retryable: bool,
) -> None:
    server.enqueue(Fault.status(status, message=f"upstream says no ({status})"))
    with pytest.raises(error_class) as info:
        await complete(provider, request(), mode)
    exc = info.value
    assert type(exc) is error_class
    assert exc.status == status
    assert exc.provider == "openai"
    assert exc.model == MODEL
    assert exc.retryable is retryable
    assert f"upstream says no ({status})" in str(exc)
    assert f"HTTP {status}" in str(exc)
    assert api_key[:8] not in str(exc)


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, ProviderBadRequest),
        (401, ProviderAuthError),
        (429, ProviderRateLimited),
        (503, ProviderUnavailable),
    ],
)
async def test_status_errors_on_streams(
    provider: OpenAIProvider,
    server: FakeOpenAI,
    mode: str,
    status: int,
    error_class: type[ProviderError],
) -> None:
    server.enqueue(Fault.status(status))
    with pytest.raises(error_class) as info:
        await collect(provider, request(), mode)
    assert info.value.status == status
    assert info.value.provider == "openai"


async def test_rate_limit_carries_retry_after(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Fault.status(429, retry_after=1.5))
    with pytest.raises(ProviderRateLimited) as info:
        await complete(provider, request(), mode)
    assert info.value.retry_after == pytest.approx(1.5)
    assert info.value.retryable


async def test_rate_limit_retry_after_seconds_header_alone(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Fault.status(429, headers={"retry-after": "7"}))
    with pytest.raises(ProviderRateLimited) as info:
        await complete(provider, request(), mode)
    assert info.value.retry_after == pytest.approx(7.0)


async def test_rate_limit_retry_after_ms_header_alone(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Fault.status(429, headers={"retry-after-ms": "250"}))
    with pytest.raises(ProviderRateLimited) as info:
        await complete(provider, request(), mode)
    assert info.value.retry_after == pytest.approx(0.25)


async def test_rate_limit_with_unparseable_retry_after_still_maps(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Fault.status(429, headers={"retry-after": "soon"}))
    with pytest.raises(ProviderRateLimited) as info:
        await complete(provider, request(), mode)
    assert info.value.retry_after is None


async def test_no_retry_after_without_headers(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Fault.status(503))
    with pytest.raises(ProviderUnavailable) as info:
        await complete(provider, request(), mode)
    assert info.value.retry_after is None


def test_retry_after_parsing() -> None:
    assert retry_after({}) is None
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "0.5"}) == 0.5
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    # The millisecond header is more precise and wins.
    assert retry_after({"retry-after": "2", "retry-after-ms": "1500"}) == 1.5
    # A broken ms header falls back on the seconds one.
    assert retry_after({"retry-after": "2", "retry-after-ms": "nope"}) == 2.0
    assert retry_after({"retry-after": "-4"}) == 0.0
    assert retry_after({"retry-after": ""}) is None
    assert retry_after({"retry-after": "whenever"}) is None
    assert retry_after({"retry-after": "Wed, 99 Foo 2015 07:28:00 GMT"}) is None


def test_retry_after_http_date() -> None:
    in_30s = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert retry_after({"retry-after": in_30s}) == pytest.approx(30, abs=2)
    # "-0000" means UTC too; it must not be read as local time.
    in_60s = email.utils.formatdate(time.time() + 60)
    assert in_60s.endswith("-0000")
    assert retry_after({"retry-after": in_60s}) == pytest.approx(60, abs=2)
    # A date in the past means "now".
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


async def test_dropped_connection_mid_stream_is_a_connection_error(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Fault.drop_after(2))
    received: list[Chunk] = []
    with pytest.raises(ProviderConnectionError) as info:
        await collect(provider, request("Hello there"), mode, into=received)
    assert joined_text(received) == "Echo: Hello"  # what arrived before the drop was delivered
    assert info.value.provider == "openai"
    assert info.value.status is None
    assert info.value.retryable


async def test_dropped_connection_without_answer_is_a_connection_error(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Fault.drop_after(0))
    with pytest.raises(ProviderConnectionError) as info:
        await complete(provider, request(), mode)
    assert info.value.provider == "openai"


async def test_stream_that_ends_without_finish_is_a_connection_error(
    provider: OpenAIProvider, sse_route: Callable[..., None], mode: str
) -> None:
    # A clean end of the HTTP body, but no finish_reason and no [DONE]: the answer is cut.
    sse_route([_chunk({"content": "Half an"})])
    received: list[Chunk] = []
    with pytest.raises(ProviderConnectionError, match="before the answer was complete"):
        await collect(provider, request(), mode, into=received)
    assert joined_text(received) == "Half an"


async def test_unreachable_server_is_a_connection_error(
    make_provider: Callable[..., OpenAIProvider], mode: str
) -> None:
    with FakeOpenAI() as srv:
        url = srv.base_url
    # The server is stopped: nothing listens on its port any more.
    p = make_provider(base_url=url)
    with pytest.raises(ProviderConnectionError) as info:
        await complete(p, request(), mode)
    assert info.value.provider == "openai"
    assert info.value.status is None


async def test_malformed_json_is_a_response_error(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Fault.malformed())
    with pytest.raises(ProviderResponseError) as info:
        await complete(provider, request(), mode)
    assert info.value.provider == "openai"
    assert info.value.model == MODEL


async def test_malformed_stream_event_is_a_response_error(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Fault.malformed())
    with pytest.raises(ProviderResponseError) as info:
        await collect(provider, request(), mode)
    assert info.value.provider == "openai"


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x", "choices": []},
        {"id": "x"},
        {"id": "x", "choices": [{"index": 0}]},
        [1, 2, 3],
    ],
)
async def test_json_that_is_not_a_completion_is_a_response_error(
    provider: OpenAIProvider, json_route: Callable[[int, Any], None], mode: str, body: Any
) -> None:
    json_route(200, body)
    with pytest.raises(ProviderResponseError):
        await complete(provider, request(), mode)


async def test_stream_error_event_is_unavailable_and_redacted(
    provider: OpenAIProvider, sse_route: Callable[..., None], api_key: str, mode: str
) -> None:
    sse_route(
        [
            _chunk({"content": "Hi"}),
            {
                "error": {
                    "message": f"overloaded while serving key {api_key}",
                    "type": "server_error",
                }
            },
        ]
    )
    with pytest.raises(ProviderUnavailable) as info:
        await collect(provider, request(), mode)
    assert "overloaded" in str(info.value)
    assert api_key[:8] not in str(info.value)


async def test_slow_response_past_timeout_is_a_timeout(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI, mode: str
) -> None:
    p = make_provider(timeout=0.3)
    server.enqueue(Fault.delay(3))
    started = time.perf_counter()
    with pytest.raises(ProviderTimeout) as info:
        await complete(p, request(), mode)
    assert time.perf_counter() - started < 2.5
    assert info.value.provider == "openai"
    assert info.value.status is None
    assert info.value.retryable


async def test_stream_stalling_past_timeout_is_a_timeout(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI, mode: str
) -> None:
    p = make_provider(timeout=0.3)
    server.enqueue(Reply(text="slow words here", chunk_delay=2))
    with pytest.raises(ProviderTimeout):
        await collect(p, request(), mode)


WRONG_KEYS = [
    "sk-proj-9X8w7V6u5T4s3R2q1P0o",  # OpenAI shape: caught by the key pattern
    "gw-0123456789abcdefghijQRST",  # a gateway's key of another shape: caught by the masked form
]


@pytest.mark.parametrize("wrong_key", WRONG_KEYS)
async def test_auth_error_never_shows_the_key_nor_its_mask(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI, mode: str, wrong_key: str
) -> None:
    p = make_provider(api_key=wrong_key)
    with pytest.raises(ProviderAuthError) as info:
        await complete(p, request(), mode)
    exc = info.value
    # The fake echoed a mask such as "sk-p****1P0o", like the real API does.
    assert server.last_request.headers["authorization"] == f"Bearer {wrong_key}"
    text = f"{exc} {exc!r} {exc.detail}"
    assert "Incorrect API key provided" in text
    assert wrong_key not in text
    assert wrong_key[:8] not in text
    assert wrong_key[:4] + "****" not in text
    assert "****" not in text
    assert exc.status == 401
    assert exc.provider == "openai"


@pytest.mark.parametrize("wrong_key", WRONG_KEYS)
async def test_auth_error_on_streams_never_shows_the_key(
    make_provider: Callable[..., OpenAIProvider], mode: str, wrong_key: str
) -> None:
    p = make_provider(api_key=wrong_key)
    with pytest.raises(ProviderAuthError) as info:
        await collect(p, request(), mode)
    assert wrong_key[:8] not in str(info.value)
    assert "****" not in str(info.value)


async def test_error_echoing_the_full_key_is_redacted(
    provider: OpenAIProvider, server: FakeOpenAI, api_key: str, mode: str
) -> None:
    server.enqueue(Fault.status(400, message=f"bad request from {api_key}, see docs"))
    with pytest.raises(ProviderBadRequest) as info:
        await complete(provider, request(), mode)
    assert api_key[:8] not in str(info.value)
    assert "bad request from" in str(info.value)


async def test_errors_are_not_chained_to_sdk_exceptions(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    # The SDK's exception holds the request (and its Authorization header): it must not ride along.
    server.enqueue(Fault.status(500))
    with pytest.raises(ProviderUnavailable) as info:
        await complete(provider, request(), mode)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None


# --------------------------------------------------------------------------- provider wiring


async def test_async_client_follows_the_running_loop(provider: OpenAIProvider) -> None:
    completion = await provider.achat(request("first"))
    assert completion.message.content == "Echo: first"
    client = provider.aclient
    assert provider.aclient is client  # reused within one loop


def test_async_calls_work_across_event_loops(provider: OpenAIProvider) -> None:
    import asyncio

    # asyncio.run makes a new loop each time; a client bound to a closed loop must not be reused.
    assert asyncio.run(provider.achat(request("one"))).message.content == "Echo: one"
    assert asyncio.run(provider.achat(request("two"))).message.content == "Echo: two"


def test_close_then_reuse(provider: OpenAIProvider) -> None:
    assert provider.chat(request("a")).message.content == "Echo: a"
    provider.close()
    assert provider.chat(request("b")).message.content == "Echo: b"


def test_abandoned_stream_closes_the_connection(
    provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    server.enqueue(Reply(text="many words " * 50, chunk_delay=0.01))
    it = provider.stream(request())
    first = [next(it) for _ in range(3)]
    assert joined_text(first)
    it.close()  # type: ignore[attr-defined]
    # The connection is released: a new call goes through at once.
    assert provider.chat(request("next")).message.content == "Echo: next"


def test_limits_and_counts_delegate_to_the_models_table(provider: OpenAIProvider) -> None:
    assert provider.max_output_tokens("gpt-4o-mini") == 16_384
    assert provider.max_output_tokens("mystery-model") is None
    assert provider.count_text_tokens("Hello world", "gpt-5.4-mini") == 2
    msgs = [Message("user", "Hello world")]
    assert provider.count_tokens(msgs, "gpt-5.4-mini") == tokenizer.count_messages(
        msgs, "gpt-5.4-mini"
    )


def test_provider_satisfies_the_protocol(provider: OpenAIProvider) -> None:
    from llmproxy.provider import Provider

    assert isinstance(provider, Provider)
    assert provider.name == "openai"


# --------------------------------------------------------------------------- from_settings


def provider_settings(environ: dict[str, str], **kwargs: Any) -> ProviderSettings:
    return ProviderSettings("openai", environ=environ, **kwargs)


def test_from_settings_reads_openai_api_key(server: FakeOpenAI, api_key: str) -> None:
    p = OpenAIProvider.from_settings(
        provider_settings({env.API_KEY: api_key, env.BASE_URL: server.base_url})
    )
    assert p.base_url == server.base_url
    assert p.chat(request()).message.content == "Echo: Hello there"
    assert server.last_request.headers["authorization"] == f"Bearer {api_key}"
    p.close()


def test_from_settings_reads_the_seed_variable(server: FakeOpenAI, api_key: str) -> None:
    p = OpenAIProvider.from_settings(
        provider_settings({env.SEED_API_KEY: api_key, env.BASE_URL: server.base_url})
    )
    assert p.chat(request()).message.content == "Echo: Hello there"
    p.close()


def test_from_settings_prefers_openai_api_key_over_the_seed_variable(
    server: FakeOpenAI, api_key: str
) -> None:
    environ = {
        env.API_KEY: api_key,
        env.SEED_API_KEY: "sk-seed-not-this-one-0000",
        env.BASE_URL: server.base_url,
    }
    p = OpenAIProvider.from_settings(provider_settings(environ))
    p.chat(request())  # the fake refuses any key but api_key
    p.close()


def test_from_settings_configured_key_and_url_win(server: FakeOpenAI, api_key: str) -> None:
    environ = {env.API_KEY: "sk-env-not-this-one-00000", env.BASE_URL: "http://127.0.0.1:9/v1"}
    p = OpenAIProvider.from_settings(
        provider_settings(environ, api_key=Secret(api_key), base_url=server.base_url)
    )
    assert p.base_url == server.base_url
    p.chat(request())
    p.close()


def test_from_settings_without_a_key_names_both_variables() -> None:
    with pytest.raises(MissingCredentials) as info:
        OpenAIProvider.from_settings(provider_settings({env.BASE_URL: "http://127.0.0.1:9/v1"}))
    message = str(info.value)
    assert "OPENAI_API_KEY" in message
    assert "LLM_PROXY_OPEN_AI_DEFAULT_OPEN_API_KEY" in message
    assert info.value.variables == ("OPENAI_API_KEY", "LLM_PROXY_OPEN_AI_DEFAULT_OPEN_API_KEY")
    assert isinstance(info.value, ConfigError)


def test_from_settings_empty_key_counts_as_missing() -> None:
    with pytest.raises(MissingCredentials):
        OpenAIProvider.from_settings(provider_settings({env.API_KEY: "", env.SEED_API_KEY: ""}))


def test_from_settings_timeout(server: FakeOpenAI, api_key: str) -> None:
    p = OpenAIProvider.from_settings(provider_settings({env.API_KEY: api_key, env.TIMEOUT: "12.5"}))
    assert p.timeout == 12.5
    assert (
        OpenAIProvider.from_settings(provider_settings({env.API_KEY: api_key}, timeout=3.0)).timeout
        == 3.0
    )
    default = OpenAIProvider.from_settings(provider_settings({env.API_KEY: api_key}))
    assert (default.timeout, default.connect_timeout) == (60.0, 10.0)
    assert default.timeouts == httpx2.Timeout(60.0, connect=10.0, pool=10.0)
    for bad in ("soon", "0", "-1"):
        with pytest.raises(ConfigError, match="LLMPROXY_OPENAI_TIMEOUT"):
            OpenAIProvider.from_settings(
                provider_settings({env.API_KEY: api_key, env.TIMEOUT: bad})
            )


def test_from_settings_connect_timeout(api_key: str) -> None:
    environ = {env.API_KEY: api_key, env.CONNECT_TIMEOUT: "4"}
    assert OpenAIProvider.from_settings(provider_settings(environ)).connect_timeout == 4.0
    configured = provider_settings(environ, options={"connect_timeout": 2.5})
    assert OpenAIProvider.from_settings(configured).connect_timeout == 2.5  # the table wins
    for bad in ("soon", 0, -1, True, [3]):
        with pytest.raises(ConfigError, match=r"providers\.openai\.connect_timeout") as info:
            OpenAIProvider.from_settings(
                provider_settings({env.API_KEY: api_key}, options={"connect_timeout": bad})
            )
        assert info.value.path == "providers.openai.connect_timeout"
    with pytest.raises(ConfigError, match="LLMPROXY_OPENAI_CONNECT_TIMEOUT"):
        OpenAIProvider.from_settings(
            provider_settings({env.API_KEY: api_key, env.CONNECT_TIMEOUT: "never"})
        )


def test_from_settings_organization_and_project_headers(server: FakeOpenAI, api_key: str) -> None:
    environ = {env.API_KEY: api_key, env.BASE_URL: server.base_url, env.ORG_ID: "org-env"}
    p = OpenAIProvider.from_settings(provider_settings(environ, options={"project": "proj-cfg"}))
    p.chat(request())
    headers = server.last_request.headers
    assert headers["openai-organization"] == "org-env"
    assert headers["openai-project"] == "proj-cfg"
    p.close()


def test_from_settings_uses_the_registered_name(api_key: str) -> None:
    p = OpenAIProvider.from_settings(ProviderSettings("azure-gw", environ={env.API_KEY: api_key}))
    assert p.name == "azure-gw"


def test_reprs_never_show_the_key(server: FakeOpenAI, api_key: str) -> None:
    p = OpenAIProvider(api_key=api_key, base_url=server.base_url)
    p.chat(request())  # the SDK client now exists and holds the key
    for text in (repr(p), str(p), repr(vars(p)["_api_key"])):
        assert api_key not in text
        assert api_key[:8] not in text
    p.close()
    config = OpenAILLMConfig(api_key=api_key)
    for text in (repr(config), str(config)):
        assert api_key not in text
        assert api_key[:8] not in text
    assert "OpenAILLMConfig(" in repr(config)


def test_plugin_registers_the_provider() -> None:
    from llmproxy.plugins import Plugins

    plugins = Plugins(environ={"LLMPROXY_PLUGINS": "openai"})
    entry = plugins.registry.providers["openai"]
    assert "OPENAI_API_KEY" in entry.env
    assert "LLM_PROXY_OPEN_AI_DEFAULT_OPEN_API_KEY" in entry.env
    provider = entry.factory(ProviderSettings("openai", environ={env.API_KEY: "sk-x-0123456789"}))
    assert isinstance(provider, OpenAIProvider)


# --------------------------------------------------------------------------- tokenizer


def test_count_text_uses_o200k_for_current_models() -> None:
    assert tokenizer.count_text("Hello world", "gpt-5.4-mini") == 2
    assert tokenizer.count_text("", "gpt-5.4-mini") == 0


def _bpe(name: str, text: str) -> int:
    import bpe_openai  # type: ignore[import-untyped]

    return len(bpe_openai.get_encoding(name).encode(text))


# Text whose token count differs between the two encodings, so picking the wrong one shows.
MIXED = "Привет, 世界! Let's count: 12345678 tokens\t\tnow."


# Text a user may well send (a question about tokenizers): the special token's characters are
# ordinary text to count, as OpenAI's API treats them, not an error.
SPECIAL = "Why does my model stop at <|endoftext|>? And what is <|im_start|>?"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4"])
def test_special_token_text_is_counted_as_ordinary_text(model: str) -> None:
    import bpe_openai

    encoding = bpe_openai.get_encoding(models.encoding_name(model))
    plain = len(encoding.encode(SPECIAL, disallowed_special=()))
    assert tokenizer.count_text(SPECIAL, model) == plain
    msgs = [Message("user", SPECIAL, name="<|endoftext|>")]
    name = len(encoding.encode("<|endoftext|>", disallowed_special=()))
    assert tokenizer.count_messages(msgs, model) == 3 + 3 + plain + 1 + name


def test_a_long_text_is_counted_in_pieces_exactly_at_word_boundaries() -> None:
    import bpe_openai

    encoding = bpe_openai.get_encoding("o200k_base")
    text = " ".join(f"word{i % 997}" for i in range(30_000))  # about 200,000 characters
    assert len(text) > 4 * tokenizer.PIECE
    assert tokenizer.count_text(text, "gpt-4o-mini") == len(encoding.encode_ordinary(text))


def test_texts_beyond_the_tokenizers_limits_are_counted() -> None:
    # bpe-openai refuses 1,000,000 characters, or 200,000 tokens, in one call; a 300,000-token
    # prompt is a valid request for a model with a 1M-token context.
    words = " ".join(["word"] * 300_000)
    assert tokenizer.count_text(words, "gpt-4.1") == 300_000
    assert tokenizer.count_messages([Message("user", words)], "gpt-4.1") == 3 + 3 + 300_000
    # Without a space to cut at, a cut may split a token: at most one token over per piece.
    blob = "x" * 1_200_000
    counted = tokenizer.count_text(blob, "gpt-4o-mini")
    pieces = -(-len(blob) // tokenizer.PIECE)
    import bpe_openai

    exact = len(bpe_openai.get_encoding("o200k_base").encode_ordinary("x" * tokenizer.PIECE))
    assert exact * pieces <= counted <= exact * pieces + pieces


class _CountingEncoding:
    """Wraps an encoding to count the calls that really encode."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def encode_ordinary(self, text: str) -> list[int]:
        self.calls += 1
        return list(self.inner.encode_ordinary(text))


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> Iterator[_CountingEncoding]:
    """o200k behind a call counter, with the remembered counts forgotten before and after."""
    spy = _CountingEncoding(tokenizer._encoding("o200k_base"))
    monkeypatch.setitem(tokenizer._encodings, "o200k_base", spy)
    tokenizer.counts.clear()
    yield spy
    tokenizer.counts.clear()


def _long(seed: int, words: int = 200) -> str:
    return " ".join(f"w{seed}x{i % 97}" for i in range(words))


def test_a_conversation_resent_each_turn_is_counted_once(spied: _CountingEncoding) -> None:
    conversation = [Message("user", _long(i)) for i in range(5)]
    first = tokenizer.count_messages(conversation, "gpt-4o-mini")
    assert spied.calls == 5
    # The next turn resends the same texts (new string objects, as parsed from a new request)
    # plus one message: only the new one is encoded, and the total is the same as counted fresh.
    resent = [Message(m.role, "".join(list(m.content))) for m in conversation]
    resent.append(Message("user", _long(99)))
    second = tokenizer.count_messages(resent, "gpt-4o-mini")
    assert spied.calls == 6
    direct = spied.inner.encode_ordinary
    assert first == 3 + sum(3 + len(direct(m.content)) for m in conversation)
    assert second == first + 3 + len(direct(_long(99)))


def test_short_texts_are_not_remembered(spied: _CountingEncoding) -> None:
    short = "x " * (tokenizer.CACHE_MIN_CHARS // 2 - 1)
    assert len(short) < tokenizer.CACHE_MIN_CHARS
    assert tokenizer.count_text(short, "gpt-4o") == tokenizer.count_text(short, "gpt-4o")
    assert spied.calls == 2
    assert len(tokenizer.counts) == 0


def test_counts_are_kept_per_encoding(spied: _CountingEncoding) -> None:
    text = MIXED * 10
    assert tokenizer.count_text(text, "gpt-4o") == _bpe("o200k_base", text)
    assert tokenizer.count_text(text, "gpt-4") == _bpe("cl100k_base", text)
    assert tokenizer.count_text(text, "gpt-4") == _bpe("cl100k_base", text)
    assert tokenizer.count_text(text, "gpt-4o") == _bpe("o200k_base", text)
    assert spied.calls == 1
    assert len(tokenizer.counts) == 2


def test_the_remembered_texts_are_bounded_least_recently_used_first(
    spied: _CountingEncoding, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [_long(i) for i in range(4)]
    size = len(texts[0])
    monkeypatch.setattr(tokenizer, "CACHE_MAX_CHARS", 3 * size)
    for text in texts[:3]:
        tokenizer.count_text(text, "gpt-4o")
    tokenizer.count_text(texts[0], "gpt-4o")  # used again: now the most recent
    tokenizer.count_text(texts[3], "gpt-4o")  # over the bound: texts[1] goes
    assert spied.calls == 4
    assert tokenizer.counts.chars == 3 * size
    tokenizer.count_text(texts[0], "gpt-4o")
    tokenizer.count_text(texts[2], "gpt-4o")
    assert spied.calls == 4
    tokenizer.count_text(texts[1], "gpt-4o")
    assert spied.calls == 5
    # A text longer than the whole bound is counted and not kept.
    huge = _long(7, words=4 * 200)
    assert len(huge) > tokenizer.CACHE_MAX_CHARS
    tokenizer.count_text(huge, "gpt-4o")
    tokenizer.count_text(huge, "gpt-4o")
    assert spied.calls == 7
    assert tokenizer.counts.chars <= 3 * size


def test_a_list_of_texts_is_counted_as_each_alone(spied: _CountingEncoding) -> None:
    texts = ["hi", "a message of a long session", _long(3), "a message of a long session"]
    expected = sum(len(spied.inner.encode_ordinary(text)) for text in texts)
    assert tokenizer.counts.total("o200k_base", texts) == expected
    assert spied.calls == 3  # the repeated text was remembered within the call
    assert tokenizer.counts.total("o200k_base", texts) == expected
    assert spied.calls == 4  # then only "hi" (too short to remember) is counted again


def test_the_remembered_texts_are_bounded_in_number(
    spied: _CountingEncoding, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokenizer, "CACHE_MAX_TEXTS", 3)
    texts = [f"message number {i} of a long session" for i in range(5)]
    for text in texts:
        tokenizer.count_text(text, "gpt-4o")
    assert len(tokenizer.counts) == 3
    tokenizer.count_text(texts[4], "gpt-4o")  # remembered
    assert spied.calls == 5
    tokenizer.count_text(texts[0], "gpt-4o")  # forgotten, the oldest
    assert spied.calls == 6


def test_remembered_counts_stay_consistent_across_threads(
    spied: _CountingEncoding, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    texts = [_long(i, words=60) for i in range(12)]
    monkeypatch.setattr(tokenizer, "CACHE_MAX_CHARS", 5 * len(texts[0]))
    expected = {t: len(spied.inner.encode_ordinary(t)) for t in texts}
    wrong: list[str] = []

    def work(offset: int) -> None:
        for step in range(300):
            text = texts[(offset + step * 7) % len(texts)]
            if tokenizer.count_text(text, "gpt-4o") != expected[text]:
                wrong.append(text)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong
    kept = list(tokenizer.counts._counts)
    assert tokenizer.counts.chars == sum(len(text) for _, text in kept)
    assert tokenizer.counts.chars <= tokenizer.CACHE_MAX_CHARS


def _count_in_child(text: str, expected: int) -> None:
    import os

    os._exit(0 if tokenizer.count_text(text, "gpt-4o") == expected else 3)


def test_a_child_forked_while_a_thread_held_the_counts_lock_can_count() -> None:
    import multiprocessing
    import threading

    text = _long(5)
    expected = tokenizer.count_text(text, "gpt-4o")
    tokenizer.counts.clear()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with tokenizer.counts._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        child = multiprocessing.get_context("fork").Process(
            target=_count_in_child, args=(text, expected)
        )
        child.start()
        child.join(30)
        alive = child.is_alive()
        if alive:
            child.kill()
        assert not alive, "the child waited forever on the parent's lock"
        assert child.exitcode == 0
    finally:
        release.set()
        holder.join()


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=120), st.integers(min_value=1, max_value=8))
def test_a_remembered_count_equals_a_fresh_one(piece: str, times: int) -> None:
    text = piece * times + piece[: len(piece) // 2]
    fresh = len(tokenizer._encoding("o200k_base").encode_ordinary(text)) if text else 0
    assert tokenizer.count_text(text, "gpt-4o") == fresh
    assert tokenizer.count_text(text, "gpt-4o") == fresh


def test_count_text_encodings_differ_on_the_sample() -> None:
    assert _bpe("cl100k_base", MIXED) != _bpe("o200k_base", MIXED)


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4",
        "gpt-4-0613",
        "gpt-4-turbo",
        "gpt-3.5-turbo",
        "gpt-35-turbo",
        "ft:gpt-3.5-turbo:org::abc",
    ],
)
def test_count_text_uses_cl100k_for_older_models(model: str) -> None:
    assert models.encoding_name(model) == "cl100k_base"
    assert tokenizer.count_text(MIXED, model) == _bpe("cl100k_base", MIXED)


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-5.4-mini",
        "o1",
        "o3-mini",
        "o4-mini",
        "ft:gpt-4o-mini:org::x",
    ],
)
def test_count_text_uses_o200k_for_newer_models(model: str) -> None:
    assert models.encoding_name(model) == "o200k_base"
    assert tokenizer.count_text(MIXED, model) == _bpe("o200k_base", MIXED)


@pytest.mark.parametrize("text", ["Hello world", "héllo wörld ✓", "", "日本語"])
def test_unknown_models_fall_back_to_the_byte_upper_bound(text: str) -> None:
    assert models.encoding_name("mystery-model") is None
    assert tokenizer.count_text(text, "mystery-model") == len(text.encode())


def test_count_messages_adds_three_per_message_and_three_priming() -> None:
    msgs = [Message("system", "You are helpful."), Message("user", "Hello world")]
    expected = 3 + (3 + _bpe("o200k_base", "You are helpful.")) + (3 + 2)
    assert tokenizer.count_messages(msgs, "gpt-4o") == expected
    assert tokenizer.count_messages([], "gpt-4o") == 3
    assert tokenizer.count_messages([Message("user", "")], "gpt-4o") == 6


def test_count_messages_counts_names_and_tool_calls() -> None:
    plain = tokenizer.count_messages([Message("user", "Hello world")], "gpt-4o")
    named = tokenizer.count_messages([Message("user", "Hello world", name="alice")], "gpt-4o")
    assert named == plain + 1 + _bpe("o200k_base", "alice")
    call = ToolCall("c1", "get_weather", '{"city": "Paris"}')
    with_call = tokenizer.count_messages([Message("assistant", "", tool_calls=(call,))], "gpt-4o")
    assert with_call == 3 + 3 + 3 + _bpe("o200k_base", "get_weather") + _bpe(
        "o200k_base", call.arguments
    )


def test_count_messages_unknown_model_uses_the_core_upper_bound() -> None:
    msgs = [Message("user", "héllo"), Message("assistant", "wörld", name="bot")]
    assert tokenizer.count_messages(msgs, "mystery-model") == messages_upper_bound(msgs)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_count_text_never_exceeds_utf8_bytes(text: str) -> None:
    count = tokenizer.count_text(text, "gpt-4o")
    assert count <= len(text.encode())
    assert count <= tokenizer.count_text(text, "mystery-model")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=50), max_size=5))
def test_count_messages_exact_is_below_the_upper_bound(texts: list[str]) -> None:
    msgs = [Message("user", t) for t in texts]
    assert tokenizer.count_messages(msgs, "gpt-4o") <= messages_upper_bound(msgs)


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("model", "limit"),
    [
        ("gpt-5.4-mini", 128_000),
        ("gpt-5", 128_000),
        ("gpt-4.1-nano", 32_768),
        ("gpt-4o", 16_384),
        ("gpt-4o-mini", 16_384),
        ("chatgpt-4o-latest", 16_384),
        ("gpt-4-turbo", 4_096),
        ("gpt-4-32k", 8_192),
        ("gpt-4", 8_192),
        ("gpt-3.5-turbo", 4_096),
        ("o3-mini", 100_000),
        ("o4-mini", 100_000),
        ("ft:gpt-4o-mini:org::x", 16_384),
        ("ft:gpt-4.1-mini-2025-04-14:acme:run:abc", 32_768),
        ("mystery-model", None),
        ("ft:mystery:org::x", None),
    ],
)
def test_output_limit(model: str, limit: int | None) -> None:
    assert models.output_limit(model) == limit


def test_base_model_strips_fine_tune_prefix() -> None:
    assert models.base_model("ft:gpt-4o-mini:org::x") == "gpt-4o-mini"
    assert models.base_model("gpt-4o-mini") == "gpt-4o-mini"


def test_default_model_is_known() -> None:
    assert models.DEFAULT_MODEL == "gpt-5.4-mini"
    assert models.output_limit(models.DEFAULT_MODEL) is not None
    assert models.encoding_name(models.DEFAULT_MODEL) == "o200k_base"


# --------------------------------------------------------------------------- async HTTP client


def test_the_async_http_option_is_checked_and_read_from_settings_and_env() -> None:
    with pytest.raises(ConfigError, match="async_http must be 'aiohttp' or 'httpx'") as info:
        OpenAIProvider(api_key="sk-x", async_http="requests")  # type: ignore[arg-type]
    assert info.value.path == "providers.openai.async_http"
    assert OpenAIProvider(api_key="sk-x").async_http == "aiohttp"
    from_options = ProviderSettings("openai", Secret("sk-x"), options={"async_http": "httpx"})
    assert OpenAIProvider.from_settings(from_options).async_http == "httpx"
    from_env = ProviderSettings("openai", Secret("sk-x"), environ={env.ASYNC_HTTP: " HTTPX "})
    assert OpenAIProvider.from_settings(from_env).async_http == "httpx"


@pytest.mark.parametrize("async_http", ["aiohttp", "httpx"])
async def test_both_async_http_clients_answer_stream_and_map_errors(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI, async_http: str
) -> None:
    p = make_provider(async_http=async_http)
    completion = await p.achat(request("Hello there"))
    assert completion.message.content == "Echo: Hello there"
    chunks = await collect(p, request("Hello there"), "async")
    assert joined_text(chunks) == "Echo: Hello there"
    assert final_usage(chunks).output_tokens > 0
    http = p.aclient._client
    assert ("aiohttp" in type(http).__mro__[1].__module__) == (async_http == "aiohttp")
    server.enqueue(Fault.drop_after(0))
    with pytest.raises(ProviderConnectionError):
        await p.achat(request())
    server.enqueue(Fault.status(429, retry_after=3))
    with pytest.raises(ProviderRateLimited) as info:
        await p.achat(request())
    assert info.value.retry_after == 3
    server.enqueue(Fault.drop_after(2))
    with pytest.raises(ProviderConnectionError):
        await collect(p, request("one two three four five six"), "async")


# --- the async fast path (llmproxy_openai.direct) ---------------------------------------------

# Set by the HTTP client under each path, not by the SDK client's settings.
_TRANSPORT_HEADERS = {"accept-encoding", "connection", "content-length", "host"}


async def test_the_fast_path_sends_the_headers_the_sdk_sends(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI, api_key: str
) -> None:
    settings: dict[str, Any] = {
        "organization": "org-fast",
        "project": "proj-fast",
        "default_headers": {"X-Team": "search", "User-Agent": "ours/1.0"},
    }
    seen: dict[str, list[dict[str, str]]] = {}
    for async_http in ("aiohttp", "httpx"):
        p = make_provider(async_http=async_http, **settings)
        await p.achat(request())
        await collect(p, request(), "async")
        assert p._aclients is not None
        assert (p._aclients.direct is not None) == (async_http == "aiohttp")  # two paths
        seen[async_http] = [
            {k: v for k, v in r.headers.items() if k not in _TRANSPORT_HEADERS}
            for r in server.requests[-2:]
        ]
    assert seen["aiohttp"] == seen["httpx"]
    sent = seen["aiohttp"][0]
    assert sent["authorization"] == f"Bearer {api_key}"
    assert sent["openai-organization"] == "org-fast"
    assert sent["openai-project"] == "proj-fast"
    assert sent["x-team"] == "search"
    assert sent["user-agent"] == "ours/1.0"
    assert sent["x-stainless-read-timeout"] == "10.0"


def _count_sdk_posts(p: OpenAIProvider, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each request that goes through the SDK's ``post`` instead of the fast path."""
    sdk = p.aclient
    calls: list[str] = []
    post = sdk.post

    async def counted(path: str, **kwargs: Any) -> Any:
        calls.append(path)
        return await post(path, **kwargs)

    monkeypatch.setattr(sdk, "post", counted)
    return calls


async def test_the_fast_path_applies_request_options_as_the_sdk_does(
    provider: OpenAIProvider, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdk_posts = _count_sdk_posts(provider, monkeypatch)
    req = request(
        extra={
            "extra_headers": {"x-stainless-lang": openai.omit, "X-Trace": "t-1"},
            "extra_query": {"api-version": "2026-01", "debug": True},
            "extra_body": {"custom_field": [1, "two"], "temperature": openai.omit},
            "temperature": 0.5,
            "timeout": 7,
        }
    )
    await provider.achat(req)
    await collect(provider, req, "async")
    caller_set = request(
        extra={"extra_headers": {"X-Stainless-Read-Timeout": "99"}, "timeout": 3.0}
    )
    await provider.achat(caller_set)
    assert server.last_request.headers["x-stainless-read-timeout"] == "99"  # theirs, as in the SDK
    assert sdk_posts == []
    for sent in server.requests[-3:-1]:
        assert "x-stainless-lang" not in sent.headers
        assert sent.headers["x-trace"] == "t-1"
        assert sent.headers["x-stainless-read-timeout"] == "7"  # as the SDK writes it
        assert sent.query == {"api-version": "2026-01", "debug": "true"}
        body = sent.json()
        assert body["custom_field"] == [1, "two"]
        assert "temperature" not in body  # extra_body's omit removes a field, as in the SDK


async def test_what_the_fast_path_cannot_encode_goes_through_the_sdk(
    provider: OpenAIProvider, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime

    sdk_posts = _count_sdk_posts(provider, monkeypatch)
    when = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)
    await provider.achat(request(extra={"extra_body": {"since": when}}))
    assert sdk_posts == ["/chat/completions"]
    assert server.last_request.json()["since"].startswith("2026-11-26T12:00:00")
    chunks = await collect(provider, request(extra={"extra_query": {"tags": ["a", "b"]}}), "async")
    assert joined_text(chunks) == "Echo: Hello there"
    assert len(sdk_posts) == 2
    await provider.achat(request())
    assert len(sdk_posts) == 2  # and plain calls stay on the fast path


@pytest.mark.parametrize("headers", [{"X-Count": 3}, ["X-Trace"]])
async def test_extra_headers_must_be_strings(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str, headers: Any
) -> None:
    before = len(server.requests)
    with pytest.raises(ProviderBadRequest, match="extra_headers must map header names to str"):
        await complete(provider, request(extra={"extra_headers": headers}), mode)
    assert len(server.requests) == before


async def test_a_per_call_timeout_bounds_the_fast_path(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI
) -> None:
    p = make_provider(timeout=30.0)
    server.enqueue(Fault.delay(3))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await p.achat(request(extra={"timeout": 0.2}))
    assert time.monotonic() - started < 2.5


async def test_fast_path_errors_carry_the_status_message_and_retry_after(
    provider: OpenAIProvider, server: FakeOpenAI, api_key: str
) -> None:
    for mode in ("sync", "async"):
        server.enqueue(Fault.status(429, message="slow down", retry_after=4))
        with pytest.raises(ProviderRateLimited) as info:
            await collect(provider, request(), mode)
        assert info.value.status == 429
        assert info.value.retry_after == 4
        assert "slow down" in str(info.value)
        server.enqueue(Fault.status(401, message=f"bad key {api_key}"))
        with pytest.raises(ProviderAuthError) as auth:
            await complete(provider, request(), mode)
        assert api_key not in str(auth.value)


def test_the_fast_path_takes_its_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmproxy_openai.direct import env_proxy

    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert env_proxy("https://api.openai.com/v1/") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("ALL_PROXY", "http://all.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert env_proxy("https://api.openai.com/v1/") == "http://proxy.internal:3128"
    assert env_proxy("http://api.example.com/v1/") == "http://all.internal:3128"
    assert env_proxy("http://127.0.0.1:8000/v1/") is None


def test_error_messages_come_from_the_body() -> None:
    from llmproxy_openai.direct import error_message

    assert error_message(400, b'{"error": {"message": "bad field"}}') == "bad field"
    assert error_message(502, b"<html>Bad gateway</html>\n") == (
        "Error code: 502 - <html>Bad gateway</html>"
    )
    assert error_message(503, b"") == "Error code: 503"
    assert error_message(500, b'{"error": "text"}') == 'Error code: 500 - {"error": "text"}'


def test_each_event_loop_closes_its_client_when_it_ends(
    server: FakeOpenAI, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``asyncio.run`` per call: each loop's client is closed with it, nothing left unclosed."""
    p = OpenAIProvider(api_key=api_key, base_url=server.base_url, timeout=10.0)
    clients = []
    sessions: list[Any] = []

    async def one() -> str:
        completion = await p.achat(request("Hello there"))
        clients.append(p.aclient)
        assert p._aclients is not None and p._aclients.direct is not None
        sessions.append(p._aclients.direct.session)
        return completion.message.content

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for _ in range(3):
            assert asyncio.run(one()) == "Echo: Hello there"
        gc.collect()
    assert len({id(c) for c in clients}) == 3
    assert all(c._client.is_closed for c in clients)
    assert len({id(s) for s in sessions}) == 3
    assert all(s.closed for s in sessions)
    assert "Unclosed" not in caplog.text
    p.close()


# --- SSE line splitting -------------------------------------------------------------------------


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    out, start = [], 0
    for point in [*points, len(data)]:
        if point > start:
            out.append(data[start:point])
            start = point
    return out


def test_sse_lines_split_on_every_line_end_and_across_chunks() -> None:
    body = "data: a\r\n\r\ndata: é€😀\rdata: b\n\ndata: tail".encode()
    for cuts in ([], [8], [7, 8], [13, 14, 15], list(range(len(body)))):
        lines = [line for line in sse_lines(iter(_chunked(body, cuts))) if line]
        assert lines == ["data: a", "data: é€😀", "data: b", "data: tail"]


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)),
    ends=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1),
    cuts=st.lists(st.integers(0, 400)),
)
def test_sse_lines_give_back_any_lines_however_the_body_is_cut(
    lines: list[str], ends: list[str], cuts: list[int]
) -> None:
    body = "".join(line + ends[i % len(ends)] for i, line in enumerate(lines)).encode()
    chunks = _chunked(body, cuts)
    got = [line for line in sse_lines(iter(chunks)) if line]
    assert got == [line for line in lines if line]

    async def collect() -> list[str]:
        async def source() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return [line async for line in asse_lines(source()) if line]

    assert asyncio.run(collect()) == got


# --- start-up ---------------------------------------------------------------------------------


def test_warm_without_a_loop_loads_what_every_call_needs_and_opens_nothing(
    provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    from llmproxy_openai.provider import chat_fields, responses_fields

    chat_fields.cache_clear()
    responses_fields.cache_clear()
    provider.warm(MODEL)
    assert chat_fields.cache_info().currsize == 1
    assert responses_fields.cache_info().currsize == 1
    assert provider._aclients is None
    assert server.requests == []


async def test_warm_on_a_loop_makes_the_clients_the_first_call_uses(
    provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    provider.warm(MODEL)
    clients = provider._aclients
    assert clients is not None and clients.direct is not None
    session = clients.direct
    assert server.requests == []
    await provider.achat(request())
    assert provider._aclients is clients and clients.direct is session


# --- HTTPS ----------------------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Any) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key, made by openssl."""
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_both_async_paths_verify_an_https_upstream_against_ssl_cert_file(
    tls_files: tuple[str, str], api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with FakeOpenAI(api_key=api_key, tls=context) as server:
        assert server.base_url.startswith("https://")
        for trusted in (False, True):
            if trusted:
                monkeypatch.setenv("SSL_CERT_FILE", cert)
            else:
                monkeypatch.delenv("SSL_CERT_FILE", raising=False)
            for async_http in ("aiohttp", "httpx"):
                p = OpenAIProvider(
                    api_key=api_key, base_url=server.base_url, timeout=10.0, async_http=async_http
                )
                try:
                    if not trusted:  # an unknown certificate is refused, on either path
                        with pytest.raises(ProviderConnectionError):
                            await p.achat(request())
                        continue
                    assert (await p.achat(request())).message.content == "Echo: Hello there"
                    chunks = await collect(p, request(), "async")
                    assert joined_text(chunks) == "Echo: Hello there"
                finally:
                    await p.aclose()
