"""Gemini's function calling: declarations on the wire, the Proxy's loop, no hosted tools.

FakeGemini refuses function-call history without a thought signature it issued, and a turn of
function calls not answered by as many function responses, as the real API does; a loop that
passes sent both right.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llmproxy import Proxy
from llmproxy.errors import ConfigError, InvalidRequest, ProviderBadRequest
from llmproxy.tools import HostedTool, Tool, tool
from llmproxy.types import ChatRequest, Message, ToolCall
from llmproxy_gemini import GeminiLLMConfig, GeminiService
from llmproxy_gemini.provider import GeminiProvider
from llmproxy_testing.fake_gemini import FakeGemini, Reply

from .conftest import API_KEY

MODEL = "gemini-3.8-flash"
NAME = f"gemini/{MODEL}"


@tool
def get_weather(location: str) -> str:
    """Get today's weather.

    Args:
        location: The place to get the weather for.
    """
    return f"Sunny in {location}"


@tool
async def get_time(location: str) -> str:
    """Get the local time.

    Args:
        location: The place.
    """
    return f"Noon in {location}"


def generate_bodies(server: FakeGemini) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if "Content" in r.path]


def ask(tools: tuple[Any, ...], choice: str | None = None) -> ChatRequest:
    return ChatRequest((Message("user", "q"),), MODEL, "gemini", tools=tools, tool_choice=choice)


@pytest.fixture
async def make_service(server: FakeGemini) -> AsyncIterator[Callable[..., GeminiService]]:
    made: list[GeminiService] = []
    environ = {"LLMPROXY_HISTORY_URL": "memory://", "LLMPROXY_LEDGER_URL": "memory://"}

    def make(**kwargs: Any) -> GeminiService:
        config = GeminiLLMConfig(api_key=API_KEY, base_url=server.base_url, **kwargs)
        service = GeminiService(config, environ=environ)
        made.append(service)
        return service

    yield make
    for service in made:
        await service.aclose()


def test_function_tools_become_declarations(provider: GeminiProvider, server: FakeGemini) -> None:
    bare = Tool("ping")
    provider.chat(ask((get_weather, bare)))
    [body] = generate_bodies(server)
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Get today's weather.",
                    "parameters_json_schema": dict(get_weather.parameters),
                },
                {"name": "ping", "parameters_json_schema": dict(bare.parameters)},
            ]
        }
    ]
    assert "toolConfig" not in body


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ("get_time", {"mode": "ANY", "allowedFunctionNames": ["get_time"]}),
    ],
)
def test_tool_choice_becomes_a_function_calling_mode(
    provider: GeminiProvider, server: FakeGemini, choice: str, config: dict[str, Any]
) -> None:
    provider.chat(ask((get_weather, get_time), choice))
    [body] = generate_bodies(server)
    assert body["toolConfig"] == {"functionCallingConfig": config}


def test_a_tool_choice_naming_no_offered_tool_is_invalid(
    provider: GeminiProvider, server: FakeGemini
) -> None:
    with pytest.raises(InvalidRequest) as info:
        provider.chat(ask((get_weather,), "get_time"))
    assert info.value.field == "tool_choice"
    assert server.requests == []


@pytest.mark.parametrize("mode", ["chat", "achat", "stream", "astream"])
async def test_the_loop_answers_parallel_calls_in_one_turn(
    make_proxy: Callable[..., Proxy], server: FakeGemini, mode: str
) -> None:
    server.enqueue(
        Reply(
            reasoning="Both at once.",
            tool_calls=[
                {"name": "get_weather", "arguments": {"location": "Hanoi"}},
                {"name": "get_time", "arguments": {"location": "Hanoi"}},
            ],
        ),
        Reply(text="Sunny, and it is noon."),
    )
    proxy = make_proxy()
    kwargs: dict[str, Any] = {"model": NAME, "tools": [get_weather, get_time]}
    if mode == "chat":
        text = proxy.chat("Hanoi?", **kwargs).text
    elif mode == "achat":
        text = (await proxy.achat("Hanoi?", **kwargs)).text
    elif mode == "stream":
        with proxy.stream("Hanoi?", **kwargs) as stream:
            text = "".join(ev.text for ev in stream)
    else:
        text = "".join([ev.text async for ev in proxy.astream("Hanoi?", **kwargs)])
    assert text == "Sunny, and it is noon."
    first, second = generate_bodies(server)
    names = [d["name"] for d in first["tools"][0]["functionDeclarations"]]
    assert names == ["get_weather", "get_time"]
    model_turn, answers = second["contents"][-2:]
    assert model_turn["role"] == "model"
    assert model_turn["parts"][0]["thoughtSignature"] in server.issued_signatures
    assert answers["role"] == "user"
    assert [p["functionResponse"] for p in answers["parts"]] == [
        {"name": "get_weather", "response": {"output": "Sunny in Hanoi"}},
        {"name": "get_time", "response": {"output": "Noon in Hanoi"}},
    ]


def test_an_unanswered_call_is_refused_upstream(
    provider: GeminiProvider, server: FakeGemini
) -> None:
    calls = (ToolCall("c1", "get_weather", "{}"), ToolCall("c2", "get_time", "{}"))
    messages = (
        Message("user", "q"),
        Message("assistant", tool_calls=calls),
        Message("tool", "Sunny", tool_call_id="c1"),
    )
    with pytest.raises(ProviderBadRequest, match="number of function response parts"):
        provider.chat(ChatRequest(messages, MODEL, "gemini"))


async def test_the_service_offers_its_tools(
    make_service: Callable[..., GeminiService], server: FakeGemini
) -> None:
    service = make_service(tools=[get_weather], tool_choice="get_weather")
    server.enqueue(
        Reply(tool_calls=[{"name": "get_weather", "arguments": {"location": "Hue"}}]),
        Reply(text="Sunny in Hue."),
    )
    assert str(await service.chat("Hue?")) == "Sunny in Hue."
    first, _second = generate_bodies(server)
    assert first["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }


async def test_hosted_tools_are_a_config_error_naming_gemini(
    provider: GeminiProvider, server: FakeGemini
) -> None:
    code = HostedTool("code_interpreter", {"container": {"type": "auto"}})
    with pytest.raises(ConfigError, match="provider 'gemini' cannot run hosted tools"):
        provider.chat(ask((get_weather, code)))
    with pytest.raises(ConfigError, match="'gemini'"):
        [c async for c in provider.astream(ask((code,)))]
    assert server.requests == []
    with pytest.raises(ConfigError, match="'gemini'") as info:
        GeminiLLMConfig(tools=[code])  # type: ignore[list-item]
    assert info.value.path == "tools[0]"
    with pytest.raises(ConfigError, match="got int"):
        GeminiLLMConfig(tools=[1])  # type: ignore[list-item]
