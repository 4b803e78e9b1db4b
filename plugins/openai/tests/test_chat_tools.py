"""Function tools on Chat Completions: the real openai SDK against FakeOpenAI, sync and async.

What goes out (``tools`` in Chat Completions' form, ``tool_choice``), what comes back (parallel
tool calls, whole, from JSON and from streamed argument pieces) and the round trip of results.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from llmproxy.errors import ConfigError, InvalidRequest, ProviderBadRequest
from llmproxy.tools import HostedTool, Tool, tool
from llmproxy.types import ChatRequest, Chunk, Completion, Message, ToolCall
from llmproxy_openai.provider import OpenAIProvider, function_tool_to_wire
from llmproxy_testing.fake_openai import FakeOpenAI, Reply

MODEL = "gpt-5.4-mini"


@tool
def get_weather(location: str, unit: str = "celsius") -> str:
    """Get today's weather.

    Args:
        location: The place to get the weather for.
        unit: celsius or fahrenheit.
    """
    return f"Sunny in {location}"


LOOKUP = Tool(
    "lookup",
    "Look a word up.",
    {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    strict=True,
)


def request(text: str = "Hello", **kwargs: Any) -> ChatRequest:
    messages = kwargs.pop("messages", (Message("user", text),))
    return ChatRequest(messages, MODEL, "openai", **kwargs)


def chat_bodies(server: FakeOpenAI) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if r.path == "/v1/chat/completions"]


async def complete(provider: OpenAIProvider, req: ChatRequest, mode: str) -> Completion:
    return provider.chat(req) if mode == "sync" else await provider.achat(req)


async def collect(provider: OpenAIProvider, req: ChatRequest, mode: str) -> list[Chunk]:
    if mode == "sync":
        return list(provider.stream(req))
    return [c async for c in provider.astream(req)]


def test_function_tool_wire_form() -> None:
    assert function_tool_to_wire(LOOKUP) == {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up.",
            "parameters": dict(LOOKUP.parameters),
            "strict": True,
        },
    }


async def test_tools_and_tool_choice_go_out_in_chat_completions_form(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    await complete(provider, request(tools=(get_weather, LOOKUP), tool_choice="lookup"), mode)
    await collect(provider, request(tools=(get_weather,), tool_choice="required"), mode)
    named, required = chat_bodies(server)
    assert named["tools"] == [function_tool_to_wire(get_weather), function_tool_to_wire(LOOKUP)]
    assert named["tools"][0]["function"]["parameters"] == {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "The place to get the weather for."},
            "unit": {
                "type": "string",
                "description": "celsius or fahrenheit.",
                "default": "celsius",
            },
        },
        "required": ["location"],
        "additionalProperties": False,
    }
    assert named["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert required["tool_choice"] == "required"
    assert required["stream"] is True


def test_no_tools_means_no_tool_fields(provider: OpenAIProvider, server: FakeOpenAI) -> None:
    provider.chat(request(tool_choice="none"))
    [body] = chat_bodies(server)
    assert "tools" not in body and "tool_choice" not in body


def test_a_tool_choice_naming_no_offered_tool_is_invalid(
    provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    with pytest.raises(InvalidRequest, match="offered: get_weather") as info:
        provider.chat(request(tools=(get_weather,), tool_choice="lookup"))
    assert info.value.field == "tool_choice"
    assert server.requests == []


async def test_parallel_calls_come_back_whole(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    calls = [
        {"id": "call_1", "name": "get_weather", "arguments": {"location": "Hanoi", "unit": "f"}},
        {"id": "call_2", "name": "lookup", "arguments": {"q": "a longer query of words"}},
    ]
    server.enqueue(Reply(tool_calls=calls), Reply(tool_calls=calls))
    completion = await complete(provider, request(tools=(get_weather, LOOKUP)), mode)
    chunks = await collect(provider, request(tools=(get_weather, LOOKUP)), mode)
    streamed = [c for chunk in chunks for c in chunk.tool_calls]
    expected = [
        ToolCall("call_1", "get_weather", json.dumps(calls[0]["arguments"])),
        ToolCall("call_2", "lookup", json.dumps(calls[1]["arguments"])),
    ]
    assert list(completion.message.tool_calls) == expected
    assert streamed == expected  # the argument pieces were put back together
    assert completion.finish_reason == "tool_calls"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]


async def test_results_go_back_and_the_fake_checks_the_pairing(
    provider: OpenAIProvider, server: FakeOpenAI, mode: str
) -> None:
    question = Message("user", "Weather in Hanoi and Oslo?")
    asked = Message(
        "assistant",
        tool_calls=(
            ToolCall("call_1", "get_weather", '{"location": "Hanoi"}'),
            ToolCall("call_2", "get_weather", '{"location": "Oslo"}'),
        ),
    )
    one = Message("tool", "Sunny", name="get_weather", tool_call_id="call_1")
    two = Message("tool", "Rain", name="get_weather", tool_call_id="call_2")
    answer = await complete(
        provider, request(messages=(question, asked, one, two), tools=(get_weather,)), mode
    )
    assert answer.message.content == "Echo: Weather in Hanoi and Oslo?"
    sent = chat_bodies(server)[-1]["messages"]
    assert sent[1]["content"] is None
    assert [m.get("tool_call_id") for m in sent[2:]] == ["call_1", "call_2"]
    with pytest.raises(ProviderBadRequest, match="did not have response messages: call_2"):
        await complete(provider, request(messages=(question, asked, one)), mode)
    with pytest.raises(ProviderBadRequest, match="must be a response to a preceeding message"):
        await complete(provider, request(messages=(question, two)), mode)


async def test_hosted_tools_on_chat_completions_are_a_config_error(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI, mode: str
) -> None:
    provider = make_provider(api="chat")
    with pytest.raises(ConfigError, match="hosted tools need the Responses API") as info:
        await complete(provider, request(tools=(HostedTool("code_interpreter"),)), mode)
    assert info.value.path == "tools"
    assert server.requests == []
