"""OpenAIProvider on the Responses API: the real openai SDK against FakeOpenAI's /v1/responses.

Which API answers, the request body (input items, instructions, tools, tool_choice, include,
output cap), the answer (tool calls, citations, hosted outputs, reasoning, usage, finish
reasons), streams, and errors, sync and async.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from llmproxy import Proxy
from llmproxy.errors import (
    ConfigError,
    InvalidRequest,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderRateLimited,
    ProviderResponseError,
    ProviderUnavailable,
)
from llmproxy.registry import ProviderSettings
from llmproxy.secret import Secret
from llmproxy.tools import HostedTool, Tool, tool
from llmproxy.types import (
    ChatRequest,
    Chunk,
    Citation,
    Completion,
    HostedOutput,
    Message,
    ToolCall,
    Usage,
)
from llmproxy_openai.provider import OpenAIProvider
from llmproxy_testing.fake_openai import FakeOpenAI, Fault, RecordedRequest, Reply, ResponseWriter

MODEL = "gpt-5.4-mini"
FILE_SEARCH = HostedTool("file_search", {"vector_store_ids": ["vs_docs"]})
CODE = HostedTool("code_interpreter", {"container": {"type": "auto"}})


@tool
def get_weather(location: str) -> str:
    """Get today's weather.

    Args:
        location: The place to get the weather for.
    """
    return f"Sunny in {location}"


def request(
    text: str = "Hello there",
    *,
    messages: tuple[Message, ...] | None = None,
    **kwargs: Any,
) -> ChatRequest:
    return ChatRequest(messages or (Message("user", text),), MODEL, "openai", **kwargs)


def bodies(server: FakeOpenAI, path: str = "/v1/responses") -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if r.path == path]


async def complete(provider: OpenAIProvider, req: ChatRequest, mode: str) -> Completion:
    if mode == "sync":
        return provider.chat(req)
    return await provider.achat(req)


async def collect(
    provider: OpenAIProvider, req: ChatRequest, mode: str, into: list[Chunk] | None = None
) -> list[Chunk]:
    chunks: list[Chunk] = [] if into is None else into
    if mode == "sync":
        chunks.extend(provider.stream(req))
    else:
        async for chunk in provider.astream(req):
            chunks.append(chunk)
    return chunks


@pytest.fixture
def responses_provider(make_provider: Callable[..., OpenAIProvider]) -> OpenAIProvider:
    """A provider that sends every call to the Responses API."""
    return make_provider(api="responses")


@pytest.fixture
def sse_responses(server: FakeOpenAI) -> Callable[[Sequence[dict[str, Any] | bytes]], None]:
    """Replace /v1/responses with a stream of exactly the given events (dicts or raw bytes)."""

    def install(events: Sequence[dict[str, Any] | bytes]) -> None:
        async def handler(_request: RecordedRequest, response: ResponseWriter) -> None:
            response.start_stream(200, {"content-type": "text/event-stream"})
            for event in events:
                if isinstance(event, bytes):
                    response.write(event)
                else:
                    data = json.dumps(event).encode()
                    response.write(
                        b"event: " + event["type"].encode() + b"\ndata: " + data + b"\n\n"
                    )
                await response.drain()
            response.end()

        server.add_route("POST", "/v1/responses", handler)

    return install


@pytest.fixture
def json_responses(server: FakeOpenAI) -> Callable[[int, Any], None]:
    """Replace /v1/responses with a fixed JSON answer."""

    def install(status: int, body: Any) -> None:
        async def handler(_request: RecordedRequest, response: ResponseWriter) -> None:
            response.send_json(status, body)

        server.add_route("POST", "/v1/responses", handler)

    return install


# --------------------------------------------------------------------------- which API


async def test_plain_chat_stays_on_chat_completions(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    await complete(provider, request(tools=(get_weather,)), mode)
    assert [r.path for r in server.requests] == ["/v1/chat/completions"]


async def test_a_hosted_tool_sends_the_call_to_the_responses_api(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    completion = await complete(provider, request(tools=(FILE_SEARCH,)), mode)
    assert completion.message.content == "Echo: Hello there"
    assert [r.path for r in server.requests] == ["/v1/responses"]
    await collect(provider, request(tools=(CODE,)), mode)
    assert [r.path for r in server.requests][-1] == "/v1/responses"


async def test_api_responses_sends_every_call_there(
    responses_provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    completion = await complete(responses_provider, request(), mode)
    assert completion.message.content == "Echo: Hello there"
    assert completion.finish_reason == "stop"
    assert [r.path for r in server.requests] == ["/v1/responses"]


async def test_api_chat_refuses_hosted_tools_before_any_call(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI, mode: str
) -> None:
    chat_only = make_provider(api="chat")
    with pytest.raises(ConfigError, match="Responses API") as info:
        await complete(chat_only, request(tools=(get_weather, FILE_SEARCH)), mode)
    assert "file_search" in str(info.value) and "'openai'" in str(info.value)
    with pytest.raises(ConfigError, match="Responses API"):
        await collect(chat_only, request(tools=(FILE_SEARCH,)), mode)
    assert server.requests == []


def test_the_api_option_is_checked_and_read_from_settings() -> None:
    with pytest.raises(ConfigError, match="api must be one of") as info:
        OpenAIProvider(api_key="sk-x", api="assistants")  # type: ignore[arg-type]
    assert info.value.path == "providers.openai.api"
    settings = ProviderSettings("openai", Secret("sk-x"), options={"api": "responses"})
    assert OpenAIProvider.from_settings(settings).api == "responses"
    assert OpenAIProvider.from_settings(ProviderSettings("openai", Secret("sk-x"))).api == "auto"


def test_the_api_option_comes_from_the_proxy_configuration(
    server: FakeOpenAI, api_key: str
) -> None:
    environ = {"OPENAI_API_KEY": api_key, "OPENAI_BASE_URL": server.base_url}
    config = {"providers": {"openai": {"api": "responses"}}}
    with Proxy(config, environ=environ, history="memory://", ledger="memory://") as proxy:
        assert proxy.chat("Hi", model=f"openai/{MODEL}").text == "Echo: Hi"
    assert [r.path for r in server.requests] == ["/v1/responses"]


# --------------------------------------------------------------------------- the request


async def test_request_body_carries_messages_tools_and_limits(
    responses_provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    messages = (
        Message("system", "Be brief."),
        Message("user", "Weather in Hanoi and Oslo?"),
        Message(
            "assistant",
            "Checking.",
            tool_calls=(
                ToolCall("call_1", "get_weather", '{"location": "Hanoi"}'),
                ToolCall("call_2", "get_weather", '{"location": "Oslo"}'),
            ),
        ),
        Message("tool", "Sunny in Hanoi", name="get_weather", tool_call_id="call_1"),
        Message("tool", "Rain in Oslo", name="get_weather", tool_call_id="call_2"),
        Message("system", "Answer in English."),
    )
    req = request(
        messages=messages,
        tools=(get_weather, FILE_SEARCH, CODE),
        tool_choice="get_weather",
        max_output_tokens=64,
        temperature=0.2,
        extra={"include": ["message.output_text.logprobs"], "parallel_tool_calls": False},
    )
    await complete(responses_provider, req, mode)
    [body] = bodies(server)
    assert body["model"] == MODEL
    assert body["instructions"] == "Be brief.\n\nAnswer in English."
    assert body["input"] == [
        {"type": "message", "role": "user", "content": "Weather in Hanoi and Oslo?"},
        {"type": "message", "role": "assistant", "content": "Checking."},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"location": "Hanoi"}',
        },
        {
            "type": "function_call",
            "call_id": "call_2",
            "name": "get_weather",
            "arguments": '{"location": "Oslo"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny in Hanoi"},
        {"type": "function_call_output", "call_id": "call_2", "output": "Rain in Oslo"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Get today's weather.",
            "parameters": get_weather.parameters,
            "strict": False,
        },
        {"type": "file_search", "vector_store_ids": ["vs_docs"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
    ]
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert body["include"] == [
        "file_search_call.results",
        "code_interpreter_call.outputs",
        "message.output_text.logprobs",
    ]
    assert (body["max_output_tokens"], body["temperature"]) == (64, 0.2)
    assert body["store"] is False and body["parallel_tool_calls"] is False
    assert "stream" not in body


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ("file_search", {"type": "file_search"}),
        (None, None),
    ],
)
def test_tool_choice_mapping(
    responses_provider: OpenAIProvider, server: FakeOpenAI, choice: str | None, wire: Any
) -> None:
    responses_provider.chat(request(tools=(get_weather, FILE_SEARCH), tool_choice=choice))
    [body] = bodies(server)
    assert body.get("tool_choice") == wire


def test_unknown_tool_choice_and_tools_are_invalid_requests(
    responses_provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    with pytest.raises(InvalidRequest, match="tool_choice 'lookup'") as info:
        responses_provider.chat(request(tools=(get_weather,), tool_choice="lookup"))
    assert info.value.field == "tool_choice"
    with pytest.raises(InvalidRequest) as bad:
        responses_provider.chat(request(tools=({"type": "function"},)))
    assert bad.value.field == "tools[0]"
    assert server.requests == []


async def test_file_search_without_vector_stores_is_a_config_error_before_any_call(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    with pytest.raises(ConfigError, match="vector_store_ids") as info:
        await complete(provider, request(tools=(get_weather, HostedTool("file_search"))), mode)
    assert info.value.path == "tools[1].vector_store_ids"
    with pytest.raises(ConfigError) as streamed:
        await collect(provider, request(tools=(HostedTool("code_interpreter"),)), mode)
    assert streamed.value.path == "tools[0].container"
    assert server.requests == []


def test_the_responses_api_refuses_output_caps_below_16(
    responses_provider: OpenAIProvider,
) -> None:
    with pytest.raises(ProviderBadRequest, match="max_output_tokens") as info:
        responses_provider.chat(request(max_output_tokens=8))
    assert info.value.status == 400
    assert responses_provider.chat(request(max_output_tokens=16)).finish_reason == "stop"


# --------------------------------------------------------------------------- answers


async def test_parallel_function_calls_become_tool_calls_and_results_go_back(
    responses_provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(
        Reply(
            tool_calls=[
                {"id": "call_a", "name": "get_weather", "arguments": {"location": "Hanoi"}},
                {"name": "get_weather", "arguments": '{"location": "Oslo"}'},
            ]
        )
    )
    question = Message("user", "Weather in Hanoi and Oslo?")
    first = await complete(
        responses_provider, request(messages=(question,), tools=(get_weather,)), mode
    )
    assert first.finish_reason == "tool_calls"
    assert first.message.content == ""
    a, b = first.message.tool_calls
    assert (a.id, a.name, json.loads(a.arguments)) == (
        "call_a",
        "get_weather",
        {"location": "Hanoi"},
    )
    assert b.id.startswith("call_") and json.loads(b.arguments) == {"location": "Oslo"}
    results = tuple(
        Message("tool", f"Sunny #{i}", name=c.name, tool_call_id=c.id)
        for i, c in enumerate(first.message.tool_calls)
    )
    server.enqueue(
        Reply(
            text="Sunny in both.",
            citations=[{"type": "url_citation", "url": "https://weather.example", "title": "W"}],
        )
    )
    second = await complete(
        responses_provider,
        request(messages=(question, first.message, *results), tools=(get_weather,)),
        mode,
    )
    assert second.message.content == "Sunny in both."
    assert second.finish_reason == "stop"
    assert second.message.citations == (
        Citation("url_citation", text="W", url="https://weather.example", start=0, end=14),
    )
    sent = bodies(server)[-1]["input"]
    assert [i["type"] for i in sent] == [
        "message",
        "function_call",
        "function_call",
        "function_call_output",
        "function_call_output",
    ]


async def test_an_unanswered_call_or_orphan_output_is_refused_upstream(
    responses_provider: OpenAIProvider, mode: str
) -> None:
    call = Message("assistant", tool_calls=(ToolCall("call_x", "get_weather", "{}"),))
    with pytest.raises(ProviderBadRequest, match="No tool output found for function call call_x"):
        await complete(responses_provider, request(messages=(Message("user", "q"), call)), mode)
    orphan = Message("tool", "late", tool_call_id="call_y")
    with pytest.raises(ProviderBadRequest, match="No tool call found"):
        await complete(responses_provider, request(messages=(Message("user", "q"), orphan)), mode)


async def test_hosted_outputs_citations_and_reasoning_are_surfaced(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    results = [{"file_id": "file-1", "filename": "guide.md", "score": 0.9, "text": "Hanoi..."}]
    server.enqueue(
        Reply(
            text="Hanoi is the capital.",
            reasoning="Search the guide first.",
            hosted_outputs=[
                {"type": "file_search_call", "queries": ["capital"], "results": results},
                {
                    "type": "code_interpreter_call",
                    "code": "print(1 + 1)",
                    "outputs": [{"type": "logs", "logs": "2"}],
                },
            ],
            citations=[{"type": "file_citation", "file_id": "file-1", "filename": "guide.md"}],
            usage={"input_tokens_details": {"cached_tokens": 2}},
        )
    )
    req = request(tools=(FILE_SEARCH, CODE), extra={"reasoning": {"summary": "auto"}})
    completion = await complete(provider, req, mode)
    message = completion.message
    assert message.content == "Hanoi is the capital."
    assert message.reasoning == "Search the guide first."
    assert message.citations == (
        Citation("file_citation", file_id="file-1", filename="guide.md", start=21),
    )
    search, code = message.hosted_outputs
    assert isinstance(search, HostedOutput)
    assert (search.type, search.status) == ("file_search_call", "completed")
    assert search.id is not None and search.id.startswith("fs_")
    assert search.data["queries"] == ["capital"] and search.data["results"] == results
    assert code.type == "code_interpreter_call"
    assert code.data["code"] == "print(1 + 1)"
    assert code.data["outputs"] == [{"type": "logs", "logs": "2"}]
    assert completion.usage == Usage(
        input_tokens=completion.usage.input_tokens if completion.usage else 0,
        output_tokens=8,
        cached_input_tokens=2,
        reasoning_tokens=4,
    )
    assert completion.finish_reason == "stop"
    assert completion.id is not None and completion.id.startswith("resp_")


async def test_other_hosted_tools_go_out_and_their_items_come_back(
    responses_provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    # A hosted type with no special handling goes out as given, with nothing to include.
    server.enqueue(Reply(hosted_outputs=[{"type": "web_search_call", "action": {"query": "x"}}]))
    completion = await complete(
        responses_provider, request(tools=(HostedTool("web_search"),)), mode
    )
    [web] = completion.message.hosted_outputs
    assert web.type == "web_search_call" and web.data == {"action": {"query": "x"}}
    assert "include" not in bodies(server)[-1]


async def test_an_answer_cut_at_the_cap_is_length(
    responses_provider: OpenAIProvider, mode: str
) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    completion = await complete(responses_provider, request(words, max_output_tokens=16), mode)
    assert completion.finish_reason == "length"
    assert len(completion.message.content.split()) == 16


async def test_several_message_items_are_joined_with_citation_offsets(
    responses_provider: OpenAIProvider, json_responses: Callable[[int, Any], None], mode: str
) -> None:
    def text(value: str, annotations: list[dict[str, Any]]) -> dict[str, Any]:
        return {"type": "output_text", "text": value, "annotations": annotations}

    json_responses(
        200,
        {
            "id": "resp_1",
            "object": "response",
            "status": "incomplete",
            "incomplete_details": {"reason": "content_filter"},
            "model": "gpt-5.4-mini-2026",
            "output": [
                {"type": "message", "id": "m1", "role": "assistant", "content": [text("One.", [])]},
                {
                    "type": "message",
                    "id": "m2",
                    "role": "assistant",
                    "content": [
                        text(
                            "Two.",
                            [
                                {
                                    "type": "container_file_citation",
                                    "container_id": "cntr_1",
                                    "file_id": "cfile_1",
                                    "filename": "plot.png",
                                    "start_index": 0,
                                    "end_index": 3,
                                }
                            ],
                        ),
                        {"type": "refusal", "refusal": " No more."},
                    ],
                },
            ],
            "usage": None,
        },
    )
    completion = await complete(responses_provider, request(), mode)
    assert completion.message.content == "One.\n\nTwo. No more."
    [citation] = completion.message.citations
    assert (citation.type, citation.file_id, citation.start, citation.end) == (
        "container_file_citation",
        "cfile_1",
        6,
        9,
    )
    assert completion.finish_reason == "content_filter"
    assert completion.usage is None
    assert completion.model == "gpt-5.4-mini-2026"


async def test_a_failed_or_malformed_response_maps_onto_the_core_errors(
    responses_provider: OpenAIProvider,
    json_responses: Callable[[int, Any], None],
    server: FakeOpenAI,
    mode: str,
) -> None:
    failed = {"id": "r", "status": "failed", "output": [], "error": {"code": "server_error"}}
    json_responses(200, failed)
    with pytest.raises(ProviderUnavailable, match="server_error"):
        await complete(responses_provider, request(), mode)
    json_responses(200, {**failed, "error": {"code": "invalid_prompt", "message": "no"}})
    with pytest.raises(ProviderBadRequest, match="invalid_prompt"):
        await complete(responses_provider, request(), mode)
    json_responses(200, {"id": "r", "status": "completed"})
    with pytest.raises(ProviderResponseError, match="not a valid Responses API answer"):
        await complete(responses_provider, request(), mode)


async def test_http_errors_map_as_on_chat_completions(
    responses_provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(Fault.status(429, retry_after=2.5))
    with pytest.raises(ProviderRateLimited) as info:
        await complete(responses_provider, request(), mode)
    assert (info.value.status, info.value.retry_after) == (429, 2.5)
    server.enqueue(Fault.malformed())
    with pytest.raises(ProviderResponseError):
        await complete(responses_provider, request(), mode)
    server.enqueue(Fault.drop_after(0))
    with pytest.raises(ProviderConnectionError):
        await complete(responses_provider, request(), mode)


# --------------------------------------------------------------------------- streams


async def test_stream_delivers_text_reasoning_then_everything_else_last(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    server.enqueue(
        Reply(
            text="Hanoi is the capital.",
            reasoning="Search first.",
            hosted_outputs=[{"type": "file_search_call", "queries": ["capital"]}],
            citations=[{"type": "file_citation", "file_id": "file-1", "filename": "g.md"}],
            tool_calls=[
                {"id": "call_1", "name": "get_weather", "arguments": {"location": "Hanoi"}},
                {"id": "call_2", "name": "get_weather", "arguments": {"location": "Oslo"}},
            ],
        )
    )
    req = request(tools=(get_weather, FILE_SEARCH), extra={"reasoning": {"summary": "auto"}})
    chunks = await collect(provider, req, mode)
    assert "".join(c.text for c in chunks) == "Hanoi is the capital."
    assert len([c for c in chunks if c.text]) == 4
    assert "".join(c.reasoning for c in chunks) == "Search first."
    last = chunks[-1]
    assert all(c.usage is None and c.finish_reason is None for c in chunks[:-1])
    assert last.finish_reason == "tool_calls"
    assert last.usage is not None and last.usage.reasoning_tokens == 2
    assert [c.id for c in last.tool_calls] == ["call_1", "call_2"]
    assert [json.loads(c.arguments)["location"] for c in last.tool_calls] == ["Hanoi", "Oslo"]
    assert last.citations == (
        Citation("file_citation", file_id="file-1", filename="g.md", start=21),
    )
    [search] = last.hosted_outputs
    assert search.type == "file_search_call" and search.data["queries"] == ["capital"]
    assert last.id is not None and all(c.id == last.id for c in chunks)


async def test_stream_cut_at_the_cap_ends_incomplete(
    responses_provider: OpenAIProvider, mode: str
) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    chunks = await collect(responses_provider, request(words, max_output_tokens=16), mode)
    assert len("".join(c.text for c in chunks).split()) == 16
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]


async def test_stream_errors_map_onto_the_core_tree(
    responses_provider: OpenAIProvider,
    sse_responses: Callable[[Sequence[dict[str, Any] | bytes]], None],
    api_key: str,
    mode: str,
) -> None:
    delta = {"type": "response.output_text.delta", "item_id": "m", "delta": "Hi"}
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"type": "error", "code": "server_error", "message": "boom"}, ProviderUnavailable, "boom"),
        (
            {"type": "error", "code": "rate_limit_exceeded", "message": "slow down"},
            ProviderRateLimited,
            "slow down",
        ),
        (
            {"type": "error", "code": "invalid_prompt", "message": f"bad key {api_key}"},
            ProviderBadRequest,
            r"bad key \*\*\*",
        ),
        (
            {
                "type": "response.failed",
                "response": {"error": {"code": "server_error", "message": "lost"}},
            },
            ProviderUnavailable,
            "lost",
        ),
    ]
    for event, expected, message in cases:
        sse_responses([delta, event])
        got: list[Chunk] = []
        with pytest.raises(expected, match=message) as info:
            await collect(responses_provider, request(), mode, into=got)
        assert api_key not in str(info.value)
        assert [c.text for c in got] == ["Hi"]


async def test_stream_that_ends_early_or_breaks_is_a_connection_error(
    responses_provider: OpenAIProvider,
    server: FakeOpenAI,
    sse_responses: Callable[[Sequence[dict[str, Any] | bytes]], None],
    mode: str,
) -> None:
    server.enqueue(Fault.drop_after(2))
    got: list[Chunk] = []
    with pytest.raises(ProviderConnectionError):
        await collect(responses_provider, request("one two three four"), mode, into=got)
    assert "".join(c.text for c in got) == "Echo: one"
    server.enqueue(Fault.malformed())
    with pytest.raises(ProviderResponseError, match="not JSON"):
        await collect(responses_provider, request(), mode)
    sse_responses([{"type": "response.output_text.delta", "item_id": "m", "delta": "Hi"}])
    with pytest.raises(ProviderConnectionError, match="before the response was complete"):
        await collect(responses_provider, request(), mode)


async def test_streamed_message_items_are_separated_like_the_whole_answer(
    responses_provider: OpenAIProvider,
    sse_responses: Callable[[Sequence[dict[str, Any] | bytes]], None],
    mode: str,
) -> None:
    final = {
        "id": "resp_9",
        "status": "completed",
        "model": MODEL,
        "output": [
            {"type": "message", "content": [{"type": "output_text", "text": "One."}]},
            {"type": "message", "content": [{"type": "output_text", "text": "Two."}]},
        ],
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }
    sse_responses(
        [
            {"type": "response.created", "response": {"id": "resp_9", "model": MODEL}},
            {"type": "response.output_text.delta", "item_id": "m1", "delta": "One."},
            {"type": "response.output_text.delta", "item_id": "m2", "delta": "Two."},
            {"type": "response.completed", "response": final},
        ]
    )
    chunks = await collect(responses_provider, request(), mode)
    assert "".join(c.text for c in chunks) == "One.\n\nTwo."
    assert chunks[-1].usage == Usage(3, 2)
    assert chunks[-1].finish_reason == "stop"


# --------------------------------------------------------------------------- through a Proxy


def test_proxy_loop_over_the_responses_api_with_hosted_and_function_tools(
    server: FakeOpenAI, api_key: str
) -> None:
    environ = {"OPENAI_API_KEY": api_key, "OPENAI_BASE_URL": server.base_url}
    server.enqueue(
        Reply(
            hosted_outputs=[{"type": "file_search_call", "queries": ["weather policy"]}],
            tool_calls=[{"id": "call_w", "name": "get_weather", "arguments": {"location": "Hue"}}],
        ),
        Reply(
            text="Sunny in Hue, per the guide.",
            citations=[{"type": "file_citation", "file_id": "file-9", "filename": "guide.md"}],
        ),
    )
    with Proxy({}, environ=environ, history="memory://", ledger="memory://") as proxy:
        r = proxy.chat("Weather in Hue?", model=f"openai/{MODEL}", tools=[FILE_SEARCH, get_weather])
    assert r.text == "Sunny in Hue, per the guide."
    assert [c.file_id for c in r.message.citations] == ["file-9"]
    first, second = bodies(server)
    assert [t["type"] for t in first["tools"]] == ["function", "file_search"]
    assert second["input"][-2:] == [
        {
            "type": "function_call",
            "call_id": "call_w",
            "name": "get_weather",
            "arguments": '{"location": "Hue"}',
        },
        {"type": "function_call_output", "call_id": "call_w", "output": "Sunny in Hue"},
    ]


def test_function_tools_accept_a_tool_without_a_description() -> None:
    bare = Tool("ping")
    assert OpenAIProvider(api_key="sk-x", api="responses").responses_params(request(tools=(bare,)))[
        "tools"
    ] == [bare.wire()]


def test_proxy_stream_gathers_citations_and_hosted_outputs(
    server: FakeOpenAI, api_key: str
) -> None:
    environ = {"OPENAI_API_KEY": api_key, "OPENAI_BASE_URL": server.base_url}
    server.enqueue(
        Reply(
            text="From the guide.",
            hosted_outputs=[{"type": "file_search_call", "queries": ["guide"]}],
            citations=[{"type": "file_citation", "file_id": "file-9", "filename": "guide.md"}],
        )
    )
    with Proxy({}, environ=environ, history="memory://", ledger="memory://") as proxy:
        events = list(proxy.stream("Guide?", model=f"openai/{MODEL}", tools=[FILE_SEARCH]))
    response = events[-1].response
    assert response is not None and response.text == "From the guide."
    assert [c.file_id for c in response.message.citations] == ["file-9"]
    assert [h.type for h in response.message.hosted_outputs] == ["file_search_call"]


def test_responses_usage_reads_cache_writes() -> None:
    """``input_tokens_details.cache_write_tokens`` (llmproxy's gateway's) are cache writes."""
    from llmproxy_openai.responses import usage_from_wire

    wire = {
        "input_tokens": 50,
        "input_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 30},
        "output_tokens": 3,
    }
    assert usage_from_wire(wire) == Usage(50, 3, 10, 0, cache_write_tokens=30)
    assert usage_from_wire({"input_tokens": 5, "input_tokens_details": None}) == Usage(5, 0)
