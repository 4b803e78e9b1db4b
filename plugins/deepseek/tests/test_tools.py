"""DeepSeek's function calling: tools on the wire, the Proxy's loop with thinking mode, no hosted.

DeepSeek requires the ``reasoning_content`` of an assistant turn with tool calls on every later
request; FakeDeepSeek refuses the request otherwise, so a loop that passes means the reasoning
went back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llmproxy import Proxy
from llmproxy.errors import ConfigError
from llmproxy.tools import HostedTool, tool
from llmproxy.types import ChatRequest, Message
from llmproxy_deepseek import DeepSeekLLMConfig, DeepSeekService
from llmproxy_deepseek.provider import DeepSeekProvider
from llmproxy_testing.fake_deepseek import FakeDeepSeek, Reply

from .conftest import API_KEY, MODEL

NAME = f"deepseek/{MODEL}"


@tool
def get_weather(location: str) -> str:
    """Get today's weather.

    Args:
        location: The place to get the weather for.
    """
    return f"Sunny in {location}"


def call(location: str, call_id: str) -> dict[str, Any]:
    return {"id": call_id, "name": "get_weather", "arguments": {"location": location}}


def bodies(server: FakeDeepSeek) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if r.path.endswith("/chat/completions")]


@pytest.fixture
async def make_service(server: FakeDeepSeek) -> AsyncIterator[Callable[..., DeepSeekService]]:
    made: list[DeepSeekService] = []
    environ = {"LLMPROXY_HISTORY_URL": "memory://", "LLMPROXY_LEDGER_URL": "memory://"}

    def make(**kwargs: Any) -> DeepSeekService:
        config = DeepSeekLLMConfig(api_key=API_KEY, base_url=server.base_url, **kwargs)
        service = DeepSeekService(config, environ=environ)
        made.append(service)
        return service

    yield make
    for service in made:
        await service.aclose()


def test_function_tools_go_out_in_chat_completions_form(
    provider: DeepSeekProvider, server: FakeDeepSeek
) -> None:
    req = ChatRequest(
        (Message("user", "Weather?"),),
        MODEL,
        "deepseek",
        tools=(get_weather,),
        tool_choice="get_weather",
    )
    provider.chat(req)
    [body] = bodies(server)
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get today's weather.",
                "parameters": dict(get_weather.parameters),
                "strict": False,
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize("streamed", [False, True])
async def test_the_loop_runs_parallel_calls_and_passes_reasoning_back(
    make_proxy: Callable[..., Proxy], server: FakeDeepSeek, streamed: bool
) -> None:
    server.enqueue(
        Reply(
            reasoning="Two cities, two calls.",
            tool_calls=[call("Hanoi", "call_1"), call("Oslo", "call_2")],
        ),
        Reply(text="Sunny in both."),
    )
    proxy = make_proxy()
    if streamed:
        events = [
            ev async for ev in proxy.astream("Hanoi and Oslo?", model=NAME, tools=[get_weather])
        ]
        text = "".join(ev.text for ev in events)
    else:
        text = (await proxy.achat("Hanoi and Oslo?", model=NAME, tools=[get_weather])).text
    assert text == "Sunny in both."
    first, second = bodies(server)
    assert first["tools"][0]["function"]["name"] == "get_weather"
    asked, one, two = second["messages"][-3:]
    assert asked["reasoning_content"] == "Two cities, two calls."
    assert [c["id"] for c in asked["tool_calls"]] == ["call_1", "call_2"]
    assert (one["tool_call_id"], one["content"]) == ("call_1", "Sunny in Hanoi")
    assert (two["tool_call_id"], two["content"]) == ("call_2", "Sunny in Oslo")


async def test_the_service_offers_its_tools(
    make_service: Callable[..., DeepSeekService], server: FakeDeepSeek
) -> None:
    service = make_service(tools=[get_weather], tool_choice="required", max_tool_rounds=1)
    server.enqueue(Reply(tool_calls=[call("Hue", "call_h")]), Reply(text="Sunny in Hue."))
    assert str(await service.chat("Hue?")) == "Sunny in Hue."
    first, second = bodies(server)
    assert first["tool_choice"] == "required"
    assert json.loads(second["messages"][-2]["tool_calls"][0]["function"]["arguments"]) == {
        "location": "Hue"
    }


async def test_hosted_tools_are_a_config_error_naming_deepseek(
    provider: DeepSeekProvider, server: FakeDeepSeek
) -> None:
    search = HostedTool("file_search", {"vector_store_ids": ["vs_1"]})
    req = ChatRequest((Message("user", "q"),), MODEL, "deepseek", tools=(search,))
    with pytest.raises(ConfigError, match="provider 'deepseek' cannot run hosted tools"):
        provider.chat(req)
    with pytest.raises(ConfigError, match="'deepseek'"):
        [c async for c in provider.astream(req)]
    assert server.requests == []
    with pytest.raises(ConfigError, match="'deepseek'") as info:
        DeepSeekLLMConfig(tools=[get_weather, search])  # type: ignore[list-item]
    assert info.value.path == "tools[1]"
